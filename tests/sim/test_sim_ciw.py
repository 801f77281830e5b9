"""Cross-check against an independent simulator (Ciw) on a multi-server scenario."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sim_testutil import CONF

import sim
from sim.stats import batch_ci

ciw = pytest.importorskip("ciw")


def _pooled_cfg(c: int, lam: float, n: int, p: float = 0.0, scale: list[float] | None = None) -> dict:
    return {
        "n_experts": 1,
        "r": c - 1,
        "traffic": {"rate_per_ms": lam},
        "service": {"scale": scale},
        "stragglers": {"p": p, "slowdown": 3.0},
        "n_queries": n,
        "policies": [{"kind": "replication", "dispatch": "pool"}],
    }


class _ServerDraw(ciw.dists.Distribution):
    """Ciw attaches a server before sampling: customer k served by server s takes table[k][s]."""

    def __init__(self, table: list[list[float]]) -> None:
        self.table = table

    def sample(self, t: float | None = None, ind: Any = None) -> float:  # ind: a ciw.Individual
        return self.table[ind.id_number - 1][ind.server.id_number - 1]


def _ciw_sojourns(inter: list[float], service: list[list[float]], c: int, until: float) -> dict[int, float]:
    net = ciw.create_network(
        arrival_distributions=[ciw.dists.Sequential(inter)],
        service_distributions=[_ServerDraw(service)],
        number_of_servers=[c],
    )
    q = ciw.Simulation(net)
    q.simulate_until_max_time(until)
    return {r.id_number: r.exit_date - r.arrival_date for r in q.get_all_records()}


def test_pooled_servers_match_ciw_trace_exactly():
    """Three unequal pooled servers with stragglers: Ciw fed the very same inter-arrival times and
    per-(customer, server) service times gives the same sojourns.

    Ciw numbers customers from 1 in arrival order and its servers from 1; like ours, an arrival takes the
    lowest-numbered idle server and a freed server takes the head of the one FIFO queue.
    """
    c, n, scale = 3, 3_000, [1.0, 0.5, 2.0]
    res = sim.simulate(_pooled_cfg(c, 2.5, n, p=0.1, scale=scale), seed=6)
    d = res.draws
    svc = -np.log1p(-d.service_u) * np.asarray(scale) * d.task_factor
    inter = np.diff(d.arrival_ms, prepend=0.0)
    ours = res.records["latency_ms"].to_numpy()
    theirs = _ciw_sojourns(inter.tolist() + [1e12], svc.tolist(), c, float(d.arrival_ms[-1]) + 1e4)
    got = np.array([theirs[k + 1] for k in range(n)])  # Ciw numbers customers from 1 in arrival order
    np.testing.assert_allclose(ours, got, rtol=1e-9, atol=1e-7)


def test_pooled_servers_agree_with_ciw_statistically():
    """Independent random streams (Ciw's own RNG): mean sojourn CIs of M/M/4 at load 0.7 overlap."""
    c, lam, n = 4, 2.8, 100_000
    ours = batch_ci(sim.simulate(_pooled_cfg(c, lam, n), seed=12).records["latency_ms"].to_numpy()[n // 10 :], 30, CONF)
    net = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(lam)],
        service_distributions=[ciw.dists.Exponential(1.0)],
        number_of_servers=[c],
    )
    ciw.seed(12)
    q = ciw.Simulation(net)
    q.simulate_until_max_customers(n // 3, method="Finish")
    recs = sorted(q.get_all_records(), key=lambda r: r.arrival_date)
    theirs = batch_ci(np.array([r.exit_date - r.arrival_date for r in recs])[n // 30 :], 30, CONF)
    assert ours[1] <= theirs[2] and theirs[1] <= ours[2], f"sim {ours} vs ciw {theirs}"
    assert ours[2] - ours[1] < 0.15 * ours[0] and theirs[2] - theirs[1] < 0.25 * theirs[0]
