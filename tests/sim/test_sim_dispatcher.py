"""The dispatcher's CPU work on the shared cores (service.dispatcher): priority over the servers; hand traces."""

from __future__ import annotations

import numpy as np
import pytest

from policies.codes import HOW_DIRECT
from sim import SimConfigError, parse_config, simulate
from sim.api import run_plan
from sim.draws import Draws
from sim.plan import make_plan
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


def _one_wake_during_a_pass(placement: str, seed: int) -> float:
    """Expert 0's 2 ms pass runs alone on two cores; at 1.0 a task for expert 1 makes the dispatcher work 0.5 ms.
    Returns when query 0 is answered (its output costs nothing to take back)."""
    service = {"expert": {"kind": "deterministic", "value_ms": 2.0}, "cores": 2.0, "quantum_ms": 10.0,
               "dispatcher": {"send_ms": 0.5, "return_ms": 0.0, "placement": placement}}
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "service": service,
             "traffic": {"kind": "trace", "trace_times_ms": [0.0, 1.0], "trace_models": [0, 1]}}
    cfg = parse_config(table)
    f = np.ones((2, 2))  # q1's pass is 2 ms too: its core is not freed before the dispatcher is done
    draws = Draws(seed, np.array([0.0, 1.0]), np.array([0, 1]), np.zeros(2, np.int64), np.full((2, 2), 0.5), f)
    return float(run_plan(make_plan(cfg, cfg.policies[0], draws), draws).finish_ms[0])


def test_a_real_time_dispatcher_preempts_a_server_on_its_own_core_half_the_time_with_one_core_busy() -> None:
    # q0's send (0.5 ms at t = 0) takes one free core, q0's pass the other (0-2.0). The wake at 1.0: 'free_core'
    # takes the idle core (q1 waits for it, q0 ends at 2.0); 'own_core' lands on q0's core with probability 1 / 2
    # (one holder of two slots), q0 waits the 0.5 ms of work (ends 2.5) while q1 takes the free core
    free = {_one_wake_during_a_pass("free_core", seed) for seed in range(20)}
    assert len(free) == 1
    ends = np.array([_one_wake_during_a_pass("own_core", seed) for seed in range(400)])
    base = min(free)
    late = np.isclose(ends, base + 0.5)
    assert np.all(late | np.isclose(ends, base)), sorted(set(ends.round(6)))
    # binomial(400, 1/2): sd 10; 4 sd either way
    assert 160 <= late.sum() <= 240, late.sum()


def test_the_placement_is_a_dispatcher_setting_checked_by_name() -> None:
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "n_queries": 10,
             "traffic": {"kind": "poisson", "rate_per_ms": 0.1},
             "service": {"expert": ONE_MS, "cores": 1.0, "quantum_ms": 1.0,
                         "dispatcher": {"send_ms": 0.1, "return_ms": 0.1, "placement": "any_core"}}}
    with pytest.raises(SimConfigError, match="placement"):
        parse_config(table)


def test_a_cancel_costs_the_dispatcher_a_send_and_a_reply() -> None:
    # one expert + one replica on one core, 1 ms a pass, a hedge after 1 ms; 0.5 ms per send, 0.25 per message taken
    # back. q0 (t = 0): the dispatcher holds the core 0-0.5, the pass runs 0.5-1.0, q0's hedge send preempts it
    # 1.0-1.5 (the replica's copy waits for the core), the pass ends 2.0: q0 answered directly. Its output taken
    # back (0.25), the cancel of the replica's copy sent (0.5) and the replica's word that it dropped it taken back
    # (0.25) hold the core 2.0-3.0; q1's send (t = 2.1) 3.0-3.5; q1's hedge send (t = 3.1) 3.5-4.0; q1's pass
    # 4.0-5.0. A cancel that cost the dispatcher nothing gives 4.25 (q1's pass from 2.75, preempted 3.1-3.6);
    # without a dispatcher no hedge is sent (each pass ends as its hedge is due, and goes first).
    service = {"expert": ONE_MS, "cores": 1.0, "quantum_ms": 100.0,
               "dispatcher": {"send_ms": 0.5, "return_ms": 0.25}}
    table = {"n_experts": 1, "r": 1, "policies": [{"kind": "hedged", "delay_ms": 1.0}], "service": service}
    out = _trace(table, [0.0, 2.1], [0, 0], np.ones((2, 2)))
    np.testing.assert_allclose(out.finish_ms, [2.0, 5.0], atol=1e-9)
    assert list(out.how) == [HOW_DIRECT, HOW_DIRECT]
    # the replica's copies held it (waiting for the core) 1.0-2.0 and 3.1-5.0, then were cancelled
    np.testing.assert_allclose(out.cancelled_ms, [0.0, 1.0 + 1.9], atol=1e-9)
    free = _trace(table | {"service": service | {"dispatcher": {"send_ms": 0.0, "return_ms": 0.0}}},
                  [0.0, 2.1], [0, 0], np.ones((2, 2)))
    np.testing.assert_allclose(free.finish_ms, [1.0, 3.1], atol=1e-9)


def test_with_network_delays_the_drop_reply_costs_the_dispatcher_when_it_comes_back() -> None:
    # as above, every message 0.1 ms each way. q0: send 0-0.5, pass 0.5-1.0, its hedge's send 1.0-1.5, the pass ends
    # 2.0, its output is back at 2.1 (answer). The replica (its copy there since 1.1) took the core at 2.0; taking
    # q0's output in (0.25) and sending the cancel (0.5) hold it 2.1-2.85; the cancel reaches the replica at 2.2 and
    # drops its copy; its reply is back at 2.3: 0.25 more, to 3.1. q1 (t = 2.4): its send 3.1-3.6, its hedge's send
    # (t = 3.4) 3.6-4.1, its pass 4.1-5.1, its output back at 5.2. Without the reply's cost q1's pass starts at
    # 3.35, is preempted 3.4-3.9 by the hedge's send and its output is back at 4.95.
    out_back = {"kind": "deterministic", "value_ms": 0.1}
    service = {"expert": ONE_MS, "cores": 1.0, "quantum_ms": 100.0,
               "dispatcher": {"send_ms": 0.5, "return_ms": 0.25}}
    table = {"n_experts": 1, "r": 1, "policies": [{"kind": "hedged", "delay_ms": 1.0}], "service": service,
             "network": {"out": out_back, "back": out_back},
             "traffic": {"kind": "trace", "trace_times_ms": [0.0, 2.4], "trace_models": [0, 0]}}
    cfg = parse_config(table)
    half = np.full((2, 2), 0.5)  # deterministic delays and passes: any uniform gives the same value
    draws = Draws(0, np.array([0.0, 2.4]), np.zeros(2, np.int64), np.zeros(2, np.int64), half, np.ones((2, 2)),
                  half, half)
    out = run_plan(make_plan(cfg, cfg.policies[0], draws), draws)
    np.testing.assert_allclose(out.finish_ms, [2.1, 5.2], atol=1e-9)
    # the replica's copies: 1.1 until the cancel reached it (2.2), and 3.5 until q1's cancel did (5.3)
    np.testing.assert_allclose(out.cancelled_ms, [0.0, 1.1 + 1.8], atol=1e-9)
