"""The dispatcher's CPU work on the shared cores (service.dispatcher): priority over the servers; hand traces."""

from __future__ import annotations

import numpy as np
import pytest

from sim import SimConfigError, parse_config, simulate
from tests.sim.test_sim_slicing import _trace

ONE_MS = {"kind": "deterministic", "value_ms": 1.0}


def test_preempts_the_only_core_and_delays_the_next_task() -> None:
    # one expert on one core, 1 ms a pass; the dispatcher spends 0.5 ms per send and 0.25 per output taken back.
    # q0 (t = 0): the dispatcher holds the core 0-0.5, the pass runs 0.5-1.0 (half done) when q1's send (t = 1)
    # takes the core 1.0-1.5; the pass ends 2.0. Taking q0's output back holds the core 2.0-2.25, so q1's pass
    # (queued since 1.0) runs 2.25-3.25. Without the dispatcher: 1.0 and 2.0.
    service = {"expert": ONE_MS, "cores": 1.0, "quantum_ms": 10.0,
               "dispatcher": {"send_ms": 0.5, "return_ms": 0.25}}
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "service": service}
    out = _trace(table, [0.0, 1.0], [0, 0], np.ones((2, 1)))
    np.testing.assert_allclose(out.finish_ms, [2.0, 3.25], atol=1e-9)
    np.testing.assert_allclose(out.busy_ms, [2.0 + 1.25], atol=1e-9)  # wall time held, preempted time included
    bare = _trace(table | {"service": {k: v for k, v in service.items() if k != "dispatcher"}},
                  [0.0, 1.0], [0, 0], np.ones((2, 1)))
    np.testing.assert_allclose(bare.finish_ms, [1.0, 2.0], atol=1e-9)


def test_takes_a_free_core_first_and_works_off_its_backlog_in_order() -> None:
    # two experts on two cores; 0.4 ms per send, 0.25 per output. t = 0: the dispatcher takes one core (free) and
    # server 0 the other: its pass ends 1.0, untouched. t = 0.2: the second send extends the dispatcher's
    # backlog to 0.8, so server 1 (no free core) waits until then and ends at 1.8. At 1.0 server 0's output is
    # taken back on the core it just freed (1.0-1.25): server 1 keeps its own.
    service = {"expert": ONE_MS, "cores": 2.0, "quantum_ms": 10.0,
               "dispatcher": {"send_ms": 0.4, "return_ms": 0.25}}
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "service": service}
    out = _trace(table, [0.0, 0.2], [0, 1], np.ones((2, 2)))
    np.testing.assert_allclose(out.finish_ms, [1.0, 1.8], atol=1e-9)


def test_the_preempted_server_is_the_last_to_take_a_core_and_waits_at_the_head() -> None:
    # three experts on two cores, quantum 10 ms, free sends, 1 ms per output taken back; passes 2 ms (q0: 1 ms).
    # q0 -> server 0 at 0 (core A), q1 -> server 1 at 0.1 (core B), q2 -> server 2 at 0.2 waits, q3 -> server 0
    # at 0.5 queues. 1.0: server 0 ends, server 2 takes core A, then q0's output back preempts the last taker
    # (server 2, nothing done) which goes to the head of the run queue; server 0 starts q3 behind it. 2.0: the
    # dispatcher is done, server 2 (head) takes A (-> 4.0). 2.1: server 1 ends, server 0 takes B, q1's output
    # preempts it (last taker, nothing done) until 3.1: q3 runs 3.1-5.1. 4.0: q2's output back takes the free
    # core, nobody is preempted. Preempting the first taker instead (server 1 at 1.0) or queueing the preempted
    # server at the tail gives other finishes.
    service = {"expert": {"kind": "deterministic", "value_ms": 2.0}, "cores": 2.0, "quantum_ms": 10.0,
               "dispatcher": {"send_ms": 0.0, "return_ms": 1.0}}
    table = {"n_experts": 3, "r": 0, "policies": ["uncoded"], "service": service}
    f = np.ones((4, 3))
    f[0, 0] = 0.5
    out = _trace(table, [0.0, 0.1, 0.2, 0.5], [0, 1, 2, 0], f)
    np.testing.assert_allclose(out.finish_ms, [1.0, 2.1, 4.0, 5.1], atol=1e-9)
    no_work = _trace(table | {"service": service | {"dispatcher": {"send_ms": 0.0, "return_ms": 0.0}}},
                     [0.0, 0.1, 0.2, 0.5], [0, 1, 2, 0], f)
    np.testing.assert_allclose(no_work.finish_ms, [1.0, 2.1, 3.0, 4.1], atol=1e-9)


def test_zero_work_changes_nothing() -> None:
    base = {"n_experts": 2, "r": 1, "n_queries": 4000, "warmup_fraction": 0.0,
            "policies": ["uncoded", {"kind": "hedged", "delay_ms": 1.5}, {"kind": "coded", "dispatch": "hedged",
                                                                         "delay_ms": 1.5}],
            "traffic": {"kind": "poisson", "rate_per_ms": 1.2},
            "stragglers": {"p": 0.1, "slowdown": 4.0},
            "network": {"out": {"kind": "exponential", "mean_ms": 0.2},
                        "back": {"kind": "exponential", "mean_ms": 0.1}},
            "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}, "cores": 2.0, "quantum_ms": 2.0,
                        "cancel_in_service": "finish_pass"}}
    plain = simulate(parse_config(base), 5).records
    zero = simulate(parse_config(base | {"service": base["service"] | {
        "dispatcher": {"send_ms": 0.0, "return_ms": 0.0}}}), 5).records
    np.testing.assert_array_equal(plain["finish_ms"].to_numpy(), zero["finish_ms"].to_numpy())
    some = simulate(parse_config(base | {"service": base["service"] | {
        "dispatcher": {"send_ms": 0.1, "return_ms": 0.1}}}), 5).records
    assert some["latency_ms"].mean() > plain["latency_ms"].mean()


@pytest.mark.parametrize("service, match", [
    ({"cores": 2.0}, "time slicing"),
    ({}, "time slicing"),
    ({"cores": 2.0, "quantum_ms": 1.0, "dispatcher": {"send_ms": -0.1, "return_ms": 0.1}}, "send_ms"),
    ({"cores": 2.0, "quantum_ms": 1.0, "dispatcher": {"send_ms": float("nan"), "return_ms": 0.1}}, "send_ms"),
])
def test_bad_dispatcher_refused(service, match) -> None:
    service = {"dispatcher": {"send_ms": 0.1, "return_ms": 0.1}} | service
    with pytest.raises(SimConfigError, match=match):
        parse_config({"n_experts": 1, "r": 0, "policies": ["uncoded"], "service": service,
                      "traffic": {"kind": "poisson", "rate_per_ms": 0.1}})
