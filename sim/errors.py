"""The one exception type the simulator raises for bad input (the CLI maps it to exit code 2)."""

from __future__ import annotations


class SimConfigError(ValueError):
    """Invalid simulation input, reported as a single line before any event is simulated."""
