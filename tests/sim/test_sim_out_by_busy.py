"""One-way delays by the cores' state (network.out_by_busy, back_by_busy): a task's delay is read in the table of as
many other servers as compute when it is due, an output's when its task ends. Hand traces on shared cores, and the
refusals."""

from __future__ import annotations

import numpy as np
import pytest

from sim import SimConfigError, parse_config, simulate
from sim.api import run_plan
from sim.draws import Draws
from sim.plan import make_plan


def _fixed(ms: float) -> dict:
    return {"kind": "deterministic", "value_ms": ms}


def _trace(service: dict, network: dict, arrivals: list[float], models: list[int], n_experts: int = 3):
    table = {"n_experts": n_experts, "r": 0, "policies": ["uncoded"], "service": service, "network": network,
             "traffic": {"kind": "trace", "trace_times_ms": arrivals, "trace_models": models}}
    cfg = parse_config(table)
    n, s = len(arrivals), n_experts
    half = np.full((n, s), 0.5)
    draws = Draws(0, np.asarray(arrivals, float), np.asarray(models, np.int64), np.zeros(n, np.int64), half,
                  np.ones((n, s)), half, None)
    return run_plan(make_plan(cfg, cfg.policies[0], draws), draws)


BY_BUSY = {"out": _fixed(0.1), "out_by_busy": [_fixed(0.1), _fixed(0.3), _fixed(1.0)]}


def test_a_task_waits_as_long_as_the_table_of_the_other_servers_computing_says() -> None:
    # three experts on two cores, 1 ms passes, quantum 10 ms. q0 -> s0 at 0: nobody computes, +0.1: 0.1-1.1.
    # q1 -> s1 at 0.2: s0 computes, +0.3: 0.5-1.5. q2 -> s2 at 0.6: s0 and s1 compute, +1.0: arrives 1.6.
    # q3 -> s0 at 1.25: s1 computes (s2's task is still on its way), +0.3: 1.55-2.55; q2 takes the other core
    # at 1.6 (s1 ended 1.5): 1.6-2.6. q4 -> s2 at 1.7, s2 itself busy: only s0 counts, +0.3, queued behind q2:
    # 2.6-3.6 (counting its own server it would be +1.0, 2.7-3.7). One delay for all: 1.1, 1.3, 2.1, 2.35, 3.1.
    service = {"expert": _fixed(1.0), "cores": 2.0, "quantum_ms": 10.0}
    arrivals, models = [0.0, 0.2, 0.6, 1.25, 1.7], [0, 1, 2, 0, 2]
    out = _trace(service, BY_BUSY, arrivals, models)
    np.testing.assert_allclose(out.finish_ms, [1.1, 1.5, 2.6, 2.55, 3.6], atol=1e-9)
    plain = _trace(service, {"out": _fixed(0.1)}, arrivals, models)
    np.testing.assert_allclose(plain.finish_ms, [1.1, 1.3, 2.1, 2.35, 3.1], atol=1e-9)


def test_an_output_waits_as_long_as_the_table_of_the_servers_computing_when_its_task_ends_says() -> None:
    # two experts on two cores, 1 ms passes: q0 on s0 0-1.0, q1 on s1 0.5-1.5. q0's output leaves with s1
    # computing: +0.5 (answered 1.5); q1's leaves with s0 idle: +0.1 (1.6). One delay for all: 1.1, 1.6.
    service = {"expert": _fixed(1.0), "cores": 2.0, "quantum_ms": 10.0}
    network = {"back": _fixed(0.1), "back_by_busy": [_fixed(0.1), _fixed(0.5)]}
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "service": service, "network": network,
             "traffic": {"kind": "trace", "trace_times_ms": [0.0, 0.5], "trace_models": [0, 1]}}
    cfg = parse_config(table)
    half = np.full((2, 2), 0.5)
    draws = Draws(0, np.array([0.0, 0.5]), np.array([0, 1]), np.zeros(2, np.int64), half, np.ones((2, 2)), None, half)
    out = run_plan(make_plan(cfg, cfg.policies[0], draws), draws)
    np.testing.assert_allclose(out.finish_ms, [1.5, 1.6], atol=1e-9)


def test_a_server_waiting_in_the_run_queue_counts_as_computing() -> None:
    # three experts on one core, 1 ms passes, quantum 10 ms. q0 -> s0 at 0 (+0.1): 0.1-1.1. q1 -> s1 at 0.2, s0
    # computing (+0.3): waits in the run queue from 0.5, runs 1.1-2.1. q2 -> s2 at 0.6: s0 holds the core and s1
    # waits for it, two computing (+3.0): 3.6-4.6 (counting only the core's holder: +0.3, 2.1-3.1)
    service = {"expert": _fixed(1.0), "cores": 1.0, "quantum_ms": 10.0}
    network = {"out": _fixed(0.1), "out_by_busy": [_fixed(0.1), _fixed(0.3), _fixed(3.0)]}
    out = _trace(service, network, [0.0, 0.2, 0.6], [0, 1, 2])
    np.testing.assert_allclose(out.finish_ms, [1.1, 2.1, 4.6], atol=1e-9)


def test_processor_sharing_leaves_the_tasks_own_server_out() -> None:
    # two cores shared without slicing: q1 -> s0 at 0.5 while s0 computes q0 (0.1-1.1) and s1 idles: nobody else
    # computes (+0.1), queued, 1.1-2.1 (counting s0 itself: +1.0, 1.5-2.5)
    service = {"expert": _fixed(1.0), "cores": 2.0}
    network = {"out": _fixed(0.1), "out_by_busy": [_fixed(0.1), _fixed(1.0)]}
    out = _trace(service, network, [0.0, 0.5], [0, 0], n_experts=2)
    np.testing.assert_allclose(out.finish_ms, [1.1, 2.1], atol=1e-9)


def test_processor_sharing_counts_the_busy_servers_too() -> None:
    # two cores shared without slicing: q1 -> s1 at 0.2 with s0 computing waits 0.3 (1.5); q2 -> s0 at 1.2 with
    # s1 computing waits 0.3 again (2.5); q3 -> s1 at 2.0, nobody else computing but s0 — its own server is idle.
    service = {"expert": _fixed(1.0), "cores": 2.0}
    out = _trace(service, BY_BUSY, [0.0, 0.2, 1.2, 2.0], [0, 1, 0, 1], n_experts=2)
    np.testing.assert_allclose(out.finish_ms, [1.1, 1.5, 2.5, 3.3], atol=1e-9)


def test_the_last_entry_holds_for_more_servers_and_equal_tables_change_nothing() -> None:
    table = {"n_experts": 4, "r": 1, "n_queries": 3000, "policies": ["uncoded", "hedged", "coded"],
             "traffic": {"kind": "poisson", "rate_per_ms": 1.2},
             "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}, "cores": 2.0, "quantum_ms": 1.0},
             "stragglers": {"p": 0.05, "slowdown": 8.0}}
    out = {"kind": "exponential", "mean_ms": 0.4}
    plain = simulate(parse_config(table | {"network": {"out": out}}), 5).records
    same = simulate(parse_config(table | {"network": {"out": out, "out_by_busy": [out, out]}}), 5).records
    np.testing.assert_array_equal(plain["latency_ms"].to_numpy(), same["latency_ms"].to_numpy())
    # longer deliveries only when two or more others compute: every latency the same or longer, some longer
    slow = simulate(parse_config(table | {"network": {"out": out, "out_by_busy": [
        out, out, {"kind": "exponential", "mean_ms": 4.0}]}}), 5).records
    assert slow["latency_ms"].mean() > plain["latency_ms"].mean() * 1.05


@pytest.mark.parametrize(("network", "service", "says"), [
    ({"out_by_busy": [_fixed(0.1)]}, {"cores": 2.0}, "needs network.out"),
    ({"out": _fixed(0.1), "out_by_busy": [_fixed(0.1)]}, {}, "need service.cores"),
    ({"back_by_busy": [_fixed(0.1)]}, {"cores": 2.0}, "needs network.back"),
    ({"out": _fixed(0.1), "out_by_busy": []}, {"cores": 2.0}, "out_by_busy"),
])
def test_refused_without_what_it_refines_or_counts(network: dict, service: dict, says: str) -> None:
    table = {"n_experts": 2, "r": 0, "n_queries": 10, "policies": ["uncoded"],
             "traffic": {"kind": "poisson", "rate_per_ms": 0.1},
             "service": {"expert": _fixed(1.0)} | service, "network": network}
    with pytest.raises(SimConfigError, match=says):
        parse_config(table)
