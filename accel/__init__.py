"""The compiled engine: which modules Cython builds at install (setup.py, when Cython and a C compiler are at hand)
and whether a build found beside the sources still matches them.

A built module sits beside its .py file, and Python's import takes it first. It was built from the .py (and its
.pxd, which gives the hot objects C-typed attributes) of that moment: edit either later and the build runs the old
code. So before any of the listed modules is imported (`sim` and `policies` call `guard()` first), the digests
recorded at build time are checked against the sources; when any differs, a module lacks its build, or
COINSIM_PURE=1 is set, every listed module is loaded from its .py instead (a stale build says so once). The engine
computes the same numbers either way, bit for bit (tests/test_accel.py); only its speed differs
(bench/bench_sim.py). Standard library only: setup.py reads this file before anything else is installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

# the modules built, in the order a cimport needs them (a .pxd beside a .py gives C types to its attributes)
MODULES = (
    "sim.clock", "sim.tasks", "policies.codes", "policies.delays", "policies.rules", "policies.coded",
    "policies.uncoded", "policies.replication", "policies.hedged", "policies.backup", "policies.parity", "sim.engine",
)
ROOT = Path(__file__).resolve().parent.parent  # where the packages sit (the project, or site-packages)
STAMP = "built.json"  # beside this file: {module: digest of its sources} of the build
PURE_ENV = "COINSIM_PURE"  # set to 1: run the pure-Python modules even when a current build is present
DIRECTIVES = {"language_level": 3, "annotation_typing": False}  # type hints stay hints (as in CPython)

_state: dict[str, str] = {}


def source(module: str, root: Path = ROOT) -> Path:
    """The .py file of a listed module."""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def digest(module: str, root: Path = ROOT) -> str:
    """sha256 of a module's .py and (when present) .pxd: what its build was made from."""
    h = hashlib.sha256(source(module, root).read_bytes())
    pxd = source(module, root).with_suffix(".pxd")
    if pxd.exists():
        h.update(b"\0pxd\0" + pxd.read_bytes())
    return h.hexdigest()


def builds(module: str, root: Path = ROOT) -> list[Path]:
    """The compiled builds of the module that sit beside its source."""
    py = source(module, root)
    return [py.with_suffix(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if py.with_suffix(suffix).exists()]


def built(module: str, root: Path = ROOT) -> bool:
    """Whether a compiled build of the module sits beside its source."""
    return bool(builds(module, root))


def check(root: Path = ROOT) -> str:
    """'compiled' when every listed module has a build made from its present sources; else why the pure-Python
    modules run: 'not built', 'COINSIM_PURE=1', or what is stale."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV}=1"
    have = [m for m in MODULES if built(m, root)]
    if not have:
        return "not built"
    if len(have) < len(MODULES):
        return f"partly built ({', '.join(m for m in MODULES if m not in have)} not built)"
    try:
        stamp = json.loads((root / "accel" / STAMP).read_text())
    except (OSError, ValueError):
        return f"stale (no {STAMP} from the build)"
    changed = [str(source(m, root).relative_to(root)) for m in MODULES if stamp.get(m) != digest(m, root)]
    if changed:
        return f"stale ({', '.join(changed)} changed since the build)"
    return "compiled"


class _Sources(importlib.abc.MetaPathFinder):
    """Finds the listed modules' .py files ahead of their builds."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname, self.root))


def guard(root: Path = ROOT) -> str:
    """Decide once per process, before any listed module is imported, whether the builds run; returns `status()`."""
    if "status" not in _state:
        status = _state["status"] = check(root)
        if status != "compiled":
            sys.meta_path.insert(0, _Sources(root))
            if status.startswith(("stale", "partly")):
                warnings.warn(f"coinsim: the compiled engine is {status}: running the pure-Python engine (the same "
                              f"numbers, slower); rebuild with `pip install -e .`", RuntimeWarning, stacklevel=2)
    return _state["status"]


def status() -> str:
    """'compiled', or why the pure-Python engine runs (see `check`)."""
    return guard()


guard()  # on import: `sim` and `policies` import this package before any module it lists
