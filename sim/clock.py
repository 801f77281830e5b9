"""The fast engine's clock: SimPy's `Environment`, with the three operations its hot path needs.

SimPy keeps its pending events in a heap of ``(time, priority, id, event)`` and its clock in one attribute;
`Environment.schedule` pushes onto that heap and `Environment.step` pops from it. The fast engine schedules
millions of completions, so it pushes directly (`at`), runs every event due before an arrival without a
`Timeout` per arrival (`run_due`), and its completion events are bare objects with a callback list (`Due`).
Those three are the only places in coinsim that touch SimPy's private attributes, and `check_simpy` verifies,
against SimPy's public API, that they still mean what this module assumes: a SimPy release that changed them
fails there, at the first engine built, instead of simulating something else.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.events import NORMAL


class Due:
    """A bare completion event: SimPy's `step` reads only its `callbacks` and `_ok` (it never fails)."""

    __slots__ = ("callbacks",)
    _ok = True

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self.callbacks = [callback]


class Clock(simpy.Environment):
    """A SimPy environment whose events the fast engine can push and run without SimPy's per-event objects."""

    def __init__(self) -> None:
        super().__init__()
        check_simpy()
        self.heap: list[tuple[float, int, int, Any]] = self._queue
        self._ids = self._eid

    def at(self, t: float, event: Any) -> None:
        """Schedule `event` (a `Due` or any SimPy event) at absolute time `t`, as `schedule` would at `t - now`."""
        heappush(self.heap, (t, NORMAL, next(self._ids), event))

    def run_due(self, t: float) -> None:
        """Run every event due at or before `t` (`step` inlined: these events never fail), then move the clock
        to `t` — an arrival at `t` needs no event of its own."""
        heap = self.heap
        while heap and heap[0][0] <= t:
            self._now, _, _, event = heappop(heap)
            callbacks, event.callbacks = event.callbacks, None
            for callback in callbacks:
                callback(event)
        self._now = t


_CHECKED = False


def check_simpy() -> None:
    """Check, once per process, that SimPy's heap, id counter and clock behave as `Clock` assumes."""
    global _CHECKED
    if _CHECKED:
        return
    env = simpy.Environment(initial_time=1.0)
    seen: list[float] = []
    public = env.timeout(2.0)  # scheduled by SimPy itself, through its public API: due at 3.0
    public.callbacks.append(lambda _ev: seen.append(env.now))
    queue, ids = getattr(env, "_queue", None), getattr(env, "_eid", None)
    ok = (isinstance(queue, list) and len(queue) == 1 and isinstance(queue[0], tuple) and len(queue[0]) == 4
          and queue[0][0] == 3.0 and queue[0][1] == NORMAL and queue[0][3] is public and ids is not None
          and hasattr(ids, "__next__") and getattr(env, "_now", None) == env.now == 1.0)
    if ok:
        due = Due(lambda _ev: seen.append(env.now))
        heappush(queue, (2.0, NORMAL, next(ids), due))  # what Clock.at does
        ok = env.peek() == 2.0
        env.step()
        env.step()
        ok = ok and seen == [2.0, 3.0] and env.now == 3.0 and env.peek() == float("inf")
        env._now = 5.0  # what Clock.run_due does to the clock
        ok = ok and env.now == 5.0
    if not ok:
        raise RuntimeError(f"simpy {simpy.__version__}: its event heap or clock no longer works as coinsim's fast "
                           "engine assumes (sim/clock.py); use the SimPy version pinned in pyproject.toml")
    _CHECKED = True
