"""A server's consecutive passes moving together (service.pass_correlation).

Each pass keeps its distribution; the normal score of its rank is rho x the previous pass's score on the same server
plus sqrt(1 - rho^2) x its own drawn score, rho read from how long the server sat idle in between. Checked on a hand
trace, and on long runs against what the rule implies, computed from the run's own outputs by an independent route
(ranks, scores and idle times rebuilt from the arrivals and the per-query work, not read from the engine).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import sim
from sim import parse_config
from sim.api import run_plan
from sim.config import SimConfigError
from sim.draws import Draws
from sim.plan import make_plan
from sim.reference import ReferenceEngine

ONE = {"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": 0.1}}
FOUR = {"kind": "empirical", "samples_ms": [1.0, 2.0, 3.0, 4.0]}


def _hand(corr, us):
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "service": {"expert": FOUR} | corr}
    cfg = parse_config(table | {"traffic": {"kind": "trace", "trace_times_ms": [0.0, 1.0, 20.0],
                                            "trace_models": [0, 0, 0]}})
    draws = Draws(0, np.array([0.0, 1.0, 20.0]), np.zeros(3, np.int64), np.zeros(3, np.int64),
                  np.array(us, float).reshape(3, 1), np.ones((3, 1)))
    return run_plan(make_plan(cfg, cfg.policies[0], draws), draws)


def test_hand_trace_the_second_pass_follows_the_first() -> None:
    # samples 1..4 ms. q0 (t = 0) draws the top rank (u in [0.75, 1): score z0 = ndtri(0.875) = 1.150), no pass
    # before it: 4 ms, done at 4. q1 (t = 1, queued) draws the bottom rank (score -1.150) and starts at 4, straight
    # on (idle 0 <= 1 ms: rho 0.6): z = 0.6 x 1.150 + 0.8 x (-1.150) = -0.230, Phi(z) = 0.409 -> rank 1 of 0..3:
    # 2 ms, done at 6 (independent: 1 ms, done at 5). q2 (t = 20, idle 14 ms > 1: rho 0) keeps its own 1 ms: 21.
    corr = {"pass_correlation": {"idle_ms": [1.0], "rho": [0.6]}}
    out = _hand(corr, [0.9, 0.1, 0.1])
    np.testing.assert_allclose(out.finish_ms, [4.0, 6.0, 21.0], atol=1e-9)
    np.testing.assert_allclose(_hand({}, [0.9, 0.1, 0.1]).finish_ms, [4.0, 5.0, 21.0], atol=1e-9)


def test_zero_rho_changes_nothing() -> None:
    base = {"n_experts": 2, "r": 1, "n_queries": 5000, "traffic": {"rate_per_ms": 0.5},
            "policies": ["uncoded", "replication", "coded"],
            "service": {"expert": {"kind": "empirical", "samples_ms": list(np.linspace(0.5, 3.0, 101))}}}
    corr = base | {"service": base["service"] | {"pass_correlation": {"idle_ms": [5.0], "rho": [0.0]}}}
    a, b = sim.simulate(base, seed=4), sim.simulate(corr, seed=4)
    for policy in ("uncoded", "replication", "coded"):
        np.testing.assert_array_equal(_rows(a, policy)["latency_ms"], _rows(b, policy)["latency_ms"])


def _rows(res, policy):
    return res.records[res.records["policy"] == policy]


def _one_server_run(corr, n=40_000, rate=0.2, seed=7, draws="server"):
    samples = stats.expon.ppf((np.arange(1000) + 0.5) / 1000)
    cfg = {"n_experts": 1, "r": 0, "n_queries": n, "warmup_fraction": 0.0, "policies": ["uncoded"],
           "traffic": {"rate_per_ms": rate}, "draws": draws,
           "service": {"expert": {"kind": "empirical", "samples_ms": samples.tolist()}, "pass_correlation": corr}}
    res = sim.simulate(cfg, seed=seed)
    frame = _rows(res, "uncoded")
    arrival = np.asarray(frame["arrival_ms"])
    work = np.asarray(frame["server_ms"])  # one task per query, no straggle: its pass
    order = np.argsort(arrival, kind="stable")
    arrival, work = arrival[order], work[order]
    # the server's FIFO queue rebuilt from arrivals and passes (Lindley): when each pass started and ended
    start, end = np.empty(len(work)), np.empty(len(work))
    free = -np.inf
    for k in range(len(work)):
        start[k] = max(arrival[k], free)
        end[k] = free = start[k] + work[k]
    idle = start[1:] - end[:-1]
    rank = np.searchsorted(samples, work * (1 - 1e-9))  # each pass's rank among the samples
    score = stats.norm.ppf((rank + 0.5) / len(samples))
    return samples, work, idle, score


@pytest.mark.parametrize("draws", ["server", "task"])
def test_the_scores_follow_the_rule_by_idle_time(draws) -> None:
    # rho 0.8 within 2 ms of idleness, 0.3 up to 10 ms, none beyond: the lag-1 correlation of the passes' scores,
    # by the idle time between them rebuilt independently, is each rho (sampling sd (1 - rho^2) / sqrt(pairs))
    _, work, idle, score = _one_server_run({"idle_ms": [2.0, 10.0], "rho": [0.8, 0.3]}, draws=draws)
    for lo, hi, rho in ((-1.0, 2.0, 0.8), (2.0, 10.0, 0.3), (10.0, np.inf, 0.0)):
        pick = (idle > lo) & (idle <= hi)
        n = int(pick.sum())
        assert n > 2000
        r = np.corrcoef(score[:-1][pick], score[1:][pick])[0, 1]
        assert abs(r - rho) < 5 * (1 - rho**2) / np.sqrt(n) + 0.01, (lo, hi, r, rho, n)


def _deciles_chi2(score):
    counts = np.bincount(np.minimum((stats.norm.cdf(score) * 10).astype(int), 9), minlength=10)
    return float(np.sum((counts - len(score) / 10) ** 2 / (len(score) / 10)))


def test_one_rho_for_every_idle_time_keeps_the_distribution_and_one_by_idle_time_leans_slow() -> None:
    # with one rho whatever the idle time the scores are a stationary AR(1): every pass is still drawn from the
    # samples (the deciles' chi-square within its 99.9 % point, times the variance inflation (1 + rho) / (1 - rho)
    # of a correlated sequence's counts). With rho highest for a pass that starts straight on, a slow pass (which
    # keeps the next task waiting, so that it starts straight on) pulls the next one slow more often than a fast
    # one does: the passes lean to the slow side (here the mean pass +10 % or more), as served passes do
    rho = 0.7
    samples, work, _, score = _one_server_run({"idle_ms": [1e9], "rho": [rho]})
    assert _deciles_chi2(score) < stats.chi2.ppf(0.999, 9) * (1 + rho) / (1 - rho)
    assert np.mean(work) == pytest.approx(np.mean(samples), rel=0.03)
    samples, work, _, score = _one_server_run({"idle_ms": [0.5], "rho": [0.9]})
    assert _deciles_chi2(score) > stats.chi2.ppf(0.999, 9) * (1 + 0.9) / (1 - 0.9)
    assert np.mean(work) > 1.1 * np.mean(samples)


def test_passes_that_move_together_queue_longer() -> None:
    # the same passes in runs: an M/G/1 queue at load 0.6 waits longer than with independent passes (whose mean
    # wait the Pollaczek-Khinchine formula gives: lam E[S^2] / (2 (1 - rho)) = 0.6 x 2 / 0.8 = 1.5 ms)
    samples = stats.expon.ppf((np.arange(1000) + 0.5) / 1000)
    lam, m1, m2 = 0.6, np.mean(samples), np.mean(samples**2)
    pk = lam * m2 / (2 * (1 - lam * m1))
    for corr, low, high in (({"idle_ms": [1.0], "rho": [0.0]}, 0.85, 1.15), ({"idle_ms": [1e6], "rho": [0.9]},
                                                                            1.5, np.inf)):
        res = sim.simulate({"n_experts": 1, "r": 0, "n_queries": 60_000, "warmup_fraction": 0.1,
                            "policies": ["uncoded"], "traffic": {"rate_per_ms": lam},
                            "service": {"expert": {"kind": "empirical", "samples_ms": samples.tolist()},
                                        "pass_correlation": corr}}, seed=11)
        frame = _rows(res, "uncoded")
        frame = frame[~frame["warmup"]]
        wait = float(np.mean(frame["latency_ms"] - frame["server_ms"]))
        assert low * pk < wait < high * pk, (corr, wait, pk)


@pytest.mark.parametrize("bad, says", [
    ({"idle_ms": [1.0, 2.0], "rho": [0.5]}, "rho values"),
    ({"idle_ms": [2.0, 1.0], "rho": [0.5, 0.2]}, "must increase"),
    ({"idle_ms": [1.0], "rho": [1.0]}, "less than 1"),
    ({"idle_ms": [float("nan")], "rho": [0.5]}, "finite"),
])
def test_bad_tables_are_refused(bad, says) -> None:
    with pytest.raises(SimConfigError, match=says):
        parse_config(ONE | {"service": {"expert": FOUR, "pass_correlation": bad}})


def test_needs_measured_passes_and_no_batching() -> None:
    with pytest.raises(SimConfigError, match="empirical"):
        parse_config(ONE | {"service": {"expert": {"kind": "exponential", "mean_ms": 1.0},
                                        "pass_correlation": {"idle_ms": [1.0], "rho": [0.5]}}})
    with pytest.raises(SimConfigError, match="max_batch"):
        parse_config(ONE | {"service": {"expert": FOUR, "max_batch": 4,
                                        "pass_correlation": {"idle_ms": [1.0], "rho": [0.5]}}})


def test_the_reference_engine_refuses_it() -> None:
    cfg = parse_config(ONE | {"n_queries": 10, "policies": ["uncoded"],
                              "service": {"expert": FOUR, "pass_correlation": {"idle_ms": [1.0], "rho": [0.5]}}})
    draws = sim.draw(cfg, 0)
    with pytest.raises(NotImplementedError, match="passes moving together"):
        ReferenceEngine(make_plan(cfg, cfg.policies[0], draws), draws)
