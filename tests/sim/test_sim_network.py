"""Network delays between dispatcher and servers, and cancels that let a forward pass finish.

Checked against closed forms and hand-computed traces:
- constant delays a (out) and b (back) shift an uncoded run query for query by exactly a + b;
- iid random delays in front of an M/M/1 queue leave its input Poisson (displacement theorem), so the mean
  latency is 1/(mu - lambda) + E[out] + E[back], judged over independent replications;
- the dispatcher counts a task as live from the moment it is sent (join-shortest-queue sees tasks in flight);
- with cancel_in_service = finish_pass a cancelled task holds its server until its pass ends.
"""

from __future__ import annotations

import numpy as np
import pytest

from policies.codes import HOW
from sim import parse_config, simulate
from sim.api import run_plan
from sim.draws import Draws
from sim.plan import make_plan


def _mm1(net: dict | None, n: int = 4000, seed: int = 0):
    table = {"n_experts": 1, "r": 0, "n_queries": n, "warmup_fraction": 0.0, "policies": ["uncoded"],
             "traffic": {"kind": "poisson", "rate_per_ms": 0.5},
             "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}}}
    if net:
        table["network"] = net
    return simulate(parse_config(table), seed).records


def test_constant_delays_shift_every_query_by_their_sum():
    plain = _mm1(None)
    delayed = _mm1({"out": {"kind": "deterministic", "value_ms": 0.3},
                    "back": {"kind": "deterministic", "value_ms": 0.2}})
    np.testing.assert_allclose(delayed["latency_ms"].to_numpy(), plain["latency_ms"].to_numpy() + 0.5, atol=1e-9)


def test_random_delays_add_their_means_to_mm1():
    out = {"kind": "exponential", "mean_ms": 0.4}
    back = {"kind": "shifted_exponential", "shift_ms": 0.1, "mean_ms": 0.3}
    means = np.array([_mm1({"out": out, "back": back}, n=20_000, seed=s)["latency_ms"].iloc[2000:].mean()
                      for s in range(12)])
    want = 1 / (1.0 - 0.5) + 0.4 + (0.1 + 0.3)  # M/M/1 sojourn + E[out] + E[back]
    se = means.std(ddof=1) / np.sqrt(len(means))
    assert abs(means.mean() - want) < 4 * se + 1e-3, (means.mean(), want, se)
    assert se < 0.05  # the check has teeth: dropping either delay (0.4 each) is many SE away


def _trace_run(policy: dict, arrivals, models, factors, *, network=None, service=None, scale=None):
    n = len(arrivals)
    table = {"n_experts": 1, "r": 1, "policies": [policy],
             "traffic": {"kind": "trace", "trace_times_ms": list(arrivals), "trace_models": list(models)},
             "service": service or {"expert": {"kind": "deterministic", "value_ms": 1.0}}}
    if scale is not None:
        table["service"]["scale"] = scale
    if network is not None:
        table["network"] = network
    cfg = parse_config(table)
    half = np.full((n, 2), 0.5)
    draws = Draws(0, np.asarray(arrivals, float), np.asarray(models, np.int64), np.zeros(n, np.int64), half,
                  np.asarray(factors, float), half if cfg.network.out else None, half if cfg.network.back else None)
    return run_plan(make_plan(cfg, cfg.policies[0], draws), draws)


def test_jsq_counts_tasks_still_on_their_way():
    # two queries 0.05 ms apart, 0.1 ms out delay: when the second is dispatched the first has not reached
    # server 0 yet, but the dispatcher sent it there, so join-shortest-queue picks the replica
    out = _trace_run({"kind": "replication", "dispatch": "jsq"}, [0.0, 0.05], [0, 0], np.ones((2, 2)),
                     network={"out": {"kind": "deterministic", "value_ms": 0.1}})
    assert [int(m) for m in out.mask] == [1, 2]
    np.testing.assert_allclose(out.finish_ms, [1.1, 1.15])


def test_cancel_lets_the_pass_finish():
    # server 0 needs 1 ms per pass; the replica (scale 0.02) 0.02 ms. Query 0 straggles x10 on server 0 and is
    # hedged at 0.1 ms: the replica answers at 0.12 and cancels it. Query 1 arrives at 0.5.
    service = {"expert": {"kind": "deterministic", "value_ms": 1.0}}
    policy = {"kind": "hedged", "delay_ms": 0.1}
    factors = [[10.0, 1.0], [1.0, 1.0]]
    finish_pass = _trace_run(policy, [0.0, 0.5], [0, 0], factors, scale=[1.0, 0.02],
                             service=service | {"cancel_in_service": "finish_pass"})
    preempt = _trace_run(policy, [0.0, 0.5], [0, 0], factors, scale=[1.0, 0.02], service=dict(service))
    # finish_pass: server 0 stays on query 0's pass until 1.0; query 1 waits behind it, is hedged at 0.6 and
    # answered by the replica at 0.62, so its queued copy is dropped: 1.0 ms of cancelled work in all
    assert finish_pass.cancelled_ms[0] == pytest.approx(1.0)
    assert [HOW[h] for h in finish_pass.how] == ["hedge", "hedge"]
    np.testing.assert_allclose(finish_pass.finish_ms, [0.12, 0.62])
    # preempt: server 0 is freed at 0.12, starts query 1 at 0.5, which its hedge still beats at 0.62
    assert preempt.cancelled_ms[0] == pytest.approx(0.12 + 0.12)
    np.testing.assert_allclose(preempt.finish_ms, [0.12, 0.62])


def test_reference_engine_refuses_what_it_does_not_model():
    cfg = parse_config({"n_experts": 1, "r": 0, "n_queries": 10, "policies": ["uncoded"],
                        "traffic": {"kind": "poisson", "rate_per_ms": 0.5},
                        "network": {"out": {"kind": "deterministic", "value_ms": 0.1}}})
    with pytest.raises(NotImplementedError):
        simulate(cfg, 0, engine="reference")


def _shared(cores: float, n: int, seed: int, rate: float = 0.6):
    return simulate(parse_config({
        "n_experts": 2, "r": 0, "n_queries": n, "warmup_fraction": 0.1, "policies": ["uncoded"],
        "traffic": {"kind": "poisson", "rate_per_ms": rate},
        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}, "cores": cores}}), seed)


def test_two_servers_on_one_core_are_one_mm1_in_total():
    # exponential work and a core that always works at full rate while anything is queued: the total number of
    # tasks is an M/M/1 queue with the total rate, so by Little's law the mean latency is 1 / (mu - lambda)
    means = np.array([_shared(1.0, 20_000, s).summary["uncoded"]["mean_ms"] for s in range(10)])
    se = means.std(ddof=1) / np.sqrt(len(means))
    assert abs(means.mean() - 1 / (1 - 0.6)) < 4 * se + 1e-3, (means.mean(), se)
    # with a core each they are two independent M/M/1 queues at half the rate
    own = np.array([_shared(2.0, 20_000, s).summary["uncoded"]["mean_ms"] for s in range(10)])
    assert abs(own.mean() - 1 / (1 - 0.3)) < 4 * own.std(ddof=1) / np.sqrt(10) + 1e-3
    assert means.mean() > own.mean() + 10 * se


def test_shared_core_hand_trace():
    # one core, two servers, 1 ms of work each: A starts at 0 alone, B at 0.5; from 0.5 they share the core, so
    # A (0.5 ms left) ends at 1.5 and B (0.5 ms done by then) ends at 2.0
    cfg = parse_config({"n_experts": 2, "r": 0, "policies": ["uncoded"],
                        "traffic": {"kind": "trace", "trace_times_ms": [0.0, 0.5], "trace_models": [0, 1]},
                        "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "cores": 1.0}})
    draws = Draws(0, np.array([0.0, 0.5]), np.array([0, 1]), np.zeros(2, np.int64), np.full((2, 2), 0.5),
                  np.ones((2, 2)))
    out = run_plan(make_plan(cfg, cfg.policies[0], draws), draws)
    np.testing.assert_allclose(out.finish_ms, [1.5, 2.0])


@pytest.mark.parametrize("hold, finish", [("stall", [3.5, 2.0]), ("compute", [4.0, 2.5])])
def test_a_stalling_straggler_leaves_the_shared_core(hold, finish):
    # one core, two servers, 1 ms passes; A (server 0, t = 0) straggles x3, B (server 1) arrives at 0.5.
    # stall: A's pass ends at 1.5 (shared from 0.5), then it holds its server 2 ms off the core (ends 3.5) while
    # B finishes alone at 2.0. compute: A keeps its share for all 3 ms of work; B ends at 2.5, A at 4.0.
    cfg = parse_config({"n_experts": 2, "r": 0, "policies": ["uncoded"],
                        "traffic": {"kind": "trace", "trace_times_ms": [0.0, 0.5], "trace_models": [0, 1]},
                        "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "cores": 1.0},
                        "stragglers": {"hold": hold}})
    draws = Draws(0, np.array([0.0, 0.5]), np.array([0, 1]), np.zeros(2, np.int64), np.full((2, 2), 0.5),
                  np.array([[3.0, 1.0], [1.0, 1.0]]))
    out = run_plan(make_plan(cfg, cfg.policies[0], draws), draws)
    np.testing.assert_allclose(out.finish_ms, finish)
