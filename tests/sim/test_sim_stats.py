"""Confidence intervals that stay valid for autocorrelated output; summary fields; replications; no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.signal import lfilter

import sim
from sim.stats import across_replications, batch_ci


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary AR(1): x_k = phi x_{k-1} + e_k, started from its stationary law."""
    e = rng.standard_normal(n)
    e[0] /= np.sqrt(1 - phi**2)
    return lfilter([1.0], [1.0, -phi], e)


def test_batch_means_ci_covers_under_strong_autocorrelation_where_iid_ci_fails():
    """AR(1) with phi = 0.95 and true mean 0: batch-means 95% CIs cover about 95% of the time, the naive
    i.i.d. interval (what a bootstrap of single observations gives) covers far less."""
    rng = np.random.default_rng(0)
    reps, n, phi = 300, 20_000, 0.95
    cover_bm = cover_iid = 0
    for _ in range(reps):
        x = _ar1(rng, n, phi)
        _, lo, hi = batch_ci(x, 20, 0.95)
        cover_bm += lo <= 0 <= hi
        half = 1.96 * x.std(ddof=1) / np.sqrt(n)
        cover_iid += abs(x.mean()) <= half
    se = np.sqrt(0.95 * 0.05 / reps)
    assert abs(cover_bm / reps - 0.95) < 4 * se, cover_bm / reps
    assert cover_iid / reps < 0.6


def test_summary_fields_and_extra_load():
    cfg = {
        "n_experts": 2,
        "r": 1,
        "traffic": {"rate_per_ms": 1.0},
        "stragglers": {"p": 0.05},
        "n_queries": 20_000,
        "policies": ["uncoded", "coded", {"kind": "coded", "cancel": False, "name": "coded-keep"}],
    }
    res = sim.simulate(cfg, seed=3)
    s = res.summary
    assert "by_kind" not in s["uncoded"]  # routed queries only
    mixed = sim.simulate(cfg | {"traffic": {"rate_per_ms": 0.8, "ensemble_rate_per_ms": 0.1}}, seed=3)
    bk = mixed.summary["coded"]["by_kind"]
    assert bk["routed"]["n"] + bk["ensemble"]["n"] == 18_000 and bk["ensemble"]["mean_ms"] > bk["routed"]["mean_ms"]
    for name, pol in s.items():
        # against numpy on the measured records (an interval around its own estimate, or percentiles of one
        # sample in order, would hold whatever the summary was computed from)
        x = res.records.query("policy == @name and not warmup")["latency_ms"].to_numpy()
        assert pol["n_measured"] == len(x) == 18_000 and pol["n_queries"] == 20_000
        assert pol["mean_ms"] == pytest.approx(x.mean(), rel=1e-12)
        for k, q in (("p50", 50), ("p95", 95), ("p99", 99), ("p999", 99.9)):
            assert pol[f"{k}_ms"] == pytest.approx(np.percentile(x, q), rel=1e-12), (name, k)
            # a percentile's interval lies between measured latencies (so never below zero)
            assert x.min() <= pol[f"{k}_ms_lo"] <= pol[f"{k}_ms"] <= pol[f"{k}_ms_hi"] <= x.max()
    assert s["uncoded"]["extra_load_vs_uncoded_pct"] == 0.0
    assert s["uncoded"]["spare_servers"] == [2] and s["uncoded"]["utilization_per_server_pct"][2] == 0.0
    # redundancy costs work; cancellation recovers part of it
    assert 0 < s["coded"]["extra_load_vs_uncoded_pct"] < s["coded-keep"]["extra_load_vs_uncoded_pct"]
    assert s["coded"]["cancelled_ms"] > 0 and s["coded-keep"]["cancelled_ms"] == 0
    assert s["coded"]["p99_ms"] < s["uncoded"]["p99_ms"]
    sv = res.servers
    assert set(sv.columns) >= {"policy", "server", "hosts", "busy_ms", "utilization_pct"}
    assert sv[(sv["policy"] == "coded") & (sv["server"] == 2)]["hosts"].item() == "coded"
    # server_ms of the records adds up to the servers' busy time
    rec = res.records
    for pol in ("uncoded", "coded", "coded-keep"):
        assert np.isclose(
            rec.loc[rec["policy"] == pol, "server_ms"].sum(), sv.loc[sv["policy"] == pol, "busy_ms"].sum()
        )


def test_independent_replications():
    cfg = {"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": 0.5}, "n_queries": 20_000, "policies": ["uncoded"]}
    out = sim.replicate(cfg, seed=1, n_replications=8)
    m, lo, hi = out["uncoded"]["mean_ms"]
    assert lo < 2.0 < hi and hi - lo < 0.2  # M/M/1: 1 / (mu - lam) = 2
    assert across_replications([1.0, 1.0], 0.95)[0] == 1.0


def test_sim_imports_no_torch():
    code = "import sys, sim; sim.simulate({'n_experts':1,'r':0,'traffic':{'rate_per_ms':0.5},'n_queries':100}); "
    code += "bad = [m for m in sys.modules if m == 'torch' or (m.split('.')[0] in ('coin','models','scenarios'))]; "
    code += "assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
