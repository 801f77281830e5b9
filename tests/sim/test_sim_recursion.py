"""Uncoded FIFO runs go through Lindley's recursion instead of the event loop: the records must be the event
loop's bit for bit, and the recursion must be taken only where nothing couples the servers."""

from __future__ import annotations

import numpy as np
import pytest

from sim import parse_config
from sim.draws import draw
from sim.engine import FastEngine
from sim.plan import make_plan


def _both(table: dict, seed: int = 3):
    cfg = parse_config(table)
    d = draw(cfg, seed)
    plan = make_plan(cfg, cfg.policies[0], d)
    fast = FastEngine(plan, d)
    loop = FastEngine(plan, d)
    loop.recursion = False
    return fast.recursion, fast.run(), loop.run()


BASE = {"n_experts": 3, "r": 0, "n_queries": 5000, "policies": ["uncoded"],
        "traffic": {"kind": "poisson", "rates_per_ms": [0.5, 0.3, 0.15]},
        "service": {"expert": {"kind": "lognormal", "mean_ms": 1.0, "sigma": 0.6}, "scale": [1.0, 2.0, 4.0]},
        "stragglers": {"p": 0.05, "slowdown": 10.0}}


@pytest.mark.parametrize("table", [
    BASE,
    BASE | {"traffic": {"kind": "markov_hot", "rate_per_ms": 0.8, "strength": 0.8, "mean_dwell_ms": 50.0}},
    BASE | {"n_queries": None, "horizon_ms": 3000.0},
    # 70 experts: the answer masks are Python ints past 63 servers
    {"n_experts": 70, "r": 0, "n_queries": 3000, "policies": ["uncoded"],
     "traffic": {"kind": "poisson", "rate_per_ms": 5.0, "zipf": 1.1},
     "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}}},
])
def test_the_recursion_gives_the_event_loops_records_bit_for_bit(table: dict) -> None:
    took, fast, loop = _both(table)
    assert took
    for name in ("finish_ms", "how", "n_tasks", "server_ms", "busy_ms", "cancelled_ms", "lost_ms"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(loop, name), err_msg=name)
    assert list(fast.mask) == list(loop.mask)
    assert fast.end_ms == loop.end_ms
    # queues formed: the recursion is not only arrival + service
    assert np.mean(fast.finish_ms - np.asarray(draw(parse_config(table), 3).arrival_ms) - fast.server_ms) > 0.05


@pytest.mark.parametrize("extra", [
    {"service": BASE["service"] | {"cores": 2.0}},  # shared cores couple the servers
    {"stragglers": {"p": 0.05, "slowdown": 10.0, "extra_of": "pass"}},  # the straggle follows the pass as it ran
    {"stragglers": {"episodes": {"mean_normal_ms": 100.0, "mean_slow_ms": 10.0, "slowdown": 3.0}}},
    {"stragglers": {"failures": {"mean_up_ms": 100.0, "mean_down_ms": 10.0}}},
    {"network": {"out": {"kind": "deterministic", "value_ms": 0.1}}},
    {"traffic": BASE["traffic"] | {"ensemble_rate_per_ms": 0.05}},
    {"policies": ["replication"], "r": 1, "service": BASE["service"] | {"scale": [1.0, 2.0, 4.0, 1.0]}},
])
def test_anything_that_couples_the_servers_takes_the_event_loop(extra: dict) -> None:
    took, fast, loop = _both(BASE | extra)
    assert not took
    np.testing.assert_array_equal(fast.finish_ms, loop.finish_ms)
