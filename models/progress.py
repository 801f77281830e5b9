"""One way to tell the user what a long step is doing: a line on stderr, flushed, unless asked to be quiet."""

from __future__ import annotations

import sys


def say(message: str, show: bool = True) -> None:
    """Print `message` on stderr (flushed, so it interleaves with progress bars) when `show`."""
    if show:
        print(message, file=sys.stderr, flush=True)
