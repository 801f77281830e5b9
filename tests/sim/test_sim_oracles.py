"""Statistical oracle tests against queueing theory.

Every tolerance is a confidence interval computed from the run itself (batch means over 30 batches at
99.9%, or i.i.d. CIs at zero load), and each check also demands the interval be narrow enough to be a test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from sim_testutil import CONF, check_stat, iid_mean_ci, measured

import sim
from sim.stats import batch_ci


def _run(cfg: dict, seed: int = 0) -> sim.SimResult:
    return sim.simulate(cfg, seed=seed)


# ---------------------------------------------------------------------------------------------- M/M/1
def test_mm1_mean_and_tail_percentiles():
    lam, mu = 0.7, 1.0
    res = _run({"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": lam}, "n_queries": 200_000, "policies": ["uncoded"]})
    x = measured(res, "uncoded")
    # sojourn time of M/M/1 FIFO is Exp(mu - lam)
    check_stat(x, 1 / (mu - lam))
    check_stat(x, math.log(1 / 0.05) / (mu - lam), "p95")
    check_stat(x, math.log(1 / 0.01) / (mu - lam), "p99")
    s = res.summary["uncoded"]
    assert s["utilization_pct"] == pytest.approx(lam / mu * 100, abs=2)
    # the summary reports this run's measured queries (not an interval around its own estimate, which cannot fail)
    assert s["mean_ms"] == pytest.approx(x.mean(), rel=1e-12)
    assert s["p99_ms"] == pytest.approx(np.percentile(x, 99), rel=1e-12)
    assert s["p999_ms"] == pytest.approx(np.percentile(x, 99.9), rel=1e-12)


# ---------------------------------------------------------------------------------------------- M/M/c
def _erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load a = lam/mu."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def test_mmc_pooled_replicas_match_erlang_c():
    """Three servers holding the same model and sharing one FIFO queue (dispatch='pool') form M/M/3."""
    c, lam, mu = 3, 2.4, 1.0
    res = _run(
        {
            "n_experts": 1,
            "r": c - 1,
            "traffic": {"rate_per_ms": lam},
            "n_queries": 200_000,
            "policies": [{"kind": "replication", "dispatch": "pool"}],
        }
    )
    x = measured(res, "replication-pool")
    pw = _erlang_c(c, lam / mu)
    a = c * mu - lam
    check_stat(x, 1 / mu + pw / a)

    # sojourn tail: P(T > t) = (1 - C) e^{-mu t} + C (a e^{-mu t} - mu e^{-a t}) / (a - mu)
    def tail(t: float) -> float:
        return (1 - pw) * math.exp(-mu * t) + pw * (a * math.exp(-mu * t) - mu * math.exp(-a * t)) / (a - mu)

    p95 = optimize.brentq(lambda t: tail(t) - 0.05, 0.0, 100.0)
    check_stat(x, p95, "p95")


# ------------------------------------------------------------------------------------ M/D/1 and M/G/1
def _pk_sojourn(lam: float, m1: float, m2: float) -> float:
    """Pollaczek-Khinchine mean sojourn time: E[S] + lam E[S^2] / (2 (1 - rho))."""
    return m1 + lam * m2 / (2 * (1 - lam * m1))


def test_md1_pollaczek_khinchine():
    lam, d = 0.8, 1.0
    res = _run(
        {
            "n_experts": 1,
            "r": 0,
            "traffic": {"rate_per_ms": lam},
            "service": {"expert": {"kind": "deterministic", "value_ms": d}},
            "n_queries": 200_000,
            "policies": ["uncoded"],
        }
    )
    check_stat(measured(res, "uncoded"), _pk_sojourn(lam, d, d * d))


@pytest.mark.parametrize(
    "service, slowdown",
    [
        ({"kind": "exponential", "mean_ms": 1.0}, 4.0),
        ({"kind": "lognormal", "mean_ms": 0.8, "sigma": 0.5}, {"kind": "pareto", "alpha": 4.5, "scale": 2.0}),
    ],
    ids=["exp+fixed-slowdown", "lognormal+pareto-slowdown"],
)
def test_mg1_with_straggler_mix_pollaczek_khinchine(service, slowdown):
    p, lam = 0.1, 0.5
    cfg = {
        "n_experts": 1,
        "r": 0,
        "traffic": {"rate_per_ms": lam},
        "service": {"expert": service},
        "stragglers": {"p": p, "slowdown": slowdown},
        "n_queries": 200_000,
        "policies": ["uncoded"],
    }
    conf = sim.parse_config(cfg)
    dist, st = conf.service.expert, conf.stragglers
    m1 = dist.mean() * st.task_factor_mean()
    m2 = dist.second_moment() * st.task_factor_second_moment()
    check_stat(measured(_run(cfg, seed=2), "uncoded"), _pk_sojourn(lam, m1, m2))


# ------------------------------------------------------------------------------------------ fork-join
def test_two_server_fork_join_flatto_hahn():
    """Ensemble queries on 2 exponential experts: E[T] = (12 - rho) / 8 / (mu - lam) (Flatto-Hahn; exact
    mean due to Nelson-Tantawi)."""
    lam, mu = 0.5, 1.0
    res = _run(
        {
            "n_experts": 2,
            "r": 0,
            "traffic": {"ensemble_rate_per_ms": lam},
            "n_queries": 200_000,
            "policies": ["uncoded"],
        }
    )
    check_stat(measured(res, "uncoded"), (12 - lam / mu) / 8 / (mu - lam))


@pytest.mark.parametrize("n,k,lam", [(3, 2, 0.8), (4, 2, 1.2)])
def test_nk_fork_join_with_cancellation_within_joshi_liu_soljanin_bounds(n, k, lam):
    """Coded ensemble queries: sent to all n = N + r servers, done at the first k = N, rest cancelled."""
    mu = 1.0
    res = _run(
        {
            "n_experts": k,
            "r": n - k,
            "traffic": {"ensemble_rate_per_ms": lam},
            "n_queries": 100_000,
            "policies": ["coded"],
        }
    )
    x = measured(res, "coded")
    lower = sum(1 / ((n - j) * mu - lam) for j in range(k))
    h1 = sum(1 / j for j in range(n - k + 1, n + 1))  # E[S_k:n] * mu
    h2 = sum(1 / j**2 for j in range(n - k + 1, n + 1))  # Var[S_k:n] * mu^2
    upper = h1 / mu + lam * (h2 + h1**2) / (2 * mu**2 * (1 - lam * h1 / mu))  # split-merge M/G/1
    est, lo, hi = batch_ci(x, 30, CONF)
    assert hi - lo < 0.1 * (upper - lower) + 0.05 * est
    assert lower <= hi and lo <= upper, f"E[T]={est:.4f} [{lo:.4f},{hi:.4f}] outside [{lower:.4f},{upper:.4f}]"
    # cancellation: each query runs at most n tasks and at least k of them in full
    s = res.summary["coded"]
    assert k / mu * 0.9 < s["server_ms_per_query"] < n / mu


# ------------------------------------------------------------------------------------------ zero load
def _zero_load(cfg: dict, n: int = 40_000, model: int = 0, gap_ms: float = 200.0) -> sim.SimResult:
    """Queries so far apart that none ever waits: latency is the pure redundancy race."""
    tr = {"kind": "trace", "trace_times_ms": (np.arange(n) * gap_ms).tolist(), "trace_models": [model] * n}
    return sim.simulate(cfg | {"traffic": tr, "warmup_fraction": 0.0}, seed=4)


def _check_iid(x: np.ndarray, truth: float) -> None:
    m, half = iid_mean_ci(x)
    assert half < 0.03 * truth
    assert abs(m - truth) <= half, f"zero-load mean {m:.5f} +- {half:.4f} vs closed form {truth:.5f}"


@pytest.mark.parametrize("d", [0.3, 1.0])
def test_hedged_zero_load_closed_form(d):
    """T = min(S1, d + S2), S ~ Exp(mu): E[T] = (1 - e^{-mu d}) / mu + e^{-mu d} / (2 mu);
    P(T > t) = e^{-mu t} e^{-mu (t - d)} for t > d."""
    mu = 1.0
    res = _zero_load({"n_experts": 1, "r": 1, "policies": [{"kind": "hedged", "delay_ms": d}]})
    x = measured(res, "hedged")
    _check_iid(x, (1 - math.exp(-mu * d)) / mu + math.exp(-mu * d) / (2 * mu))
    t = d + 1.0
    _check_iid((x > t).astype(float) + 1.0, 1.0 + math.exp(-mu * t - mu * (t - d)))  # shift avoids truth ~ 0
    hedge_pct = res.summary["hedged"]["hedge_pct"]
    # the hedge wins iff S1 > d + S2: probability e^{-mu d} / 2
    assert abs(hedge_pct / 100 - math.exp(-mu * d) / 2) < 4 * math.sqrt(0.25 / len(x))


@pytest.mark.parametrize("n_exp", [2, 3])
def test_coded_redundant_zero_load_closed_form(n_exp):
    """T = min(S_i, max of the N others (N-1 experts + coded)): E[T] = N / ((N + 1) mu); decoded w.p. 1/(N+1)."""
    mu = 1.0
    res = _zero_load({"n_experts": n_exp, "r": 1, "policies": ["coded"]})
    x = measured(res, "coded")
    _check_iid(x, n_exp / ((n_exp + 1) * mu))
    dec = res.summary["coded"]["decoded_pct"] / 100
    assert abs(dec - 1 / (n_exp + 1)) < 4 * math.sqrt(0.25 / len(x))


def test_coded_hedged_zero_load_closed_form():
    """T = min(S_i, d + max of N others): E[T] = (1 - e^{-mu d}) / mu + e^{-mu d} N / ((N + 1) mu)."""
    mu, d, n_exp = 1.0, 0.5, 2
    res = _zero_load({"n_experts": n_exp, "r": 1, "policies": [{"kind": "coded", "dispatch": "hedged", "delay_ms": d}]})
    x = measured(res, "coded-hedged")
    _check_iid(x, (1 - math.exp(-mu * d)) / mu + math.exp(-mu * d) * n_exp / ((n_exp + 1) * mu))


def test_coded_ensemble_zero_load_is_kth_order_statistic():
    """Ensemble over N + r coded servers: E[T] = E[S_{N:N+r}] = sum_{j=r+1}^{N+r} 1/(j mu)."""
    n_exp, r = 3, 2
    res = _zero_load({"n_experts": n_exp, "r": r, "policies": ["coded", "uncoded"]}, model=-1)
    _check_iid(measured(res, "coded"), sum(1 / j for j in range(r + 1, n_exp + r + 1)))
    _check_iid(measured(res, "uncoded"), sum(1 / j for j in range(1, n_exp + 1)))


# ------------------------------------------------------------------------------------ capacity regions
def _drift(res: sim.SimResult, policy: str, model: int | None = None) -> float:
    """Latency growth per ms of arrival time, from the last 5% of queries (0 for a stable queue)."""
    r = res.records
    r = r[r["policy"] == policy]
    if model is not None:
        r = r[r["model"] == model]
    tail = r.iloc[int(0.95 * len(r)) :]
    return float((tail["latency_ms"] / tail["arrival_ms"]).mean())


def _capacity_run(lam_a: float, lam_b: float, n: int = 60_000) -> tuple[sim.SimResult, float]:
    lam = lam_a + lam_b
    cfg = {
        "n_experts": 2,
        "r": 1,
        "traffic": {"rates_per_ms": [lam_a, lam_b]},
        "n_queries": n,
        "policies": [
            {"kind": "coded", "dispatch": "sed"},
            {"kind": "replication", "dispatch": "jsq", "replica_of": [0]},
            "uncoded",
        ],
    }
    res = sim.simulate(cfg, seed=8)
    horizon = float(res.draws.arrival_ms[-1])
    # a queue's work is a random walk with variance rate lam E[S^2] = 2 lam: 4 sigma of its slope estimate
    return res, 4 * math.sqrt(2 * lam / horizon)


@pytest.mark.parametrize("lam_a,lam_b", [(1.8, 0.0), (1.35, 0.45), (0.9, 0.9)])
def test_coded_a_b_aplusb_stable_inside_2mu(lam_a, lam_b):
    """{A, B, A+B} with shortest-expected-delay dispatch stays stable for lam_A + lam_B = 0.9 * 2 mu."""
    res, tol = _capacity_run(lam_a, lam_b)
    assert abs(_drift(res, "coded-sed")) < tol
    if lam_a > 1.0:  # the same load without the coded server overloads expert A: the check can fail
        assert _drift(res, "uncoded", 0) > (lam_a - 1.0) - tol


def test_replication_a_a_b_unstable_once_lam_b_exceeds_mu():
    """{A, A, B}: B has one server, so lam_B = 1.2 mu grows its latency at rate rho_B - 1 = 0.2; coded
    {A, B, A+B} absorbs the same load."""
    lam_a, lam_b = 0.6, 1.2
    res, tol = _capacity_run(lam_a, lam_b)
    assert abs(_drift(res, "replication-jsq", 1) - (lam_b - 1.0)) < tol
    assert abs(_drift(res, "coded-sed")) < tol
