"""Per-task overhead (service.overhead_ms): work beside the pass that every task does and no straggle stretches.

Hand traces on written draws, a Pollaczek-Khinchine check with the overhead in the service moments, and the
capacity the layout reads. A served straggler in the testbed is held (f - 1) x its forward pass; the server's
bookkeeping around the pass (read the task, send the output) is the same for a straggler as for any task.
"""

from __future__ import annotations

import numpy as np
import pytest
from sim_testutil import check_stat, measured

import sim
from sim import PolicySpec, parse_config
from sim.layout import _cores_problem, layout
from tests.sim.test_sim_slicing import _trace

PASS = {"kind": "deterministic", "value_ms": 1.0}
PASS2 = {"kind": "deterministic", "value_ms": 2.0}  # a pass of 2 ms: x / pass and x * pass differ
WAKE = {"idle_ms": [2.0, 6.0], "extra_ms": [0.5, 1.0]}


@pytest.mark.parametrize("extra_of", ["draw", "pass"])
def test_a_straggle_does_not_stretch_the_overhead(extra_of) -> None:
    # one server, a 2 ms pass + 0.5 ms beside it. Query 0 (t = 0) straggles x3: 6 + 0.5 = 6.5 (not 2.5 x 3 = 7.5);
    # query 1 (t = 0.1) waits for it and takes 2 + 0.5 -> 9.0; both ways of stretching agree without a wake-up
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "stragglers": {"extra_of": extra_of},
             "service": {"expert": PASS2, "overhead_ms": 0.5}}
    out = _trace(table, [0.0, 0.1], [0, 0], np.array([[3.0], [1.0]]))
    np.testing.assert_allclose(out.finish_ms, [6.5, 9.0], atol=1e-9)
    np.testing.assert_allclose(out.busy_ms, [9.0], atol=1e-9)


@pytest.mark.parametrize("extra_of, finish", [("draw", 5.0 + 6.0 + 0.875 + 0.5),
                                              ("pass", 5.0 + (2.0 + 0.875) * 3.0 + 0.5)])
def test_the_woken_pass_is_stretched_and_the_overhead_is_not(extra_of, finish) -> None:
    # idle 5 ms before t = 5: the 2 ms pass computes 0.875 ms longer (WAKE); a x3 straggle of the pass as it ran
    # stretches 2.875 ms, of the draw only the drawn 2 ms; the 0.5 ms overhead is added once either way
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "stragglers": {"extra_of": extra_of},
             "service": {"expert": PASS2, "wake": WAKE, "overhead_ms": 0.5}}
    out = _trace(table, [5.0], [0], np.array([[3.0]]))
    np.testing.assert_allclose(out.finish_ms, [finish], atol=1e-9)


def test_a_stall_follows_the_pass_share_of_the_wall_time() -> None:
    # one core, quantum 0.4 ms, every task 2 ms of pass + 0.5 ms of overhead on the core. A (server 0, t = 1)
    # straggles x3 held as a stall; B (server 1, t = 1.2) does not. Round robin in 0.4 ms turns from t = 1: after
    # six turns each, A has 0.1 ms left and finishes at 5.9 (its 2.5 ms of work took 4.9 ms of wall time, of which
    # the pass's share is 2 / 2.5): A stalls 2 x 4.9 x 0.8 = 7.84 ms -> 13.74; B finishes its last 0.1 -> 6.0
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "stragglers": {"hold": "stall", "extra_of": "pass"},
             "service": {"expert": PASS2, "cores": 1.0, "quantum_ms": 0.4, "overhead_ms": 0.5}}
    out = _trace(table, [1.0, 1.2], [0, 1], np.array([[3.0, 1.0], [1.0, 1.0]]))
    np.testing.assert_allclose(out.finish_ms, [13.74, 6.0], atol=1e-9)
    np.testing.assert_allclose(out.busy_ms, [12.74, 4.8], atol=1e-9)


@pytest.mark.parametrize("cancel, replica_busy", [("finish_pass", 2.5), ("preempt", 2.0)])
def test_a_cancelled_pass_ends_with_its_overhead(cancel, replica_busy) -> None:
    # hedged at 0.5 ms: expert 0 answers at 5 + 2.5. The replica's copy (sent at 5.5) straggles x3 and is
    # cancelled at 7.5: finishing its pass it holds its server pass + overhead (2.5 ms, to 8.0), preempted 2.0 ms
    table = {"n_experts": 1, "r": 1, "policies": [{"kind": "hedged", "delay_ms": 0.5}],
             "service": {"expert": PASS2, "overhead_ms": 0.5, "cancel_in_service": cancel}}
    out = _trace(table, [5.0], [0], np.array([[1.0, 3.0]]))
    np.testing.assert_allclose(out.finish_ms, [7.5], atol=1e-9)
    np.testing.assert_allclose(out.busy_ms, [2.5, replica_busy], atol=1e-9)


def test_the_layout_counts_the_overhead_once_per_task() -> None:
    # mean pass 1 ms, p = 0.5 of tasks x3: 2 ms a task + 0.5 beside it
    cfg = parse_config({"n_experts": 2, "r": 1, "policies": ["uncoded"], "n_queries": 10,
                        "traffic": {"rate_per_ms": 0.1}, "stragglers": {"p": 0.5, "slowdown": 3.0},
                        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}, "overhead_ms": 0.5}})
    assert layout(cfg, PolicySpec(kind="uncoded")).mean_ms == pytest.approx((2.5, 2.5, 2.5))


@pytest.mark.parametrize("overhead, fits", [(0.5, False), (0.0, True)])
def test_the_overhead_is_work_on_the_shared_cores(overhead, fits) -> None:
    # one shared core, stragglers held as stalls (off the cores): 0.8 queries/ms x (1 ms pass + overhead) of
    # work: 0.8 core without an overhead, 1.2 with 0.5 ms of it -> more than the core
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "n_queries": 10, "traffic": {"rate_per_ms": 0.8},
             "stragglers": {"p": 0.5, "slowdown": 3.0, "hold": "stall"},
             "service": {"expert": PASS, "cores": 1.0, "overhead_ms": overhead}}
    cfg = parse_config(table)
    assert (_cores_problem(cfg, cfg.policies[0], layout(cfg, cfg.policies[0])) is None) == fits


def test_mg1_with_overhead_pollaczek_khinchine() -> None:
    # S = X f + c with X ~ Exp(1), f = 5 w.p. 0.2 (else 1), c = 0.5: E[S] = 1.8 + 0.5,
    # E[S^2] = E[X^2] E[f^2] + 2 c E[X] E[f] + c^2 = 2 x 5.8 + 1.8 + 0.25
    lam, c = 0.3, 0.5
    cfg = {"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": lam}, "n_queries": 200_000, "policies": ["uncoded"],
           "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}, "overhead_ms": c},
           "stragglers": {"p": 0.2, "slowdown": 5.0}}
    m1, m2 = 1.8 + c, 2 * 5.8 + 2 * c * 1.8 + c * c
    check_stat(measured(sim.simulate(cfg, seed=4), "uncoded"), m1 + lam * m2 / (2 * (1 - lam * m1)))


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_bad_overhead_is_one_line(value) -> None:
    with pytest.raises(sim.SimConfigError) as info:
        parse_config({"n_experts": 1, "r": 0, "policies": ["uncoded"], "n_queries": 10,
                      "traffic": {"rate_per_ms": 0.1}, "service": {"overhead_ms": value}})
    assert "overhead_ms" in str(info.value) and "\n" not in str(info.value)
