"""Traffic models (fixed total rate, moving split) and stragglers/failures (nothing dropped, exact restarts)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_testutil import lindley

import sim
from sim.draws import EPISODES, FAILURES, Timeline, stream
from sim.parse import parse_config


def _window_counts(d: sim.Draws, n_models: int, width: float) -> np.ndarray:
    k = (d.arrival_ms // width).astype(np.int64)
    k = k[k < k.max()]  # drop the partial last window
    m = d.model[: len(k)]
    return np.stack([np.bincount(k[m == i], minlength=k.max() + 1) for i in range(n_models)], axis=1)


@pytest.mark.parametrize("strength", [0.0, 0.8])
def test_markov_hot_split_is_negatively_correlated_at_fixed_total_rate(strength):
    lam, dwell = 2.0, 500.0
    cfg = parse_config(
        {
            "n_experts": 2,
            "r": 1,
            "traffic": {"kind": "markov_hot", "rate_per_ms": lam, "strength": strength, "mean_dwell_ms": dwell},
            "n_queries": 200_000,
        }
    )
    d = sim.draw(cfg, 3)
    c = _window_counts(d, 2, dwell / 5)
    tot = c.sum(axis=1)
    # total stays Poisson: index of dispersion 1 within 4 standard errors (sd of it ~ sqrt(2 / windows))
    assert abs(tot.var() / tot.mean() - 1) < 4 * math.sqrt(2 / len(tot))
    corr = np.corrcoef(c[:, 0], c[:, 1])[0, 1]
    se = 1 / math.sqrt(len(tot))
    if strength == 0:
        assert abs(corr) < 4 * se
    else:
        assert corr < -0.5
        # long-run shares stay 1/N each
        assert abs((d.model == 0).mean() - 0.5) < 0.05


def test_smooth_split_follows_the_complementary_cosine():
    lam, s, period = 2.0, 0.6, 1000.0
    cfg = parse_config(
        {
            "n_experts": 2,
            "r": 1,
            "traffic": {"kind": "smooth", "rate_per_ms": lam, "strength": s, "period_ms": period},
            "n_queries": 100_000,
        }
    )
    d = sim.draw(cfg, 4)
    phase = (d.arrival_ms % period) / period
    for lo in (0.0, 0.25, 0.5, 0.75):
        sel = (phase >= lo) & (phase < lo + 0.05)
        mid = 2 * math.pi * (lo + 0.025)
        want = (1 + s * math.cos(mid)) / 2  # share of model 0 (averaging over the bin shifts it < 0.01)
        got = (d.model[sel] == 0).mean()
        assert abs(got - want) < 4 * math.sqrt(0.25 / sel.sum()) + 0.01, (lo, got, want)


def test_poisson_weights_and_ensemble_share():
    cfg = parse_config(
        {
            "n_experts": 3,
            "r": 1,
            "traffic": {"rates_per_ms": [0.3, 0.2, 0.1], "ensemble_rate_per_ms": 0.2},
            "n_queries": 100_000,
        }
    )
    d = sim.draw(cfg, 5)
    for m, want in ((0, 0.375), (1, 0.25), (2, 0.125), (-1, 0.25)):
        assert abs((d.model == m).mean() - want) < 4 * math.sqrt(want * (1 - want) / d.n)
    gaps = np.diff(d.arrival_ms)
    assert abs(gaps.mean() - 1 / 0.8) < 4 * gaps.std() / math.sqrt(len(gaps))


def test_single_server_failures_equal_the_restart_recursion():
    """Work in service at a failure is lost and restarted (same draw) after repair; exact check."""
    up, down = 40.0, 5.0
    cfg = {
        "n_experts": 1,
        "r": 0,
        "traffic": {"rate_per_ms": 0.5},
        "stragglers": {"failures": {"mean_up_ms": up, "mean_down_ms": down}},
        "n_queries": 5_000,
        "policies": ["uncoded"],
    }
    res = sim.simulate(cfg, seed=2)
    d = res.draws
    svc = -np.log1p(-d.service_u[:, 0])
    tl = Timeline(stream(2, FAILURES, 0), up, down)
    k, free_at, lat, lost = 1, 0.0, [], 0.0
    for a, s in zip(d.arrival_ms.tolist(), svc.tolist(), strict=True):
        start = max(a, free_at)
        while True:
            while tl.switch_after(k + 1) <= start:  # skip down periods that ended before start
                k += 2
            fail, back = tl.switch_after(k), tl.switch_after(k + 1)
            if fail <= start:  # server is down at start: wait for the repair
                start = back
            elif start + s > fail:  # fails during service: work lost, restart after repair
                lost += fail - start
                start = back
            else:
                break
        free_at = start + s
        lat.append(free_at - a)
    np.testing.assert_allclose(res.records["latency_ms"].to_numpy(), lat, rtol=0, atol=1e-8)
    assert res.summary["uncoded"]["lost_ms"] == pytest.approx(lost)
    assert lost > 0
    assert (res.records["latency_ms"].to_numpy() >= lindley(d.arrival_ms, svc) - 1e-9).all()


def test_failures_nothing_dropped_and_coding_routes_around_a_down_expert():
    cfg = {
        "n_experts": 2,
        "r": 1,
        "traffic": {"rate_per_ms": 0.8, "ensemble_rate_per_ms": 0.1},
        "stragglers": {"failures": {"mean_up_ms": 200.0, "mean_down_ms": 50.0}, "servers": [0]},
        "n_queries": 20_000,
        "policies": [
            "uncoded",
            "coded",
            {"kind": "coded", "dispatch": "sed"},
            {"kind": "replication", "dispatch": "jsq"},
        ],
    }
    res = sim.simulate(cfg, seed=9)
    rec = res.records
    assert np.isfinite(rec["finish_ms"]).all() and (rec["latency_ms"] > 0).all()
    assert (rec.groupby("policy", observed=True).size() == 20_000).all()
    s = res.summary
    assert s["uncoded"]["lost_ms"] > 0 and s["coded"]["lost_ms"] > 0
    # routed queries for the failing expert 0 get decoded when it is down
    r0 = rec[(rec["policy"] == "coded") & (rec["model"] == 0)]
    assert (r0["answered_by"] == "decoded").mean() > 0.2
    assert s["coded"]["p99_ms"] < s["uncoded"]["p99_ms"]


def test_slow_episodes_slow_tasks_started_inside_them():
    """Exact: a task is slowed down iff its service starts inside a slow episode of its server."""
    cfg = {
        "n_experts": 1,
        "r": 0,
        "traffic": {"rate_per_ms": 0.05},
        "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}},
        "stragglers": {"episodes": {"mean_normal_ms": 300.0, "mean_slow_ms": 100.0, "slowdown": 6.0}},
        "n_queries": 20_000,
        "policies": ["uncoded"],
    }
    res = sim.simulate(cfg, seed=1)
    d = res.draws
    tl = Timeline(stream(1, EPISODES, 0), 300.0, 100.0)
    free_at, want, n_slow = 0.0, [], 0
    for a in d.arrival_ms.tolist():
        start = max(a, free_at)
        slow = tl.state_at(start)
        n_slow += slow
        free_at = start + (6.0 if slow else 1.0)
        want.append(free_at - a)
    np.testing.assert_allclose(res.records["latency_ms"].to_numpy(), want, rtol=0, atol=1e-9)
    # time share of slow episodes is 100 / (300 + 100) = 1/4; starts sample it almost uniformly
    assert abs(n_slow / d.n - 0.25) < 0.05


def _batch_recursion(arr: np.ndarray, svc: np.ndarray, b: int, extra: float) -> np.ndarray:
    """Single server with dynamic batching: when it frees, it takes up to b tasks that arrived before."""
    n, fin, i, waiting, end = len(arr), np.empty(len(arr)), 0, [], -np.inf
    while i < n or waiting:
        while i < n and arr[i] < end:
            waiting.append(i)
            i += 1
        if waiting:
            start, batch, waiting = end, waiting[:b], waiting[b:]
        else:
            start, batch = arr[i], [i]
            i += 1
        end = start + svc[batch].max() * (1 + extra * (len(batch) - 1))
        fin[batch] = end
    return fin


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_dynamic_batching_equals_batch_recursion_and_adds_capacity(engine):
    b, extra, lam = 4, 0.25, 1.4  # 1.4/ms on a 1 ms server: only batching makes it stable
    cfg = {
        "n_experts": 1,
        "r": 0,
        "traffic": {"rate_per_ms": lam},
        "service": {
            "expert": {"kind": "lognormal", "mean_ms": 1.0, "sigma": 0.3},
            "max_batch": b,
            "batch_cost_per_extra": extra,
        },
        "n_queries": 20_000,
    }
    res = sim.simulate(cfg, seed=4, engine=engine)
    d = res.draws
    conf = sim.parse_config(cfg)
    svc = conf.service.expert.ppf(d.service_u[:, 0])
    want = _batch_recursion(d.arrival_ms, svc, b, extra)
    np.testing.assert_allclose(res.records["finish_ms"].to_numpy(), want, rtol=0, atol=1e-9)
    lat = res.records["latency_ms"].to_numpy()
    assert lat[-2000:].mean() < 3 * lat[2000:4000].mean() + 1  # stable: no drift
    assert np.isclose(res.records["server_ms"].sum(), res.servers["busy_ms"].sum())


def test_batching_with_coded_cancellation_answers_everything():
    cfg = {
        "n_experts": 2,
        "r": 1,
        "traffic": {"rate_per_ms": 1.5, "ensemble_rate_per_ms": 0.2},
        "service": {"max_batch": 3},
        "stragglers": {"p": 0.05, "failures": {"mean_up_ms": 500.0, "mean_down_ms": 20.0}},
        "n_queries": 10_000,
        "policies": ["uncoded", "coded", {"kind": "coded", "dispatch": "sed"}, "hedged"],
    }
    res = sim.simulate(cfg, seed=2)
    rec = res.records
    assert np.isfinite(rec["latency_ms"]).all() and (rec["latency_ms"] > 0).all()
    for pol in ("uncoded", "coded", "coded-sed", "hedged"):
        r, sv = rec[rec["policy"] == pol], res.servers[res.servers["policy"] == pol]
        assert np.isclose(r["server_ms"].sum(), sv["busy_ms"].sum())
