"""The per-server means the layout and the capacity checks read, by hand, and their cost at fleet size.

The layout computes one distribution mean per kind of host and applies scale, stragglers (on the servers they
reach) and the overhead per server as arrays; a 200,001-server fleet's checks once took minutes in per-server
Python loops (a distribution built per server).
"""

from __future__ import annotations

import numpy as np
import pytest

import sim.layout as layout_module
from sim import PolicySpec, parse_config
from sim.layout import _cores_problem, check_stability, layout


def _exp(mean: float) -> dict:
    return {"kind": "exponential", "mean_ms": mean}


def _table(**extra) -> dict:
    table = {"n_experts": 2, "r": 1, "n_queries": 10, "policies": ["uncoded", "coded"],
             "traffic": {"kind": "poisson", "rate_per_ms": 0.1},
             "service": {"experts": [_exp(1.0), _exp(2.0)], "coded": _exp(3.0), "scale": [1.0, 2.0, 0.5],
                         "overhead_ms": 0.25},
             "stragglers": {"p": 0.1, "slowdown": 5.0, "servers": [0, 2]}}
    for key, value in extra.items():
        table[key] = table[key] | value
    return table


def test_means_by_hand_with_scale_stragglers_on_some_servers_and_overhead() -> None:
    cfg = parse_config(_table())
    # straggle factor 0.9 + 0.1 x 5 = 1.4 on servers 0 and 2 only; scale per server; overhead once per task
    lay = layout(cfg, PolicySpec(kind="coded"))
    np.testing.assert_allclose(lay.mean_ms, [1.0 * 1.0 * 1.4 + 0.25, 2.0 * 2.0 + 0.25, 3.0 * 0.5 * 1.4 + 0.25])
    assert lay.hosts[:2] == (0, 1)


def test_episodes_slow_only_the_servers_the_stragglers_reach() -> None:
    # slow a quarter of the time (3 ms normal, 1 ms slow on average) at x3: mean factor 1 + 0.25 x 2 = 1.5, on
    # server 1 only (its scaled pass and the overhead both: episodes slow the whole task)
    episodes = {"mean_normal_ms": 3.0, "mean_slow_ms": 1.0, "slowdown": 3.0}
    cfg = parse_config(_table(stragglers={"p": 0.0, "servers": [1], "episodes": episodes}))
    lay = layout(cfg, PolicySpec(kind="coded"))
    np.testing.assert_allclose(lay.mean_ms, [1.25, (4.0 + 0.25) * 1.5, 1.75])


@pytest.mark.parametrize("hold, fits", [("compute", False), ("stall", True)])
def test_the_shared_cores_count_a_straggle_only_where_it_computes(hold, fits) -> None:
    # one core, 0.3/ms routed to each expert, stragglers at p = 0.5 x5 (factor 3) on servers 0 and 2. On the core
    # per task: expert 0 computing its straggle 1 x 3 + 0.25 = 3.25 ms (stalled: 1.25), expert 1 (scale 0.5, not
    # straggling) 1.25 ms. Work 0.3 x (3.25 + 1.25) = 1.35 core-ms per ms (over); stalled 0.3 x 2.5 = 0.75 (fits)
    cfg = parse_config(_table(traffic={"rate_per_ms": 0.6},
                              service={"scale": [1.0, 0.5, 0.5], "cores": 1.0},
                              stragglers={"p": 0.5, "hold": hold}))
    problem = _cores_problem(cfg, cfg.policies[0], layout(cfg, cfg.policies[0]))
    assert (problem is None) is fits
    if not fits:
        assert "1.35 core-ms per ms" in problem


def test_failures_take_capacity_only_from_the_servers_they_reach() -> None:
    # expert 1 (server 1, mean 4.25 ms incl. overhead) alone serves 0.2353/ms; up 3/4 of the time -> 0.1765/ms.
    # 0.2/ms to expert 1 fits while failures reach only servers 0 and 2, not once they reach server 1 too
    failures = {"mean_up_ms": 300.0, "mean_down_ms": 100.0}
    base = _table(traffic={"rate_per_ms": 0.4}, stragglers={"p": 0.0, "failures": failures})
    assert check_stability(parse_config(base)) is None
    reached = _table(traffic={"rate_per_ms": 0.4}, stragglers={"p": 0.0, "failures": failures,
                                                               "servers": [0, 1, 2]})
    problem = check_stability(parse_config(reached))
    assert problem is not None and "model 1" in problem


def test_a_large_fleet_builds_one_distribution_per_kind_of_host(monkeypatch) -> None:
    # 2 experts x 20,000 instances + 1 extra: the means come from one distribution per kind of host, not one per
    # server (which made a 200,001-server fleet's checks take minutes)
    calls = []
    real = layout_module.server_dist
    monkeypatch.setattr(layout_module, "server_dist", lambda cfg, host: calls.append(host) or real(cfg, host))
    table = {"n_experts": 2, "r": 1, "n_queries": 10, "policies": ["uncoded", "coded", "hedged"],
             "traffic": {"kind": "poisson", "rate_per_ms": 1000.0},
             "service": {"experts": [_exp(1.0), _exp(2.0)], "coded": _exp(3.0)},
             "stragglers": {"p": 0.1, "slowdown": 5.0},
             "deployment": {"instances": 20_000, "balancer": "jsq"}}
    cfg = parse_config(table)
    calls.clear()
    lay = layout(cfg, PolicySpec(kind="coded"))
    assert len(calls) == 3
    means = np.asarray(lay.mean_ms)
    hosts = np.asarray(lay.hosts)
    assert len(means) == 40_001
    np.testing.assert_allclose(means[hosts == 0], 1.4)
    np.testing.assert_allclose(means[hosts == 1], 2.8)
    np.testing.assert_allclose(means[-1], 4.2)
    calls.clear()
    assert check_stability(cfg) is None
    assert len(calls) <= 3 * 2 * len(cfg.policies)
