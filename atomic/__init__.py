"""Atomic writes, one way for every room: a file or a folder appears whole under its name, or not at all.

A file is written to a hidden temporary sibling (same folder, so the rename cannot cross file systems), flushed
to disk, given the permissions a plain ``open()`` would have given it, and renamed over the target; a folder is
filled as a hidden sibling and renamed into place. An error or an interrupt at any point leaves the previous
file (or no folder) and no temporary behind. `blocked_by` / `why_blocked` tell, before any work, whether anything
can be written in a folder at all (by making and removing a file there). Imports nothing beyond the standard
library, so every package may use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_bytes", "write_text", "write_with", "publish_folder", "blocked_by", "why_blocked"]


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



def blocked_by(folder: Path | str) -> tuple[Path, str] | None:
    """What keeps anything from being written in `folder` (made first if missing): its nearest existing ancestor
    (itself included) and why — "file" (it is not a folder) or "permission" (a file cannot be made in it);
    None when nothing does. For checks before any work, so that a run does not measure for minutes and then fail
    to write."""
    existing = Path(folder).expanduser()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return existing, "file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return existing, "permission"
    try:  # the permission bits do not tell all (root, read-only or virtual file systems like /proc): try
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".coinsim-probe-")
    except OSError:
        return existing, "permission"
    os.close(fd)
    os.unlink(probe)
    return None


def why_blocked(folder: Path | str) -> str | None:
    """`blocked_by` in words ("/x is a file, not a folder", "no permission to write in /x"), or None."""
    blocked = blocked_by(folder)
    if blocked is None:
        return None
    existing, why = blocked
    return f"{existing} is a file, not a folder" if why == "file" else f"no permission to write in {existing}"
