"""The compiled engine (accel/): the same numbers as the pure-Python modules, bit for bit, and a build that no
longer matches its sources is never run."""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import accel

ROOT = Path(__file__).resolve().parents[1]

# Each config takes other paths through the engine: per-task draws, JSQ heaps and code groups; shared cores in
# time slices with a dispatcher and network delays (cancels sent and answered); batching; per-server draws on 70
# servers (Python-int answer masks, one-task answers past server 63); the recursion.
CONFIGS = {
    "fleet": {"n_experts": 8, "r": 4, "n_queries": 6000, "traffic": {"rate_per_ms": 16.0}, "draws": "task",
              "stragglers": {"p": 0.05, "slowdown": 10.0},
              "policies": [{"kind": "coded", "dispatch": "hedged", "delay_ms": 2.0}, "replication",
                           {"kind": "hedged", "delay_ms": 1.5}, "backup"],
              "deployment": {"instances": 4, "balancer": "jsq", "groups": [[0, 1, 2, 3], [4, 5, 6, 7]]}},
    "sliced": {"n_experts": 2, "r": 1, "n_queries": 3000, "traffic": {"rate_per_ms": 0.6},
               "stragglers": {"p": 0.1, "slowdown": 4.0},
               "network": {"out": {"kind": "exponential", "mean_ms": 0.2},
                           "back": {"kind": "exponential", "mean_ms": 0.1}},
               "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}, "cores": 2.0, "quantum_ms": 0.5,
                           "dispatcher": {"send_ms": 0.05, "return_ms": 0.03}},
               "policies": [{"kind": "coded", "dispatch": "hedged", "delay_ms": 1.0, "cancel": True},
                            {"kind": "hedged", "delay_ms": 1.0}]},
    "batched": {"n_experts": 3, "r": 1, "n_queries": 3000, "traffic": {"rate_per_ms": 1.5},
                "service": {"max_batch": 3, "batch_cost_per_extra": 0.3},
                "policies": [{"kind": "coded", "dispatch": "redundant", "cancel": True}, "uncoded"]},
    "wide": {"n_experts": 10, "r": 3, "n_queries": 3000, "traffic": {"rate_per_ms": 10.0},
             "stragglers": {"p": 0.05, "slowdown": 5.0},
             "deployment": {"instances": 7, "balancer": "power_of_d"},
             "policies": [{"kind": "coded", "dispatch": "sed"}, "uncoded"]},
    "recursion": {"n_experts": 3, "r": 0, "n_queries": 3000, "traffic": {"rate_per_ms": 1.5}, "policies": ["uncoded"]},
}

RUN = """
import hashlib, json, sys
import accel
from sim.draws import draw
from sim.engine import FastEngine
from sim.parse import parse_config
from sim.plan import make_plan
out = {"status": accel.status()}
for name, table in json.loads(sys.argv[1]).items():
    cfg = parse_config(table)
    d = draw(cfg, 7)
    for k, pol in enumerate(cfg.policies):
        o = FastEngine(make_plan(cfg, pol, d), d).run()
        h = hashlib.sha256()
        for a in (o.finish_ms, o.how, o.n_tasks, o.server_ms, o.busy_ms, o.cancelled_ms):
            h.update(a.tobytes())
        h.update(repr(o.mask.tolist()).encode())
        out[f"{name}/{k}"] = h.hexdigest()
print(json.dumps(out))
"""


def _run(env_extra: dict[str, str], cwd: Path = ROOT) -> tuple[dict[str, str], str]:
    env = {k: v for k, v in os.environ.items() if k != accel.PURE_ENV} | env_extra
    got = subprocess.run([sys.executable, "-c", RUN, json.dumps(CONFIGS)], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=600)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout), got.stderr


def test_the_compiled_engine_computes_what_the_pure_one_does() -> None:
    if accel.status() != "compiled":
        pytest.skip(f"no current build of the compiled engine here: {accel.status()}")
    compiled, _ = _run({})
    pure, _ = _run({accel.PURE_ENV: "1"})
    assert compiled.pop("status") == "compiled" and pure.pop("status") == f"{accel.PURE_ENV}=1"
    assert len(compiled) == 11  # policies run
    assert compiled == pure


def _fake_tree(root: Path) -> None:
    """The listed modules' sources, each with a (fake) build and the stamp of those sources."""
    for m in accel.MODULES:
        py = accel.source(m, root)
        py.parent.mkdir(parents=True, exist_ok=True)
        py.write_text(f"X = {m!r}\n")
        py.with_suffix(".cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (root / "sim" / "engine.pxd").write_text("cdef class FastEngine:\n    pass\n")
    (root / "accel").mkdir(exist_ok=True)
    (root / "accel" / accel.STAMP).write_text(json.dumps({m: accel.digest(m, root) for m in accel.MODULES}))


def test_a_build_is_run_only_while_it_matches_its_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.PURE_ENV, raising=False)
    _fake_tree(tmp_path)
    assert accel.check(tmp_path) == "compiled"
    monkeypatch.setenv(accel.PURE_ENV, "1")
    assert accel.check(tmp_path) == "COINSIM_PURE=1"
    monkeypatch.setenv(accel.PURE_ENV, "0")
    assert accel.check(tmp_path) == "compiled"
    # an edit of a .py, or of a .pxd (which changes the C types the build used), makes the build stale
    (tmp_path / "sim" / "tasks.py").write_text("X = 'edited'\n")
    assert accel.check(tmp_path) == "stale (sim/tasks.py changed since the build)"
    _fake_tree(tmp_path)
    (tmp_path / "sim" / "engine.pxd").write_text("cdef class FastEngine:\n    cdef public double n\n")
    assert accel.check(tmp_path) == "stale (sim/engine.py changed since the build)"
    _fake_tree(tmp_path)
    (tmp_path / "accel" / accel.STAMP).unlink()
    assert accel.check(tmp_path) == f"stale (no {accel.STAMP} from the build)"
    _fake_tree(tmp_path)
    next((tmp_path / "policies").glob("coded.*.so")).unlink()
    assert accel.check(tmp_path) == "partly built (policies.coded not built)"
    for so in tmp_path.rglob("*.so"):
        so.unlink()
    assert accel.check(tmp_path) == "not built"


def test_an_edited_source_runs_as_edited_not_as_built(tmp_path: Path) -> None:
    """A copy of the packages with their builds, one source edited after the build: the edit is what runs (the
    warning names the file), and every listed module comes from its .py (a build left in place would fail to load
    beside a pure module it cimports)."""
    if accel.status() != "compiled":
        pytest.skip(f"no current build of the compiled engine here: {accel.status()}")
    for room in ("accel", "sim", "policies"):
        shutil.copytree(ROOT / room, tmp_path / room, ignore=shutil.ignore_patterns("__pycache__"))
    engine = tmp_path / "sim" / "engine.py"
    engine.write_text(engine.read_text() + "\nEDITED = True\n")
    probe = ("import accel, sim.engine, sim.clock, policies.rules; print(accel.status()); "
             "print(sim.engine.EDITED, sim.engine.__file__, sim.clock.__file__, policies.rules.__file__)")
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert got.returncode == 0, got.stderr
    status, files = got.stdout.splitlines()
    assert status == "stale (sim/engine.py changed since the build)"
    assert files.split() == ["True", str(engine), str(tmp_path / "sim" / "clock.py"),
                             str(tmp_path / "policies" / "rules.py")]
    assert "compiled engine is stale (sim/engine.py changed since the build)" in got.stderr


def test_accel_needs_nothing_but_the_standard_library() -> None:
    """setup.py reads it before anything is installed."""
    tree = ast.parse((ROOT / "accel" / "__init__.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}


def test_without_a_compiler_the_install_keeps_python_and_drops_old_builds(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """setup.py with a C compiler that always fails: the build still succeeds (the extensions are optional), the
    builds of an earlier install beside the sources are gone rather than left to pass for this one, and nothing is
    stamped — so the packages run as Python ('not built')."""
    pytest.importorskip("Cython")
    for room in ("accel", "sim", "policies"):
        shutil.copytree(ROOT / room, tmp_path / room, ignore=shutil.ignore_patterns("__pycache__", "built.json"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    old = (tmp_path / "sim" / "clock.py").with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])
    old.write_bytes(b"an earlier build")
    monkeypatch.delenv(accel.PURE_ENV, raising=False)
    env = dict(os.environ, CC="/bin/false", PYTHONPATH=str(tmp_path))
    got = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    assert not old.exists() and not any(accel.built(m, tmp_path) for m in accel.MODULES)
    assert json.loads((tmp_path / "accel" / accel.STAMP).read_text()) == {}
    assert accel.check(tmp_path) == "not built"
