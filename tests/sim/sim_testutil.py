"""Shared helpers for the sim tests: Lindley recursion and sample-size-derived statistical checks."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from sim.stats import batch_ci

# Confidence of the statistical oracle checks: a correct simulator fails one check with probability 1e-3.
CONF = 0.999


def lindley(arrival_ms: np.ndarray, service_ms: np.ndarray) -> np.ndarray:
    """Sojourn times of a FIFO single-server queue: W_{n+1} = max(0, W_n + S_n - A_{n+1})."""
    out = np.empty(len(arrival_ms))
    free_at = -np.inf
    for k, (a, s) in enumerate(zip(arrival_ms.tolist(), service_ms.tolist(), strict=True)):
        start = a if a >= free_at else free_at
        free_at = start + s
        out[k] = free_at - a
    return out


def check_stat(x: np.ndarray, truth: float, stat: str = "mean", batches: int = 30, max_rel_half: float = 0.1):
    """Assert `truth` lies in the batch-means CI (confidence CONF) of `stat`, and that the CI is informative.

    The half-width bound makes the check able to fail: a CI wider than max_rel_half * truth would accept
    almost anything, so the run is then too short to be a test.
    """
    est, lo, hi = batch_ci(x, batches, CONF, stat)
    half = (hi - lo) / 2
    assert half <= max_rel_half * abs(truth), f"CI too wide to test: {est:.4g} +- {half:.3g} vs {truth:.4g}"
    assert lo <= truth <= hi, f"{stat}: simulated {est:.5g} [{lo:.5g}, {hi:.5g}] but theory says {truth:.5g}"
    return est, half


def measured(res, policy: str, kind: str | None = None) -> np.ndarray:
    """Post-warm-up latencies of one policy, in arrival order."""
    r = res.records
    r = r[(r["policy"] == policy) & ~r["warmup"]]
    if kind is not None:
        r = r[r["kind"] == kind]
    return r["latency_ms"].to_numpy()


def iid_mean_ci(x: np.ndarray) -> tuple[float, float]:
    """Mean and CONF half-width for i.i.d. samples (zero-load runs)."""
    return float(np.mean(x)), float(sps.norm.ppf(0.5 + CONF / 2) * np.std(x, ddof=1) / np.sqrt(len(x)))
