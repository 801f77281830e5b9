"""A hedge budget (policy `hedge_budget_pct`, `hedge_budget_burst`): at most a share of the queries hedged, by a
token bucket counted in queries. By hand on a trace where every query's hedge timer fires, against the engines'
agreement query for query, and bad settings refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

import sim
from sim.errors import SimConfigError
from tests.sim.test_sim_slicing import _trace

PASS3 = {"kind": "deterministic", "value_ms": 3.0}


def _hedged_table(**budget) -> dict:
    return {"n_experts": 1, "r": 1, "policies": [{"kind": "hedged", "delay_ms": 1.0} | budget],
            "service": {"expert": PASS3}}


def test_a_quarter_budget_with_room_for_two_hedges_by_hand() -> None:
    # one expert and its replica; a 3 ms pass, queries 10 ms apart: every hedge timer (1 ms) fires before the
    # direct answer. The bucket starts full (2), each arrival adds 0.25 (capped at 2), a hedge spends 1:
    # q0 2 -> hedge (1), q1 1.25 -> hedge (0.25), q2 0.5 no, q3 0.75 no, q4 1.0 -> hedge (0), q5-q7 no, q8 hedge
    arrivals = [10.0 * k for k in range(10)]
    out = _trace(_hedged_table(hedge_budget_pct=25.0, hedge_budget_burst=2), arrivals, [0] * 10, np.ones((10, 2)))
    assert out.n_tasks.tolist() == [2, 2, 1, 1, 2, 1, 1, 1, 2, 1]
    assert out.notes["hedges_denied"] == [2, 3, 5, 6, 7, 9]  # the rules' own list of what they held back
    # the direct answer wins every time (3 ms against 1 + 3); a denied hedge changes no latency here
    np.testing.assert_allclose(out.finish_ms - np.asarray(arrivals), 3.0)
    unlimited = _trace(_hedged_table(), arrivals, [0] * 10, np.ones((10, 2)))
    assert unlimited.n_tasks.tolist() == [2] * 10


def test_a_denied_hedge_leaves_the_query_to_its_first_path() -> None:
    # the primary straggles x4 (12 ms) on every query; with the budget spent the query waits for it
    arrivals = [0.0, 20.0, 40.0]
    factors = np.array([[4.0, 1.0]] * 3)
    out = _trace(_hedged_table(hedge_budget_pct=10.0, hedge_budget_burst=1), arrivals, [0] * 3, factors)
    # q0 hedges (bucket 1 -> 0): the replica answers at 1 + 3; q1 (0.1) and q2 (0.2) cannot hedge: 12 ms each
    np.testing.assert_allclose(out.finish_ms - np.asarray(arrivals), [4.0, 12.0, 12.0])
    assert out.n_tasks.tolist() == [2, 1, 1]


@pytest.mark.parametrize("policy", [
    {"kind": "hedged", "delay_ms": 0.8, "hedge_budget_pct": 5.0},
    {"kind": "coded", "dispatch": "hedged", "delay_ms": "p90", "hedge_budget_pct": 5.0, "hedge_budget_burst": 3},
    {"kind": "backup", "dispatch": "hedged", "delay_ms": 0.8, "hedge_budget_pct": 2.0},
])
def test_the_engines_spend_the_budget_alike_and_it_holds(policy) -> None:
    twin = {k: v for k, v in policy.items() if not k.startswith("hedge_budget")} | {"name": "free"}
    table = {"n_experts": 2, "r": 1, "n_queries": 3000, "policies": [policy, twin],
             "traffic": {"kind": "poisson", "rate_per_ms": 0.5, "ensemble_rate_per_ms": 0.02},
             "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
             "stragglers": {"p": 0.05, "slowdown": 10.0}}
    fast = sim.simulate(table, seed=3)
    ref = sim.simulate(table, seed=3, engine="reference")
    for name in fast.summary:
        a, b = (r.records[r.records["policy"] == name] for r in (fast, ref))
        np.testing.assert_allclose(a["finish_ms"].to_numpy(), b["finish_ms"].to_numpy())
        assert (a["n_tasks"].to_numpy() == b["n_tasks"].to_numpy()).all(), name
    records = fast.records
    budgeted = records[records["policy"] != "free"]
    free = records[records["policy"] == "free"]
    extra = 2 if policy["kind"] == "coded" else 1  # a coded hedge sends the decode group: two tasks here
    hedged = int(((budgeted["n_tasks"] > 1) & (budgeted["kind"] == "routed")).sum())
    hedged_free = int(((free["n_tasks"] > 1) & (free["kind"] == "routed")).sum())
    pct, burst = policy["hedge_budget_pct"], policy.get("hedge_budget_burst", 10)
    # every query (routed and ensemble, warm-up included) adds pct % of a hedge; ensemble hedges spend it too
    assert hedged <= burst + len(budgeted) * pct / 100
    assert hedged_free > hedged  # without a budget more queries hedge: it did bind
    assert set(budgeted.loc[budgeted["kind"] == "routed", "n_tasks"]) <= {1, 1 + extra}


def test_the_summary_counts_the_measured_queries_whose_hedge_was_denied() -> None:
    # a fixed delay, no network: a routed query of an expert with a replica (r = 1: one of the two experts, the one
    # the free twin hedges) had its timer fire iff it was not answered by then (latency over the delay); one that
    # nonetheless sent a single task had its hedge denied. Counted from the records alone
    delay = 0.8
    table = {"n_experts": 2, "r": 1, "n_queries": 4000,
             "policies": [{"kind": "hedged", "delay_ms": delay, "hedge_budget_pct": 5.0},
                          {"kind": "hedged", "delay_ms": delay, "name": "free"}],
             "traffic": {"kind": "poisson", "rate_per_ms": 0.5},
             "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
             "stragglers": {"p": 0.05, "slowdown": 10.0}}
    result = sim.simulate(table, seed=5)
    free = result.records[result.records["policy"] == "free"]
    (replicated,) = set(free.loc[free["n_tasks"] > 1, "model"])
    records = result.records[(result.records["policy"] == "hedged") & ~result.records["warmup"]]
    denied = (records["model"] == replicated) & (records["n_tasks"] == 1) & (records["latency_ms"] > delay)
    expected = 100.0 * float(denied.mean())
    assert 5.0 < expected < 60.0  # the budget binds on a fair share of the queries, not on none or all
    assert result.summary["hedged"]["hedges_denied_pct"] == pytest.approx(expected)
    assert "hedges_denied_pct" not in result.summary["free"]  # no budget, nothing to deny


@pytest.mark.parametrize("policy, expect", [
    ({"kind": "hedged", "delay_ms": 1.0, "hedge_budget_pct": 0}, "hedge_budget_pct"),
    ({"kind": "hedged", "delay_ms": 1.0, "hedge_budget_pct": 101}, "hedge_budget_pct"),
    ({"kind": "hedged", "delay_ms": 1.0, "hedge_budget_pct": float("nan")}, "hedge_budget_pct"),
    ({"kind": "hedged", "delay_ms": 1.0, "hedge_budget_pct": 5, "hedge_budget_burst": 0}, "hedge_budget_burst"),
    ({"kind": "coded", "dispatch": "redundant", "hedge_budget_pct": 5}, "need a dispatch that waits a delay"),
    ({"kind": "uncoded", "hedge_budget_pct": 5}, "need a dispatch that waits a delay"),
    ({"kind": "hedged", "delay_ms": 1.0, "hedge_budget_burst": 3}, "give hedge_budget_pct"),
])
def test_bad_budgets_are_refused_in_one_line(policy, expect) -> None:
    table = {"n_experts": 2, "r": 1, "n_queries": 10, "policies": [policy],
             "traffic": {"kind": "poisson", "rate_per_ms": 0.1}}
    with pytest.raises(SimConfigError) as info:
        sim.parse_config(table)
    assert expect in str(info.value) and "\n" not in str(info.value).strip()
