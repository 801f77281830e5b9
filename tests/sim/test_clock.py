"""The one adapter over SimPy's private event heap and clock: it agrees with SimPy's public scheduling, and a SimPy
that changed them is refused by name instead of simulating something else."""

from __future__ import annotations

import pytest
import simpy
from simpy.events import NORMAL

import sim.clock as clock
from sim.clock import Clock, Due


def test_pushed_events_run_in_time_order_with_scheduled_ones_and_ties_in_push_order():
    env = Clock()
    log: list[tuple[str, float]] = []
    env.at(2.0, Due(lambda _ev: log.append(("a", env.now))))
    timeout = env.timeout(1.0)  # SimPy's own event, scheduled through its public API
    timeout.callbacks.append(lambda _ev: log.append(("t", env.now)))
    env.at(2.0, Due(lambda _ev: log.append(("b", env.now))))  # same time: after "a", as SimPy orders ties
    env.run_due(1.5)
    assert log == [("t", 1.0)] and env.now == 1.5  # the clock moves to the arrival without an event
    env.run_due(2.0)  # due at the arrival's time: run before it (departures before arrivals)
    assert log == [("t", 1.0), ("a", 2.0), ("b", 2.0)] and env.now == 2.0
    env.at(4.0, Due(lambda _ev: log.append(("c", env.now))))
    env.run()  # SimPy's own loop runs what Clock pushed
    assert log[-1] == ("c", 4.0) and env.now == 4.0


def test_a_simpy_whose_heap_works_otherwise_is_refused(monkeypatch):
    monkeypatch.setattr(clock, "_CHECKED", False)

    def elsewhere(self, event, priority=NORMAL, delay=0):  # a release keeping its events somewhere else
        self._elsewhere = (self._now + delay, priority, event)

    monkeypatch.setattr(simpy.Environment, "schedule", elsewhere)
    with pytest.raises(RuntimeError, match="no longer works as coinsim's fast engine assumes"):
        Clock()
    monkeypatch.undo()
    monkeypatch.setattr(clock, "_CHECKED", False)
    Clock()  # the real SimPy passes
    assert clock._CHECKED
