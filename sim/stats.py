"""Latency statistics with confidence intervals that hold for autocorrelated queue output.

Queue latencies of consecutive queries are strongly correlated, so an i.i.d. bootstrap would give far too
narrow intervals. We use non-overlapping batch means (sectioning for percentiles: the point estimate comes
from all measured queries, the half-width from the spread of per-batch estimates with a Student t), or
independent replications (`across_replications`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

QUANTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


def _t(confidence: float, dof: int) -> float:
    return float(sps.t.ppf(0.5 + confidence / 2, dof))


def batch_ci(x: np.ndarray, batches: int, confidence: float, stat: str = "mean") -> tuple[float, float, float]:
    """(estimate, lo, hi) of the mean or a percentile ('pNN') of a stationary but correlated sequence."""
    x = np.asarray(x, float)
    if len(x) == 0:
        return (float("nan"),) * 3
    f = np.mean if stat == "mean" else (lambda a: np.percentile(a, float(stat[1:])))
    est = float(f(x))
    b = min(batches, len(x))
    if b < 2:
        return est, float("nan"), float("nan")
    size = len(x) // b
    per = np.array([f(x[k * size : (k + 1) * size]) for k in range(b)])
    half = _t(confidence, b - 1) * float(np.std(per, ddof=1)) / np.sqrt(b)
    return est, est - half, est + half


def latency_summary(latency_ms: np.ndarray, batches: int, confidence: float) -> dict[str, float]:
    """mean, p50, p95, p99, p99.9 (keys *_ms, *_ms_lo, *_ms_hi); latencies in arrival order."""
    out: dict[str, float] = {}
    for key, stat in [("mean", "mean")] + [(k, f"p{v}") for k, v in QUANTILES.items()]:
        est, lo, hi = batch_ci(latency_ms, batches, confidence, stat)
        out[f"{key}_ms"], out[f"{key}_ms_lo"], out[f"{key}_ms_hi"] = est, lo, hi
    return out


def across_replications(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(mean, lo, hi) over independent replications (Student t with R-1 degrees of freedom)."""
    v = np.asarray(values, float)
    m = float(np.mean(v))
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = _t(confidence, len(v) - 1) * float(np.std(v, ddof=1)) / np.sqrt(len(v))
    return m, m - half, m + half
