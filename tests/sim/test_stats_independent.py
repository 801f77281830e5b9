"""sim.stats checked against computations that do not share its code: Student-t table values, np.percentile of
the measured records, and coverage frequencies whose tolerance follows from the number of repetitions.

The exact-value tests pin the method the module documents (non-overlapping batch means with a Student t on
batches − 1 degrees of freedom, on a log scale for positive data; percentiles by batch shares on the CDF scale
mapped back through the empirical quantile function; replications with R − 1): a change of method must change
them too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sim
from sim.stats import QUANTILES, across_replications, batch_ci, latency_summary

# Two-sided Student-t quantiles t_{(1+c)/2, dof} from a printed table (not from scipy).
T_975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105}
T_950_3 = 2.353363435


def _log_interval(est: float, half: float) -> tuple[float, float]:
    """The documented interval of a positive mean: est * exp(-/+ half / est) (delta method on a log scale)."""
    return est * math.exp(-half / est), est * math.exp(half / est)


def test_batch_means_half_width_is_t_times_standard_error_of_the_batch_means():
    x = np.repeat([1.0, 2.0, 3.0, 4.0], 5)  # four batches of five whose means are 1, 2, 3, 4
    est, lo, hi = batch_ci(x, 4, 0.95)
    sd = math.sqrt(sum((m - 2.5) ** 2 for m in (1, 2, 3, 4)) / 3)  # sample sd of the batch means (n - 1)
    half = T_975[3] * sd / math.sqrt(4)
    assert est == pytest.approx(2.5)
    assert (lo, hi) == pytest.approx(_log_interval(2.5, half), rel=1e-8)  # positive data: log scale
    # data that can be negative get the linear interval; the confidence level is honoured (90% uses t_0.95)
    est, lo, hi = batch_ci(x - 2.5, 4, 0.95)
    assert est == pytest.approx(0.0) and (lo, hi) == pytest.approx((-half, half), rel=1e-8)
    _, lo90, hi90 = batch_ci(x - 2.5, 4, 0.90)
    assert (hi90 - lo90) / 2 == pytest.approx(T_950_3 * sd / 2, rel=1e-8)


def test_batch_percentile_uses_all_data_for_the_estimate_and_batch_shares_for_the_width():
    x = np.concatenate([10.0 * k + np.arange(5.0) for k in range(4)])  # batches 0-4, 10-14, 20-24, 30-34
    est, lo, hi = batch_ci(x, 4, 0.95, "p50")
    assert est == 17.0  # median of the 20 values: (14 + 20) / 2
    # shares of each batch at or below 17: 1, 1, 0, 0 -> sd sqrt(1/3); half-width in probability
    half = T_975[3] * math.sqrt(1 / 3) / 2
    assert half > 0.5  # so [0.5 - half, 0.5 + half] is clipped to [0, 1]: the smallest and largest values
    assert (lo, hi) == (0.0, 34.0)
    # a narrower case: shares 0.6, 0.4, 0.6, 0.4 around the median of interleaved batches
    y = np.array([1, 2, 3, 8, 9, 4, 5, 6, 7, 10, 1.5, 2.5, 3.5, 8.5, 9.5, 4.5, 5.5, 6.5, 7.5, 10.5])
    est, lo, hi = batch_ci(y, 4, 0.95, "p50")
    shares = [(b <= est).mean() for b in y.reshape(4, 5)]
    h = T_975[3] * float(np.std(shares, ddof=1)) / 2
    assert (lo, hi) == pytest.approx((np.percentile(y, 100 * (0.5 - h)), np.percentile(y, 100 * (0.5 + h))))


def test_batch_ci_small_and_degenerate_inputs():
    # more batches than values: one value per batch, t on len - 1 degrees of freedom
    est, lo, hi = batch_ci(np.array([1.0, 2.0, 3.0]), 20, 0.95)
    assert est == 2.0 and (lo, hi) == pytest.approx(_log_interval(2.0, T_975[2] / math.sqrt(3)), rel=1e-8)
    # one batch (or one value) gives an estimate but no interval
    for x, b in ((np.array([1.0, 2.0, 3.0]), 1), (np.array([5.0]), 20)):
        est, lo, hi = batch_ci(x, b, 0.95)
        assert est == pytest.approx(np.mean(x)) and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in batch_ci(np.array([]), 20, 0.95))
    # two batches are enough for an interval
    est, lo, hi = batch_ci(np.array([1.0, 3.0]), 2, 0.95)
    assert (lo, hi) == pytest.approx(_log_interval(2.0, T_975[1]), rel=1e-8)


def test_across_replications_is_the_student_t_interval_of_the_replication_means():
    m, lo, hi = across_replications([1, 2, 3, 4, 5], 0.95)
    half = T_975[4] * math.sqrt(2.5) / math.sqrt(5)
    assert m == 3.0 and (lo, hi) == pytest.approx(_log_interval(3.0, half), rel=1e-8)
    m, lo, hi = across_replications([-1, 0, 1, 2, 3], 0.95)  # can be negative: linear
    assert m == 1.0 and (lo, hi) == pytest.approx((1 - half, 1 + half), rel=1e-8)
    m, lo, hi = across_replications([1.0, 3.0], 0.95)  # two replications: t on one degree of freedom
    assert (m, lo, hi) == pytest.approx((2.0, *_log_interval(2.0, T_975[1])), rel=1e-8)
    m, lo, hi = across_replications([4.0], 0.95)
    assert m == 4.0 and math.isnan(lo) and math.isnan(hi)


def test_latency_summary_estimates_are_numpys_mean_and_percentiles():
    x = np.random.default_rng(0).permutation(1000).astype(float)
    s = latency_summary(x, 20, 0.95)
    assert set(s) == {f"{k}_ms{e}" for k in ("mean", *QUANTILES) for e in ("", "_lo", "_hi")}
    assert s["mean_ms"] == pytest.approx(499.5)
    for key, q in (("p50", 50), ("p95", 95), ("p99", 99), ("p999", 99.9)):
        assert s[f"{key}_ms"] == pytest.approx(np.percentile(x, q), rel=1e-12), key
        # and each interval is that statistic's own batch interval, not another statistic's
        assert (s[f"{key}_ms_lo"], s[f"{key}_ms_hi"]) == pytest.approx(batch_ci(x, 20, 0.95, f"p{q}")[1:])
    assert s["p99_ms"] != s["p999_ms"] and s["p95_ms"] != s["p99_ms"]


def test_percentile_interval_covers_the_true_p99_at_its_nominal_rate():
    """Exponential(1) latencies: p99 = ln 100. The 95% interval must cover it in about 95% of repetitions; the
    tolerance is 4 binomial standard errors of the observed frequency, so a correct method fails ~1e-4 times."""
    rng = np.random.default_rng(7)
    reps, n, truth = 300, 20_000, math.log(100)
    cover = sum(lo <= truth <= hi for _, lo, hi in (batch_ci(rng.exponential(size=n), 20, 0.95, "p99")
                                                  for _ in range(reps)))
    assert abs(cover / reps - 0.95) < 4 * math.sqrt(0.95 * 0.05 / reps), cover / reps


def test_simulated_summary_is_computed_from_the_measured_records_in_arrival_order():
    """The summary's mean and percentiles against numpy on the records (warm-up excluded); its intervals are
    the batch intervals of the records in arrival order (sorting, or keeping the warm-up, changes them)."""
    cfg = {"n_experts": 2, "r": 1, "traffic": {"rate_per_ms": 1.2}, "stragglers": {"p": 0.05, "slowdown": 8.0},
           "n_queries": 6_000, "policies": ["uncoded", "coded"]}
    res = sim.simulate(cfg, seed=5)
    for policy, s in res.summary.items():
        rows = res.records[res.records["policy"] == policy].sort_values("arrival_ms")
        x = rows.loc[~rows["warmup"], "latency_ms"].to_numpy()
        assert s["n_measured"] == len(x) == 6_000 - int(0.1 * 6_000)
        assert s["mean_ms"] == pytest.approx(x.mean(), rel=1e-12)
        for key, q in QUANTILES.items():
            assert s[f"{key}_ms"] == pytest.approx(np.percentile(x, q), rel=1e-12), (policy, key)
            assert (s[f"{key}_ms_lo"], s[f"{key}_ms_hi"]) == pytest.approx(batch_ci(x, 20, 0.95, f"p{q}")[1:])
        assert (s["mean_ms_lo"], s["mean_ms_hi"]) == pytest.approx(batch_ci(x, 20, 0.95)[1:])
