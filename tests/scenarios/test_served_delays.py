"""Reading back the hedge delays a finished testbed run served with (for `coinsim testbed --resimulate`): the start
of each expert's delay, and whether it ran or stayed fixed — from hand-made task records."""

from __future__ import annotations

import pandas as pd
import pytest

import sim
from scenarios.testbed_run import pin_served_delays, served_hedge_delays


def _run(delays: dict[int, list[float]], repeats: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Routed queries 10 ms apart, alternating experts 0 and 1; the k-th query of expert i that sent a later task
    sent it delays[i][k] ms after its arrival (every query of that expert in turn); every repeat the same."""
    records, tasks = [], []
    for r in range(repeats):
        seen = {i: 0 for i in delays}
        for q in range(2 * max(len(d) for d in delays.values())):
            i = q % 2
            arrival = 10.0 * q
            records.append({"point": 0, "repeat": r, "policy": "h", "query_id": q, "model": i, "arrival_ms": arrival})
            tasks.append({"point": 0, "repeat": r, "policy": "h", "query_id": q, "role": 0, "due_ms": arrival})
            if seen[i] < len(delays[i]):
                tasks.append({"point": 0, "repeat": r, "policy": "h", "query_id": q, "role": 2,
                              "due_ms": arrival + delays[i][seen[i]]})
                seen[i] += 1
    return pd.DataFrame(tasks), pd.DataFrame(records)


@pytest.mark.parametrize("repeats", [1, 2])
def test_a_fixed_delay_reads_back_fixed_and_a_running_one_from_its_start(repeats):
    tasks, records = _run({0: [2.0, 2.0, 2.0], 1: [3.0, 3.0]}, repeats)
    assert served_hedge_delays(tasks, records, "h", 2) == ((2.0, 3.0), False)
    tasks, records = _run({0: [2.0, 2.5, 1.7], 1: [3.0, 3.0]}, repeats)
    assert served_hedge_delays(tasks, records, "h", 2) == ((2.0, 3.0), True)


def test_an_expert_that_never_hedged_leaves_no_delay():
    tasks, records = _run({0: [2.0], 1: []})
    assert served_hedge_delays(tasks, records, "h", 2) is None


def test_pinned_as_served_running_or_fixed():
    cfg = sim.parse_config({"n_experts": 2, "r": 1, "n_queries": 100, "traffic": {"rate_per_ms": 1.0},
                            "policies": [{"kind": "hedged", "delay_ms": "p95", "name": "h"}]})
    ran = pin_served_delays(cfg, *_run({0: [2.0, 2.5], 1: [3.0]}))
    p = ran.policies[0]
    assert (p.delay_ms, p.delay_update, p.delay_quantile) == ((2.0, 3.0), "running", 95.0)
    fixed = pin_served_delays(cfg, *_run({0: [2.0, 2.0], 1: [3.0]})).policies[0]
    assert (fixed.delay_ms, fixed.delay_update, fixed.delay_quantile) == ((2.0, 3.0), "fixed", None)
