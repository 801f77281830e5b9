"""Running hedge delays (policies/delays.py): the estimator against numpy over the same window, and the property
that makes it worth having — whatever delay it starts from, a policy hedging at a running percentile q hedges
the 1 - q share of routed queries that its expert does not answer by then, in the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

import sim
from policies.delays import RunningDelay
from sim import SimConfigError


def _independent(values: list[float], start: float, q: float, window: int) -> float:
    """The delay after `values`, from numpy: the inverted-CDF percentile of the last `window` values once they
    number at least a fifth of it (else `start`); the largest finite value when that percentile is infinite."""
    last = np.asarray(values[-window:])
    if len(last) < max(5, window // 5):
        return start
    d = float(np.percentile(last, q, method="inverted_cdf"))
    if math.isinf(d):
        finite = last[np.isfinite(last)]
        return float(finite.max()) if len(finite) else start
    return d


@pytest.mark.parametrize(("q", "window", "inf_share"), [(95.0, 50, 0.02), (80.0, 12, 0.3), (50.0, 1000, 0.0)])
def test_running_percentile_is_numpy_over_the_last_window(q, window, inf_share):
    rng = np.random.default_rng(3)
    est = RunningDelay([7.0, 9.0], q, window)
    seen: list[list[float]] = [[], []]
    for k in range(3 * window + 17):
        expert = int(rng.integers(0, 2))
        v = math.inf if rng.random() < inf_share else float(rng.exponential(2.0))
        est.observe(expert, v)
        seen[expert].append(v)
        for i, start in enumerate((7.0, 9.0)):
            assert est.delay(i) == pytest.approx(_independent(seen[i], start, q, window), abs=1e-12), (k, i)
    assert est.delay(-1) == max(est.delay(0), est.delay(1))


def test_a_window_answered_mostly_elsewhere_keeps_its_slowest_direct_answer():
    est = RunningDelay([1.0], 90.0, 10)
    for v in [0.5, math.inf, math.inf, 0.7, math.inf]:
        est.observe(0, v)
    assert est.delay(0) == 0.7  # the 90th percentile is inf; the slowest direct answer seen stands in


def _share_hedged(update: str | None, start: tuple[float, ...] | str, seed: int = 5) -> float:
    policy = {"kind": "hedged", "delay_ms": start, "name": "h"}
    if update == "running":
        policy |= {"delay_update": "running", "delay_quantile": 90.0, "delay_window": 500}
    elif update == "fixed":
        policy |= {"delay_update": "fixed"}
    res = sim.simulate({"n_experts": 2, "r": 2, "n_queries": 30_000, "warmup_fraction": 0.0,
                        "traffic": {"rate_per_ms": 0.7},
                        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
                        "policies": [policy]}, seed)
    rec = res.records
    late = rec[(rec["model"] >= 0) & (rec["query_id"] >= 10_000)]  # after the estimate settled
    return float((late["n_tasks"] > 1).mean())


def test_a_running_p90_hedges_a_tenth_of_queries_from_any_start():
    """Independent of the rule's construction: the share of routed queries that got a hedge. Started at 0.05 ms
    (a fixed delay there hedges most queries) or at 5 ms (hedges 3 %), the running p90 hedges 10 % ± 1.5
    points: its window of 500 holds the percentile's coverage to a standard deviation of sqrt(0.09 / 500) = 1.3
    points per window, and 20,000 queries average about 40 windows."""
    for start in ((0.05, 0.05), (5.0, 5.0)):
        assert abs(_share_hedged("running", start) - 0.10) < 0.015, start
    assert _share_hedged("fixed", (0.05, 0.05)) > 0.5
    assert _share_hedged("fixed", (5.0, 5.0)) < 0.05


def test_percentile_delays_run_by_default_and_numbers_stay_fixed():
    cfg = sim.parse_config({"n_experts": 2, "r": 1, "n_queries": 100, "traffic": {"rate_per_ms": 1.0},
                            "policies": [{"kind": "hedged", "delay_ms": "p95"},
                                         {"kind": "coded", "dispatch": "hedged", "delay_ms": 2.0},
                                         {"kind": "backup", "delay_ms": "p90", "delay_update": "fixed"}]})
    got = [(p.delay_update, p.delay_quantile) for p in cfg.policies]
    assert got == [("running", 95.0), ("fixed", None), ("fixed", None)]


@pytest.mark.parametrize(("policy", "needle"), [
    ({"kind": "hedged", "delay_ms": 2.0, "delay_update": "running"}, "follows a percentile"),
    ({"kind": "hedged", "delay_ms": "p95", "delay_quantile": 90}, "disagrees"),
    ({"kind": "uncoded", "delay_update": "running"}, "need a dispatch that waits"),
    ({"kind": "hedged", "delay_ms": "p95", "delay_window": 2}, "delay_window"),
    ({"kind": "hedged", "delay_ms": "p0"}, "must be in (0, 100)"),
])
def test_bad_running_delays_are_one_line(policy, needle):
    with pytest.raises(SimConfigError) as err:
        sim.parse_config({"n_experts": 2, "r": 1, "n_queries": 100, "traffic": {"rate_per_ms": 1.0},
                          "policies": [policy]})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_summary_gives_where_the_delay_started_and_ended():
    """The end delay recomputed from the records alone: per expert, its last 500 routed queries in the order they
    were answered, each its latency if answered directly else inf, their inverted-CDF 90th percentile."""
    res = sim.simulate({"n_experts": 2, "r": 2, "n_queries": 6_000, "traffic": {"rate_per_ms": 0.7},
                        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
                        "policies": [{"kind": "hedged", "delay_ms": (0.3, 0.5), "delay_update": "running",
                                      "delay_quantile": 90.0, "delay_window": 500, "name": "h"}]}, 2)
    rec = res.records
    routed = rec[rec["model"] >= 0].sort_values("finish_ms", kind="stable")
    ends = []
    for i in (0, 1):
        mine = routed[routed["model"] == i].tail(500)
        values = np.where(mine["answered_by"] == "direct", mine["latency_ms"], np.inf)
        ends.append(_independent(list(values), 0.0, 90.0, 500))
    s = res.summary["h"]
    assert s["hedge_delay_start_ms"] == pytest.approx(0.4)
    assert s["hedge_delay_end_ms"] == pytest.approx(float(np.mean(ends)), rel=1e-9)
