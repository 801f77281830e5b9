"""Wake-up costs (service.wake): a task that starts on a server that sat idle computes longer; hand traces."""

from __future__ import annotations

import numpy as np
import pytest

from sim import SimConfigError, parse_config
from sim.config import Wake
from tests.sim.test_sim_slicing import _trace

WAKE = {"idle_ms": [2.0, 6.0], "extra_ms": [0.5, 1.0]}


def test_extra_is_interpolated_and_zero_straight_on() -> None:
    wake = Wake(**WAKE)
    # linear from (0, 0) through (2, 0.5) and (6, 1.0), flat beyond
    assert [wake.extra(g) for g in (0.0, 1.0, 2.0, 3.0, 6.0, 50.0)] == pytest.approx([0, 0.25, 0.5, 0.625, 1, 1])


@pytest.mark.parametrize("cores", [None, {"cores": 1.0, "quantum_ms": 0.5}])
def test_one_server_hand_trace(cores) -> None:
    # one expert, 1 ms a pass. t = 0: starts at once (idle since the start: 0 ms) -> 1.0; t = 0.5 waits and
    # goes straight on at 1.0 (no wake) -> 2.0; t = 5: idle since 2.0 (3 ms: +0.625) -> 6.625; t = 20: idle
    # 13.375 ms (+1.0) -> 22.0; t = 20.1 queued behind it -> 23.0. Alone on a shared core nothing changes.
    service = {"expert": {"kind": "deterministic", "value_ms": 1.0}, "wake": WAKE} | (cores or {})
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "service": service}
    arrivals = [0.0, 0.5, 5.0, 20.0, 20.1]
    out = _trace(table, arrivals, [0] * 5, np.ones((5, 1)))
    np.testing.assert_allclose(out.finish_ms, [1.0, 2.0, 6.625, 22.0, 23.0], atol=1e-9)
    np.testing.assert_allclose(out.busy_ms, [2.0 + 1.625 + 3.0], atol=1e-9)


def test_wake_is_work_on_the_shared_cores() -> None:
    # two experts on one core (processor sharing). Server 0 busy 0..1 (t = 0). Server 1 gets a task at t = 4
    # after idling 4 ms (+0.75 -> 1.75 ms of work) and server 0 one at t = 4.5 after idling 3.5 ms (+0.6875 ->
    # 1.6875). 4.0-4.5: server 1 alone does 0.5 (1.25 left); from 4.5 both at half speed: server 0 needs 3.375 ms
    # of wall time, server 1 2.5 -> server 1 ends at 7.0 (server 0 has 0.4375 left), server 0 alone ends 7.4375.
    service = {"expert": {"kind": "deterministic", "value_ms": 1.0}, "wake": WAKE, "cores": 1.0}
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "service": service}
    out = _trace(table, [0.0, 4.0, 4.5], [0, 1, 0], np.ones((3, 2)))
    np.testing.assert_allclose(out.finish_ms, [1.0, 7.0, 7.4375], atol=1e-9)


def test_finish_pass_cancel_waits_for_the_woken_pass() -> None:
    # hedged at 0.5 ms: expert 0 (idle 5 ms before t = 5: +0.875) answers at 6.875. The replica's copy, sent at
    # 5.5 to a server idle 5.5 ms (+0.9375), straggles x3 (a 1 ms pass, then 2 ms more) and is cancelled at
    # 6.875: with finish_pass its pass, wake-up included, ends at 5.5 + 1.9375 = 7.4375; preempt frees it at once
    wake_replica = 0.5 + 0.5 * (5.5 - 2.0) / 4.0
    for cancel, free_at in (("finish_pass", 5.5 + 1.0 + wake_replica), ("preempt", 6.875)):
        service = {"expert": {"kind": "deterministic", "value_ms": 1.0}, "wake": WAKE,
                   "cancel_in_service": cancel}
        table = {"n_experts": 1, "r": 1, "policies": [{"kind": "hedged", "delay_ms": 0.5}], "service": service}
        out = _trace(table, [5.0], [0], np.array([[1.0, 3.0]]))
        np.testing.assert_allclose(out.finish_ms, [6.875], atol=1e-9)
        np.testing.assert_allclose(out.busy_ms, [1.875, free_at - 5.5], atol=1e-9)


@pytest.mark.parametrize("wake, match", [
    ({"idle_ms": [2.0, 1.0], "extra_ms": [0.1, 0.2]}, "increase"),
    ({"idle_ms": [2.0], "extra_ms": [0.1, 0.2]}, "extra values"),
    ({"idle_ms": [2.0], "extra_ms": [0.1], "others_busy_ms": [3.0, 1.0], "others_extra_ms": [0.1, 0.2]}, "increase"),
    ({"idle_ms": [2.0], "extra_ms": [0.1], "others_busy_ms": [3.0]}, "extra values"),
    ({"idle_ms": [2.0], "extra_ms": [-0.1]}, "greater than or equal"),
    ({"idle_ms": [2.0], "extra_ms": [float("nan")]}, "finite"),
])
def test_bad_wake_is_one_line(wake, match) -> None:
    table = {"n_experts": 1, "r": 0, "n_queries": 10, "policies": ["uncoded"],
             "traffic": {"kind": "poisson", "rate_per_ms": 0.1}, "service": {"wake": wake}}
    with pytest.raises(SimConfigError, match=match) as info:
        parse_config(table)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("extra_of, finish", [("draw", 5.0 + 3.0 + 0.875), ("pass", 5.0 + (1.0 + 0.875) * 3.0)])
def test_a_straggle_stretches_the_woken_pass(extra_of, finish) -> None:
    # one server idle 5 ms (+0.875 ms), a 1 ms pass straggling x3: of the draw, 3 + 0.875; of the pass as it ran
    # (the testbed's servers: held (f - 1) x the measured pass), (1 + 0.875) x 3
    table = {"n_experts": 1, "r": 0, "policies": ["uncoded"], "stragglers": {"extra_of": extra_of},
             "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "wake": WAKE}}
    out = _trace(table, [5.0], [0], np.array([[3.0]]))
    np.testing.assert_allclose(out.finish_ms, [finish], atol=1e-9)


@pytest.mark.parametrize("extra_of, finish", [("draw", [3.8, 2.0]), ("pass", [1.8 + 2 * 1.8, 2.0])])
def test_a_stall_follows_the_pass_wall_time(extra_of, finish) -> None:
    # one core, quantum 0.4. A (server 0, t = 0): a 1 ms pass straggling x3, held as a stall; B (server 1,
    # t = 0.2): 1 ms. The pass of A ends at 1.8 after sharing the core with B (see test_sim_slicing). Of the
    # draw it stalls 2 ms more (3.8); of the pass, 2 x its 1.8 ms of wall time (5.4). B ends at 2.0 either way.
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "stragglers": {"hold": "stall", "extra_of": extra_of},
             "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "cores": 1.0, "quantum_ms": 0.4}}
    out = _trace(table, [0.0, 0.2], [0, 1], np.array([[3.0, 1.0], [1.0, 1.0]]))
    np.testing.assert_allclose(out.finish_ms, finish, atol=1e-9)


def test_wake_by_the_other_servers_busy_time() -> None:
    # wake.others_busy_ms: a curve read at the busy time the OTHER servers spent while this one sat idle (here with
    # an idle-time curve that adds nothing).
    # Two experts, 1 ms a pass. t = 0 -> server 0, nobody ran before: 1.0. t = 0.5 -> server 1, server 0 has been
    # busy 0.5 ms meanwhile (+0.125) -> 1.625. t = 3 -> server 0, idle 2 ms (by idle time +0.5), but the other
    # server was busy only 1.0-1.625 meanwhile (+0.15625) -> 4.15625; t = 3.5 queued, straight on -> 5.15625.
    # t = 10 -> server 1: server 0 was busy 1.15625 + 1.0 since 1.625 (+0.5 + 0.5 x 0.15625 / 4) -> 11.51953125.
    wake = {"idle_ms": [1.0], "extra_ms": [0.0], "others_busy_ms": WAKE["idle_ms"], "others_extra_ms": WAKE["extra_ms"]}
    service = {"expert": {"kind": "deterministic", "value_ms": 1.0}, "wake": wake}
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "service": service}
    out = _trace(table, [0.0, 0.5, 3.0, 3.5, 10.0], [0, 1, 0, 0, 1], np.ones((5, 2)))
    np.testing.assert_allclose(out.finish_ms, [1.0, 1.625, 4.15625, 5.15625, 10.0 + 1.0 + 0.5 + 0.5 * 0.15625 / 4],
                               atol=1e-9)
    # read by idle time, the same trace wakes longer where a server idled long while the other did little
    idle = _trace({**table, "service": {**service, "wake": WAKE}}, [0.0, 0.5, 3.0, 3.5, 10.0], [0, 1, 0, 0, 1],
                  np.ones((5, 2)))
    assert idle.finish_ms[2] == pytest.approx(4.5)
    # both: the extras add. Server 1 at t = 0.5: idle 0.5 (+0.125) and server 0 busy 0.5 (+0.125) -> 1.75; server 0
    # at t = 3: idle 2 ms (+0.5) and server 1 busy 1.0-1.75 meanwhile (+0.1875) -> 4.6875
    both = _trace({**table, "service": {**service, "wake": WAKE | {k: wake[k] for k in ("others_busy_ms",
                                                                                       "others_extra_ms")}}},
                  [0.0, 0.5, 3.0], [0, 1, 0], np.ones((3, 2)))
    assert both.finish_ms.tolist() == pytest.approx([1.0, 1.75, 3.0 + 1.0 + 0.5 + 0.1875])
