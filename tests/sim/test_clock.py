"""The fast engine's event loop orders events exactly as SimPy orders its own (time, then the order they were
scheduled), so the fast and the idiomatic SimPy engines can agree event for event."""

from __future__ import annotations

import numpy as np
import simpy

from sim.clock import Clock, Due


def test_events_run_in_time_order_ties_in_schedule_order_and_arrivals_move_the_clock():
    env = Clock()
    log: list[tuple[str, float]] = []
    env.at(2.0, Due(lambda _ev: log.append(("a", env.now))))
    env.later(1.0, lambda _ev: log.append(("t", env.now)))
    env.at(2.0, Due(lambda _ev: log.append(("b", env.now))))  # same time: after "a"
    env.run_due(1.5)
    assert log == [("t", 1.0)] and env.now == 1.5  # the clock moves to the arrival without an event
    assert env.peek() == 2.0
    env.run_due(2.0)  # due at the arrival's time: run before it (departures before arrivals)
    assert log == [("t", 1.0), ("a", 2.0), ("b", 2.0)] and env.now == 2.0
    env.later(0.0, lambda _ev: log.append(("now", env.now)))
    env.step()
    assert log[-1] == ("now", 2.0) and env.peek() == float("inf")


def _trace(make_env, seed: int) -> list[tuple[int, float]]:
    """A random cascade of events, each scheduling 1-2 more at random (often equal) delays; the order they ran in."""
    rng = np.random.default_rng(seed)
    delays = rng.choice([0.0, 0.5, 1.0, 1.5], size=4000).tolist()
    fan = rng.integers(1, 3, size=2000).tolist()
    env, schedule, run = make_env()
    log: list[tuple[int, float]] = []
    k = [0]

    def fire(label: int) -> None:
        log.append((label, now(env)))
        for _ in range(fan[label % len(fan)]):
            if k[0] >= len(delays) - 1:
                return
            k[0] += 1
            child = k[0]
            schedule(env, delays[child], lambda _ev, c=child: fire(c))

    for root in range(5):
        schedule(env, delays[root] * 3, lambda _ev, r=root: fire(r))
    k[0] = 5
    run(env)
    return log


def now(env) -> float:
    return env.now


def _simpy():
    def schedule(env, delay, callback):
        env.timeout(delay).callbacks.append(callback)

    return simpy.Environment(), schedule, lambda env: env.run()


def _clock():
    def run(env):
        while env.heap:
            env.step()

    return Clock(), lambda env, delay, callback: env.later(delay, callback), run


def test_the_same_cascade_runs_in_the_same_order_as_in_simpy():
    for seed in range(3):
        ours, theirs = _trace(_clock, seed), _trace(_simpy, seed)
        assert len(ours) > 500 and ours == theirs
