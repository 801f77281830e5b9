"""Pooled replicas of unequal speed (replication, dispatch='pool'): each task runs at the speed of the server
that serves it, checked by hand, against a FIFO multi-server recursion, a heterogeneous M/M/2 Markov chain
and the capacity region."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_testutil import check_stat, measured

import sim
from sim import SimConfigError

POOL = [{"kind": "replication", "dispatch": "pool"}]


def _trace(times: list[float]) -> dict:
    return {"kind": "trace", "trace_times_ms": times, "trace_models": [0] * len(times)}


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_pooled_hand_trace_uses_the_serving_servers_speed(engine):
    """Server 0 takes 1 ms, its replica (scale 4) takes 4 ms. Arrivals at 0, 0.5, 0.6, 1.2:
    q0 -> server 0 (both idle, lowest index) on [0, 1]; q1 -> idle server 1 on [0.5, 4.5];
    q2 waits for server 0: [1, 2]; q3 waits for server 0 again: [2, 3]."""
    cfg = {
        "n_experts": 1,
        "r": 1,
        "traffic": _trace([0.0, 0.5, 0.6, 1.2]),
        "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "scale": [1.0, 4.0]},
        "policies": POOL,
    }
    rec = sim.simulate(cfg, seed=0, engine=engine).records
    np.testing.assert_allclose(rec["finish_ms"].to_numpy(), [1.0, 4.5, 2.0, 3.0], rtol=0, atol=1e-12)
    assert rec["servers_used"].tolist() == ["0", "1", "0", "0"]
    assert rec["answered_by"].tolist() == ["direct", "replica", "direct", "direct"]
    np.testing.assert_allclose(rec["server_ms"].to_numpy(), [1.0, 4.0, 1.0, 1.0], rtol=0, atol=1e-12)


def _pooled_fifo(arrival_ms: np.ndarray, service_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One FIFO queue, c unequal servers, customer k takes service_ms[k, s] on server s. Customers start in
    arrival order; an arrival finding idle servers takes the lowest-indexed one, otherwise it waits for the
    server that frees first. Returns (finish times, server of each customer)."""
    c = service_ms.shape[1]
    free_at = [-math.inf] * c
    fin, who = np.empty(len(arrival_ms)), np.empty(len(arrival_ms), np.int64)
    for k, a in enumerate(arrival_ms.tolist()):
        idle = [s for s in range(c) if free_at[s] <= a]
        s = idle[0] if idle else min(range(c), key=free_at.__getitem__)
        free_at[s] = max(a, free_at[s]) + float(service_ms[k, s])
        fin[k], who[k] = free_at[s], s
    return fin, who


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_pooled_unequal_servers_equal_the_fifo_recursion(engine):
    """Three pooled servers with scales 1, 0.25, 2 and stragglers on server 1 only: every finish time,
    serving server and work figure equals the recursion fed with each server's own draws."""
    scale = [1.0, 0.25, 2.0]
    cfg = {
        "n_experts": 1,
        "r": 2,
        "traffic": {"rate_per_ms": 3.5},
        "service": {"scale": scale},
        "stragglers": {"p": 0.2, "slowdown": 3.0, "servers": [1]},
        "n_queries": 6_000,
        "policies": POOL,
    }
    res = sim.simulate(cfg, seed=5, engine=engine)
    d = res.draws
    svc = -np.log1p(-d.service_u) * np.asarray(scale) * d.task_factor  # Exp(1) scaled, per (query, server)
    assert (d.task_factor[:, 1] > 1).any() and (d.task_factor[:, [0, 2]] == 1).all()
    fin, who = _pooled_fifo(d.arrival_ms, svc)
    rec = res.records
    np.testing.assert_allclose(rec["finish_ms"].to_numpy(), fin, rtol=0, atol=1e-9)
    assert (rec["answer_mask"].to_numpy() == (1 << who)).all()
    assert set(np.unique(who)) == {0, 1, 2}
    np.testing.assert_allclose(rec["server_ms"].to_numpy(), svc[np.arange(d.n), who], rtol=0, atol=1e-12)


def _hetero_mm2_sojourn(lam: float, mu0: float, mu1: float, n_max: int = 200) -> float:
    """Mean sojourn of one FIFO queue with two exponential servers of rates mu0, mu1, where an arrival that
    finds both idle takes server 0: stationary law of the (truncated) Markov chain, then Little's law.

    States: 0 = empty, 1 = only server 0 busy, 2 = only server 1 busy, then n = 2, 3, ... in system at
    index n + 1 (both busy, n - 2 waiting)."""
    size = n_max + 2
    q = np.zeros((size, size))

    def rate(i: int, j: int, r: float) -> None:
        q[i, j] += r

    rate(0, 1, lam)
    rate(1, 0, mu0)
    rate(1, 3, lam)
    rate(2, 0, mu1)
    rate(2, 3, lam)
    rate(3, 2, mu0)  # two in system, server 0 finishes: only server 1 still busy
    rate(3, 1, mu1)
    for n in range(2, n_max + 1):
        i = n + 1
        if n > 2:
            rate(i, i - 1, mu0 + mu1)
        if n < n_max:
            rate(i, i + 1, lam)
    np.fill_diagonal(q, -q.sum(axis=1))
    a = np.vstack([q.T, np.ones(size)])
    pi = np.linalg.lstsq(a, np.r_[np.zeros(size), 1.0], rcond=None)[0]
    assert pi[-1] < 1e-12  # the truncation is harmless
    n_in = np.r_[0, 1, 1, np.arange(2, n_max + 1)]
    return float(pi @ n_in) / lam


def test_pooled_fast_replica_matches_heterogeneous_mm2():
    """Expert at 1/ms, replica 4x faster (scale 0.25): capacity 5/ms, so 3/ms is a stable 60% load (it
    would overload two servers running at the expert's speed). Mean sojourn from the Markov chain."""
    lam, mu0, mu1 = 3.0, 1.0, 4.0
    # the chain reproduces M/M/2 for equal servers: W = 1/mu + C / (2 mu - lam), C = 2 rho^2 / (1 + rho)
    rho = 1.5 / 2
    assert _hetero_mm2_sojourn(1.5, 1.0, 1.0) == pytest.approx(1 + 2 * rho**2 / (1 + rho) / (2 - 1.5), rel=1e-9)
    cfg = {
        "n_experts": 1,
        "r": 1,
        "traffic": {"rate_per_ms": lam},
        "service": {"scale": [1 / mu0, 1 / mu1]},
        "n_queries": 200_000,
        "policies": POOL,
    }
    res = sim.simulate(cfg, seed=3)
    check_stat(measured(res, "replication-pool"), _hetero_mm2_sojourn(lam, mu0, mu1))


def _drift(res: sim.SimResult) -> float:
    """Latency growth per ms of arrival time over the last 5% of queries (0 for a stable queue)."""
    tail = res.records.iloc[int(0.95 * len(res.records)) :]
    return float((tail["latency_ms"] / tail["arrival_ms"]).mean())


@pytest.mark.parametrize("scale, load", [([1.0, 0.25], 0.9), ([1.0, 4.0], 1.2)], ids=["fast-replica", "slow-replica"])
def test_pooled_latency_drift_follows_the_summed_capacity(scale, load):
    """Capacity of the pool = sum of each server's own rate (1 / (mean * scale)). Inside it latency stays
    bounded; beyond it the queue grows at lam - c, so a query arriving at t waits about (lam - c) t / c."""
    cap = sum(1 / (1.0 * x) for x in scale)
    lam = load * cap
    cfg = {
        "n_experts": 1,
        "r": 1,
        "traffic": {"rate_per_ms": lam},
        "service": {"scale": scale},
        "n_queries": 60_000,
        "policies": POOL,
    }
    res = sim.simulate(cfg, seed=11)
    horizon = float(res.draws.arrival_ms[-1])
    # the number in system N(t) moves like a random walk with variance rate lam + c and the wait for N(t)
    # departures adds variance N / c^2: 4 sigma of latency / t at the horizon
    tol = 4 * math.sqrt((lam + cap + max(lam - cap, 0.0) / cap) / horizon) / cap
    want = max(lam - cap, 0.0) / cap
    assert abs(_drift(res) - want) < tol, (_drift(res), want, tol)


def test_capacity_check_sums_each_pooled_servers_own_rate():
    """Expert: Exp(1) -> 1/ms. Replica: scale 0.25 and stragglers (p 0.5, x3) on it alone -> mean
    0.25 * 2 = 0.5 ms -> 2/ms. The pool serves at most 3/ms; an unequal pool must not count 2 x 1/ms."""
    cap = 1 / 1.0 + 1 / (0.25 * (0.5 * 1 + 0.5 * 3))
    cfg = {
        "n_experts": 1,
        "r": 1,
        "service": {"scale": [1.0, 0.25]},
        "stragglers": {"p": 0.5, "slowdown": 3.0, "servers": [1]},
        "policies": POOL,
    }
    sim.parse_config(cfg | {"traffic": {"rate_per_ms": 0.98 * cap}})
    with pytest.raises(SimConfigError, match=r"unstable load: .*serve at most 3/ms"):
        sim.parse_config(cfg | {"traffic": {"rate_per_ms": 1.02 * cap}})
