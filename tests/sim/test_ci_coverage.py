"""Confidence intervals checked against the truth they estimate, not against their own estimate.

The reference is an M/M/1 FIFO queue simulated here by Lindley's recursion (independent of the simulator):
started in steady state, consecutive sojourn times are strongly correlated but each is exponential with rate
mu - lambda, so every percentile is known exactly. Over R independent runs a 95 % interval must contain the
true value in 95 % of them, up to the binomial noise of R runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.stats import QUANTILES, across_replications, batch_ci, latency_summary

CONF = 0.95


def mm1_sojourn(rng: np.random.Generator, runs: int, n: int, lam: float, mu: float = 1.0) -> np.ndarray:
    """(n, runs) sojourn times of consecutive customers, each run started from the stationary waiting time."""
    rho = lam / mu
    wait = np.where(rng.random(runs) < rho, rng.exponential(1 / (mu - lam), runs), 0.0)
    service = rng.exponential(1 / mu, (n, runs))
    gaps = rng.exponential(1 / lam, (n, runs))
    out = np.empty((n, runs))
    for k in range(n):
        out[k] = wait + service[k]
        wait = np.maximum(0.0, out[k] - gaps[k])
    return out


def _tolerance(runs: int) -> float:
    return 4 * np.sqrt(CONF * (1 - CONF) / runs)


@pytest.fixture(scope="module")
def queue_runs():
    runs, n, lam = 300, 20_000, 0.3
    return mm1_sojourn(np.random.default_rng(11), runs, n, lam), lam


def test_latency_intervals_cover_the_true_percentiles_of_a_correlated_queue(queue_runs):
    x, lam = queue_runs
    runs = x.shape[1]
    truth = {"mean": 1 / (1 - lam), **{k: -np.log(1 - q / 100) / (1 - lam) for k, q in QUANTILES.items()}}
    covered = dict.fromkeys(truth, 0)
    for r in range(runs):
        s = latency_summary(x[:, r], 20, CONF)
        for key, true in truth.items():
            lo, hi = s[f"{key}_ms_lo"], s[f"{key}_ms_hi"]
            covered[key] += bool(lo <= true <= hi)
    rate = {k: v / runs for k, v in covered.items()}
    assert all(abs(v - CONF) < _tolerance(runs) for v in rate.values()), rate


def test_sectioning_the_far_tail_undercovers_where_the_cdf_scale_does_not(queue_runs):
    """Why the percentile method changed: the spread of per-batch p99.9 estimates (each resting on about one
    observation) understates the estimate's variance; the same check as above fails for it."""
    from scipy import stats as sps

    x, lam = queue_runs
    runs, b = x.shape[1], 20
    true = -np.log(1 - 0.999) / (1 - lam)
    t = sps.t.ppf(0.5 + CONF / 2, b - 1)
    old = new = 0
    for r in range(runs):
        est = np.percentile(x[:, r], 99.9)
        per = np.percentile(x[:, r].reshape(b, -1), 99.9, axis=1)
        half = t * per.std(ddof=1) / np.sqrt(b)
        old += est - half <= true <= est + half
        _, lo, hi = batch_ci(x[:, r], b, CONF, "p99.9")
        new += lo <= true <= hi
    assert old / runs < CONF - _tolerance(runs) < new / runs, (old / runs, new / runs)


def test_latency_intervals_never_go_below_zero_where_linear_ones_did():
    """Cases where the linear batch-means interval of the mean (one extreme latency among 400) and the
    sectioned median (11 fast and 9 slow stretches) reach below zero; ours stay positive, and a percentile's
    between measured latencies."""
    b = 20
    t = 2.093  # Student t, 19 degrees of freedom, 95 %
    spike = np.ones(400)
    spike[7] = 1000.0
    assert spike.mean() - t * spike.reshape(b, -1).mean(axis=1).std(ddof=1) / np.sqrt(b) < 0  # used to fail
    stretches = np.repeat(np.where(np.arange(b) % 2 & (np.arange(b) < 18), 10.0, 0.01), 20)
    per_median = np.median(stretches.reshape(b, -1), axis=1)
    assert np.median(stretches) - t * per_median.std(ddof=1) / np.sqrt(b) < 0  # used to fail
    for x in (spike, stretches):
        s = latency_summary(x, b, CONF)
        assert 0 < s["mean_ms_lo"] < s["mean_ms"] == x.mean() < s["mean_ms_hi"]
        for key, q in QUANTILES.items():
            assert s[f"{key}_ms"] == np.percentile(x, q)
            assert x.min() <= s[f"{key}_ms_lo"] <= s[f"{key}_ms"] <= s[f"{key}_ms_hi"] <= x.max(), key
    s = latency_summary(stretches, b, CONF)
    assert (s["p50_ms_lo"], s["p50_ms_hi"]) == (0.01, 10.0)  # half the stretches fast, half slow: either


def test_a_tail_the_run_cannot_bound_reaches_the_largest_measured_value():
    """20 batches of 50 and one extreme observation: p + h passes 1, so the upper end is the maximum."""
    x = np.ones(1000)
    x[500] = 100.0
    est, lo, hi = batch_ci(x, 20, CONF, "p99.9")
    assert est == np.percentile(x, 99.9) and lo == 1.0 and hi == 100.0


def test_data_that_can_be_negative_keep_the_linear_interval():
    x = np.array([-1.0, 1.0] * 50)
    est, lo, hi = batch_ci(x, 10, CONF)
    assert est == 0.0 and lo == -hi  # symmetric around the mean, as for any sign-indefinite sequence


def test_replication_intervals_cover_a_known_mean_and_stay_positive():
    rng = np.random.default_rng(5)
    experiments, reps, sigma = 2000, 10, 0.5
    true = np.exp(sigma**2 / 2)  # mean of a lognormal(0, sigma)
    hits = 0
    for _ in range(experiments):
        m, lo, hi = across_replications(rng.lognormal(0.0, sigma, reps), CONF)
        hits += lo <= true <= hi
        assert lo > 0
    assert abs(hits / experiments - CONF) < _tolerance(experiments), hits / experiments
    m, lo, hi = across_replications([0.1, 5.0, 0.2], CONF)
    assert 0 < lo < m < hi  # the linear interval would be (-5.4, 8.6)
    m, lo, hi = across_replications([-1.0, 1.0, 0.0], CONF)
    assert lo < 0 < hi
