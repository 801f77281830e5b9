"""Atomic writes, one way for every room: a file or a folder appears whole under its name, or not at all.

A file is written to a hidden temporary sibling (same folder, so the rename cannot cross file systems), flushed
to disk, given the permissions a plain ``open()`` would have given it, and renamed over the target; a folder is
filled as a hidden sibling and renamed into place. An error or an interrupt at any point leaves the previous
file (or no folder) and no temporary behind. Imports nothing beyond the standard library, so every package may
use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_bytes", "write_text", "write_with", "publish_folder"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_with(path: Path | str, write: Callable[[Path], Any]) -> Path:
    """Let `write(tmp)` write the file (e.g. ``frame.to_parquet``) to a temporary sibling, then rename it over
    `path`. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def publish_folder(final: Path | str, fill: Callable[[Path], Any], replace: bool = False) -> Path:
    """Let `fill(tmp)` fill a hidden sibling folder, then rename it to `final` in one step. An existing `final`
    is refused (OSError from the rename) unless `replace`, which removes it first (an empty one is always
    replaced)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        fill(tmp)
        if final.exists() and (replace or not any(final.iterdir())):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
