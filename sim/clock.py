"""The fast engine's event loop: a heap of due events and a clock, nothing else.

An event is any object with a `callbacks` list (`Due` is the bare one); `at(t, event)` schedules it at absolute
time t, and events run in time order, ties in the order they were scheduled — the order SimPy gives its own
events, so the idiomatic SimPy reference engine (`sim.reference`) and this loop run the same model event for
event. `run_due(t)` runs everything due at or before an arrival at t and moves the clock there, so an arrival
needs no event of its own. Written here rather than borrowed from SimPy's Environment because the fast engine's
hot path would otherwise have to reach into SimPy's private heap and clock; it is also the faster of the two
(docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from itertools import count
from typing import Any


class Due:
    """A bare event: the callbacks to run when it is due."""

    __slots__ = ("callbacks",)

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self.callbacks: list[Callable[[Any], None]] | None = [callback]


class Clock:
    """Time in ms (`now`) and the events due later (`heap`: (time, order, event))."""

    __slots__ = ("now", "heap", "_order")

    def __init__(self) -> None:
        self.now = 0.0
        self.heap: list[tuple[float, int, Any]] = []
        self._order = count()

    def at(self, t: float, event: Any) -> None:
        """Schedule `event` at absolute time `t` (not before now)."""
        heappush(self.heap, (t, next(self._order), event))

    def later(self, delay: float, callback: Callable[[Any], None]) -> Due:
        """Run `callback` `delay` ms from now; returns its event."""
        event = Due(callback)
        heappush(self.heap, (self.now + delay, next(self._order), event))
        return event

    def step(self) -> None:
        """Run the next due event."""
        self.now, _, event = heappop(self.heap)
        callbacks, event.callbacks = event.callbacks, None
        for callback in callbacks:
            callback(event)

    def run_due(self, t: float) -> None:
        """Run every event due at or before `t`, then move the clock to `t`."""
        heap = self.heap
        while heap and heap[0][0] <= t:
            self.now, _, event = heappop(heap)
            callbacks, event.callbacks = event.callbacks, None
            for callback in callbacks:
                callback(event)
        self.now = t

    def peek(self) -> float:
        """When the next event is due (inf when none is)."""
        return self.heap[0][0] if self.heap else float("inf")
