"""A server's work after its output left (service.after_ms): it holds the server, not the answer.

A served task's output is sent before the server has finished with it: the send itself, reading the socket for the
next task and being scheduled again follow. The answer is not delayed by that work; the next task on the same
server is. Checked on hand traces, against the M/G/1 waiting time with the work after counted in the server's
occupation but not in the latency, and on the capacity the layout and the load conversion read.
"""

from __future__ import annotations

import numpy as np
import pytest
from sim_testutil import check_stat, measured

import sim
from sim import PolicySpec, parse_config
from sim.layout import layout
from tests.sim.test_sim_slicing import _trace

PASS2 = {"kind": "deterministic", "value_ms": 2.0}


def test_the_answer_leaves_before_the_work_after_it_and_the_next_task_waits_it_out() -> None:
    # one server, 2 ms pass + 0.3 before the output + 0.5 after it. Query 0 (t = 0) answers at 2.3; query 1
    # (t = 0.1, queued) starts once the work after is done, at 2.8, and answers at 5.1; query 2 (t = 5.4, 0.3 ms
    # after the server's last output) waits the 0.2 left and answers at 5.6 + 2.3 = 7.9; query 3 (t = 20, long
    # idle) starts at once: 22.3
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"],
             "service": {"expert": PASS2, "overhead_ms": 0.3, "after_ms": 0.5}}
    out = _trace(table, [0.0, 0.1, 5.4, 20.0], [0, 0, 0, 0], np.ones((4, 1)))
    np.testing.assert_allclose(out.finish_ms, [2.3, 5.1, 7.9, 22.3], atol=1e-9)


def test_without_work_after_the_trace_is_unchanged() -> None:
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "service": {"expert": PASS2, "overhead_ms": 0.3}}
    out = _trace(table, [0.0, 0.1, 5.4], [0, 0, 0], np.ones((3, 1)))
    np.testing.assert_allclose(out.finish_ms, [2.3, 4.6, 7.7], atol=1e-9)


def test_a_straggle_does_not_stretch_the_work_after() -> None:
    # the straggler (x3 of its 2 ms pass, held as the pass as it ran) is query 1, which starts 0.5 ms late
    # behind query 0's work after: its pass runs 2.8 .. 8.8 (+0.3 -> answers 9.1); the 0.5 it waited out is not
    # stretched (x3 of 2.5 would answer at 10.1)
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "stragglers": {"extra_of": "pass"},
             "service": {"expert": PASS2, "overhead_ms": 0.3, "after_ms": 0.5}}
    out = _trace(table, [0.0, 0.1], [0, 0], np.array([[1.0], [3.0]]))
    np.testing.assert_allclose(out.finish_ms, [2.3, 9.1], atol=1e-9)


def test_on_a_shared_core_the_work_after_computes_there() -> None:
    # one core shared as a fluid by two servers. A (server 0, t = 0): 2 ms + 0.3 before; B (server 1, t = 0) a x3
    # straggler: 6 + 0.3. Both at half speed until A is done at 4.6 (B has 4.0 left). C (server 0, t = 4.6) first
    # does A's 0.5 after, as work beside B: 2.8 ms of work at half speed -> 4.6 + 5.6 = 10.2 (a wait off the
    # cores would let B run alone meanwhile and answer C at 9.7); B then has 1.2 left, alone: 11.4
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"],
             "service": {"expert": PASS2, "overhead_ms": 0.3, "after_ms": 0.5, "cores": 1.0}}
    out = _trace(table, [0.0, 0.0, 4.6], [0, 1, 0], np.array([[1.0, 1.0], [1.0, 3.0], [1.0, 1.0]]))
    np.testing.assert_allclose(out.finish_ms, [4.6, 11.4, 10.2], atol=1e-9)


@pytest.mark.parametrize("after", [0.4, 0.0])
def test_mg1_the_work_after_waits_like_service_and_is_not_in_the_latency(after) -> None:
    # exponential pass X (mean 1) + c before the output + a after it: the server is an M/G/1 queue of service
    # S = X + c + a (a task arriving during the work after waits its rest, exactly as for a task in service), and
    # a query's latency is its wait + X + c. Pollaczek-Khinchine: W = lam E[S^2] / (2 (1 - lam E[S]))
    lam, c = 0.4, 0.2
    cfg = {"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": lam}, "n_queries": 200_000, "policies": ["uncoded"],
           "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}, "overhead_ms": c, "after_ms": after}}
    k = c + after
    m1, m2 = 1.0 + k, 2.0 + 2 * k + k * k
    check_stat(measured(sim.simulate(cfg, seed=5), "uncoded"), lam * m2 / (2 * (1 - lam * m1)) + 1.0 + c)


def test_the_capacity_counts_the_work_after() -> None:
    # 1 ms mean pass + 0.25 before + 0.5 after: a server is taken 1.75 ms per task
    cfg = parse_config({"n_experts": 2, "r": 1, "policies": ["uncoded"], "n_queries": 10,
                        "traffic": {"rate_per_ms": 0.1},
                        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}, "overhead_ms": 0.25,
                                    "after_ms": 0.5}})
    assert layout(cfg, PolicySpec(kind="uncoded")).mean_ms == pytest.approx((1.75, 1.75, 1.75))
    assert cfg.service.beside_pass_ms == pytest.approx(0.75)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_bad_work_after_is_one_line(value) -> None:
    with pytest.raises(sim.SimConfigError) as info:
        parse_config({"n_experts": 1, "r": 0, "policies": ["uncoded"], "n_queries": 10,
                      "traffic": {"rate_per_ms": 0.1}, "service": {"after_ms": value}})
    assert "after_ms" in str(info.value) and "\n" not in str(info.value)


def test_work_after_with_batching_is_refused() -> None:
    with pytest.raises(sim.SimConfigError) as info:
        parse_config({"n_experts": 1, "r": 0, "policies": ["uncoded"], "n_queries": 10,
                      "traffic": {"rate_per_ms": 0.1}, "service": {"after_ms": 0.5, "max_batch": 4}})
    assert "after_ms" in str(info.value)


def test_the_reference_engine_refuses_work_after_an_output() -> None:
    cfg = parse_config({"n_experts": 1, "r": 0, "n_queries": 10, "policies": ["uncoded"],
                        "traffic": {"kind": "poisson", "rate_per_ms": 0.5}, "service": {"after_ms": 0.2}})
    with pytest.raises(NotImplementedError, match="after its output"):
        sim.simulate(cfg, 0, engine="reference")
