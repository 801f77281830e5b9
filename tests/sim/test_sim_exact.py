"""Exact trace tests: the engine against Lindley's recursion on identical random numbers, the idiomatic
SimPy reference against the fast engine record for record, and determinism from one seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sim_testutil import lindley

import sim
from sim.api import run_plan
from sim.draws import draw
from sim.parse import parse_config
from sim.plan import make_plan


def _exp_service(res: sim.SimResult, server: int, mean_ms: float = 1.0) -> np.ndarray:
    d = res.draws
    return -mean_ms * np.log1p(-d.service_u[:, server]) * d.task_factor[:, server]


def test_mm1_with_stragglers_equals_lindley():
    cfg = {
        "n_experts": 1,
        "r": 0,
        "traffic": {"rate_per_ms": 0.7},
        "stragglers": {"p": 0.1, "slowdown": 4.0},
        "n_queries": 20_000,
        "policies": ["uncoded"],
    }
    res = sim.simulate(cfg, seed=3)
    d = res.draws
    svc = _exp_service(res, 0)
    assert (d.task_factor[:, 0] == 4.0).mean() == pytest.approx(0.1, abs=0.01)  # stragglers really drawn
    expect = lindley(d.arrival_ms, svc)
    got = res.records["latency_ms"].to_numpy()
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-9)
    assert np.allclose(res.records["server_ms"], svc)


def test_routed_and_ensemble_fork_join_without_cancellation_is_max_of_lindley_runs():
    """Uncoded: routed queries see their expert's queue; ensemble queries are fork-join = max over experts."""
    cfg = {
        "n_experts": 3,
        "r": 0,
        "traffic": {"rate_per_ms": 0.9, "weights": [3, 2, 1], "ensemble_rate_per_ms": 0.25},
        "service": {"expert": {"kind": "shifted_exponential", "shift_ms": 0.3, "mean_ms": 0.4}},
        "n_queries": 20_000,
        "policies": ["uncoded"],
    }
    res = sim.simulate(cfg, seed=11)
    d = res.draws
    lat = np.full((d.n, 3), -np.inf)
    for i in range(3):
        mine = (d.model == i) | (d.model == -1)
        svc = 0.3 - 0.4 * np.log1p(-d.service_u[mine, i])
        lat[mine, i] = lindley(d.arrival_ms[mine], svc)
    assert (d.model == -1).any() and (d.model >= 0).any()
    np.testing.assert_allclose(res.records["latency_ms"].to_numpy(), lat.max(axis=1), rtol=0, atol=1e-9)


def test_coded_without_cancellation_is_order_statistics_of_lindley_runs():
    """N=2, r=1, redundant, cancel off: every query is a task on all 3 servers (each its own Lindley queue);
    a routed query for i is answered at min(T_i, max(T_j, T_c)), an ensemble one at the 2nd of 3."""
    cfg = {
        "n_experts": 2,
        "r": 1,
        "traffic": {"rate_per_ms": 0.4, "ensemble_rate_per_ms": 0.1},
        "n_queries": 20_000,
        "policies": [{"kind": "coded", "cancel": False}],
    }
    res = sim.simulate(cfg, seed=5)
    d = res.draws
    t = np.column_stack([lindley(d.arrival_ms, _exp_service(res, s)) for s in range(3)])
    routed = d.model >= 0
    i = np.where(routed, d.model, 0)
    own = t[np.arange(d.n), i]
    other = t[np.arange(d.n), 1 - i]
    expect = np.where(routed, np.minimum(own, np.maximum(other, t[:, 2])), np.sort(t, axis=1)[:, 1])
    rec = res.records
    np.testing.assert_allclose(rec["latency_ms"].to_numpy(), expect, rtol=0, atol=1e-9)
    # nothing is cancelled, so every query pays for all three tasks in full
    np.testing.assert_allclose(rec["server_ms"].to_numpy(), sum(_exp_service(res, s) for s in range(3)))
    decoded = routed & (np.maximum(other, t[:, 2]) < own)
    assert (rec["answered_by"].to_numpy() == "decoded")[routed].tolist() == decoded[routed].tolist()


POLICIES = [
    "uncoded",
    "coded",
    {"kind": "coded", "dispatch": "sed"},
    {"kind": "coded", "dispatch": "hedged", "delay_ms": "p80"},
    {"kind": "coded", "cancel": False, "name": "coded-keep"},
    {"kind": "coded", "fanout": 2, "name": "coded-fan2"},
    {"kind": "replication"},
    {"kind": "replication", "dispatch": "jsq", "replica_of": "hot"},
    {"kind": "replication", "dispatch": "pool"},
    {"kind": "hedged", "delay_ms": 0.7},
    {"kind": "hedged", "delay_ms": "p80", "delay_window": 40, "name": "hedged-running"},
    {"kind": "backup", "delay_ms": "p80"},
    {"kind": "backup", "dispatch": "redundant"},
    {"kind": "backup", "dispatch": "redundant", "cancel": False, "name": "backup-keep"},
]


def _engines_agree(pol: str | dict, service: dict | None = None) -> None:
    """Same plan and draws through both engines: identical answers, times, servers and work."""
    cfg = parse_config(
        {
            "n_experts": 3,
            "r": 2,
            "traffic": {
                "kind": "markov_hot",
                "rate_per_ms": 1.5,
                "strength": 0.6,
                "mean_dwell_ms": 200,
                "ensemble_rate_per_ms": 0.15,
            },
            "service": service or {},
            "stragglers": {
                "p": 0.05,
                "slowdown": {"kind": "pareto", "alpha": 2.5},
                "episodes": {"mean_normal_ms": 300, "mean_slow_ms": 50, "slowdown": 4},
            },
            "n_queries": 4_000,
            "policies": [pol],
        }
    )
    d = draw(cfg, 7)
    plan = make_plan(cfg, cfg.policies[0], d)
    a, b = run_plan(plan, d, "fast"), run_plan(plan, d, "reference")
    np.testing.assert_allclose(a.finish_ms, b.finish_ms, rtol=0, atol=1e-9)
    assert (a.how == b.how).all() and (a.mask == b.mask).all() and (a.n_tasks == b.n_tasks).all()
    np.testing.assert_allclose(a.server_ms, b.server_ms, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.busy_ms, b.busy_ms, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.cancelled_ms, b.cancelled_ms, rtol=0, atol=1e-6)
    assert (a.finish_ms > d.arrival_ms).all()


def _pol_id(p: str | dict) -> str:
    return p if isinstance(p, str) else str(sorted(p.items()))


@pytest.mark.parametrize("pol", POLICIES, ids=_pol_id)
def test_fast_engine_matches_idiomatic_simpy(pol):
    _engines_agree(pol)


@pytest.mark.parametrize("pol", POLICIES, ids=_pol_id)
def test_fast_engine_matches_idiomatic_simpy_with_batching_and_unequal_servers(pol):
    """Dynamic batching (up to 3 tasks) with cancellation inside batches, on servers of unequal speed (so a
    pooled task's time depends on which server takes it)."""
    _engines_agree(pol, {"max_batch": 3, "batch_cost_per_extra": 0.3, "scale": [1.0, 1.3, 0.8, 0.5, 1.6]})


@pytest.mark.parametrize("pol", POLICIES, ids=_pol_id)
def test_fast_engine_matches_idiomatic_simpy_with_overhead(pol):
    """A per-task overhead beside every pass (not stretched by stragglers, slowed by episodes) on servers of
    unequal speed."""
    _engines_agree(pol, {"overhead_ms": 0.3, "scale": [1.0, 1.3, 0.8, 0.5, 1.6]})


BASE = {
    "n_experts": 2,
    "r": 1,
    "traffic": {"kind": "smooth", "rate_per_ms": 1.0, "strength": 0.8, "period_ms": 500},
    "stragglers": {"p": 0.05},
    "n_queries": 5_000,
    "policies": ["uncoded", "coded", {"kind": "replication", "dispatch": "jsq"}, "hedged"],
}


def test_same_seed_identical_records_and_different_seed_differs():
    a = sim.simulate(BASE, seed=42).records
    b = sim.simulate(BASE, seed=42).records
    pd.testing.assert_frame_equal(a, b)
    c = sim.simulate(BASE, seed=43).records
    assert not np.array_equal(a["arrival_ms"].to_numpy(), c["arrival_ms"].to_numpy())


def test_policies_see_identical_arrivals_models_and_samples():
    rec = sim.simulate(BASE, seed=1).records
    cols = ["query_id", "arrival_ms", "model", "sample_id", "kind"]
    ref = rec[rec["policy"] == "uncoded"][cols].reset_index(drop=True)
    for pol in rec["policy"].cat.categories[1:]:
        pd.testing.assert_frame_equal(rec[rec["policy"] == pol][cols].reset_index(drop=True), ref)


def test_common_random_numbers_survive_other_knobs():
    """Changing p leaves arrivals and base service draws alone; raising p only adds stragglers."""
    lo = sim.draw(parse_config(BASE | {"stragglers": {"p": 0.05}}), 9)
    hi = sim.draw(parse_config(BASE | {"stragglers": {"p": 0.2}}), 9)
    assert np.array_equal(lo.arrival_ms, hi.arrival_ms) and np.array_equal(lo.service_u, hi.service_u)
    assert ((lo.task_factor > 1) <= (hi.task_factor > 1)).all()
    assert (hi.task_factor > 1).sum() > (lo.task_factor > 1).sum()
