"""r = 2 coded servers survive two simultaneous stragglers (zero load, closed form)."""

from __future__ import annotations

import numpy as np
from scipy import integrate
from sim_testutil import iid_mean_ci, measured

import sim


def kth_completion_mean(rates: list[float], k: int) -> float:
    """E[time until k of independent Exp(rate_i) tasks are done] = ∫ P(fewer than k done by t) dt."""

    def survival(t: float) -> float:
        done = 1.0 - np.exp(-np.asarray(rates) * t)
        counts = np.zeros(len(rates) + 1)
        counts[0] = 1.0
        for p in done:  # Poisson-binomial distribution of how many are done
            counts[1:] = counts[1:] * (1 - p) + counts[:-1] * p
            counts[0] *= 1 - p
        return float(counts[:k].sum())

    value, _ = integrate.quad(survival, 0, np.inf, limit=200)
    return value


def _zero_load_ensemble(n_experts: int, r: int, stragglers: dict, n: int = 30_000) -> sim.SimResult:
    trace = {"kind": "trace", "trace_times_ms": (np.arange(n) * 5000.0).tolist(), "trace_models": [-1] * n}
    config = {"n_experts": n_experts, "r": r, "policies": ["coded", "uncoded"], "traffic": trace,
              "warmup_fraction": 0.0, "stragglers": stragglers}
    return sim.simulate(config, seed=11)


def _check(x: np.ndarray, truth: float) -> None:
    mean, half = iid_mean_ci(x)
    assert half < 0.05 * truth and abs(mean - truth) <= half, (mean, half, truth)


def test_two_straggling_experts_are_decoded_around_with_two_coded_servers():
    """Experts 0 and 1 always straggle ×100 (Exp(1) service). N = 3, r = 2: an ensemble query is done when any 3
    of 5 servers are back — in practice expert 2 and both coded servers, with both slow outputs decoded.
    Uncoded must wait for both stragglers."""
    res = _zero_load_ensemble(3, 2, {"p": 1.0, "slowdown": 100.0, "servers": [0, 1]})
    _check(measured(res, "coded"), kth_completion_mean([0.01, 0.01, 1, 1, 1], 3))  # ≈ 1.80, vs 150 uncoded
    _check(measured(res, "uncoded"), kth_completion_mean([0.01, 0.01, 1], 3))
    decoded = res.records.query("policy == 'coded'")["answered_by"] == "decoded"
    assert decoded.mean() > 0.95


def test_one_coded_server_cannot_hide_two_stragglers():
    """Same stragglers with r = 1: 3 of 4 must be back, so the faster straggler is always waited for."""
    res = _zero_load_ensemble(3, 1, {"p": 1.0, "slowdown": 100.0, "servers": [0, 1]})
    _check(measured(res, "coded"), kth_completion_mean([0.01, 0.01, 1, 1], 3))  # ≈ 50
