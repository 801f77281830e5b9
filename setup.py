"""Builds the compiled engine (accel/: the modules listed there, with Cython) beside the sources, and records what each
build was made from. Without Cython or a C compiler every module installs and runs as its .py file: the same numbers,
more slowly. The project's metadata is in pyproject.toml."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from accel import DIRECTIVES, MODULES, STAMP, builds, built, digest, source  # noqa: E402  (standard library only)


class BuildCompiled(build_ext):
    """build_ext that writes accel/built.json — each built module's source digest — where the builds land."""

    def run(self) -> None:
        if self.inplace:  # an earlier build of a module that fails to build now must not pass for this one's
            for m in MODULES:
                for old in builds(m):
                    old.unlink()
        super().run()
        out = ROOT if self.inplace else Path(self.build_lib)
        done = {m: digest(m) for m in MODULES if built(m, out)}
        (out / "accel").mkdir(parents=True, exist_ok=True)
        (out / "accel" / STAMP).write_text(json.dumps(done, indent=1) + "\n")


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("coinsim: Cython is not installed; the engine runs as pure Python", file=sys.stderr)
        return []
    exts = cythonize([Extension(m, [str(source(m).relative_to(ROOT))]) for m in MODULES],
                     compiler_directives=DIRECTIVES, build_dir="build/cython", quiet=True)
    for ext in exts:
        ext.optional = True  # no C compiler: the module stays Python (cythonize does not carry this flag over)
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildCompiled}, options={"build_ext": {"parallel": 2}})
