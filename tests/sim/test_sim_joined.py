"""A start that holds a server off its core (service.joined_share): a server starting on a free core wakes, with
that chance, on a core another server holds; that server waits off the cores, its slot free, until the starter's
work is done. Hand traces on time-sliced cores, the draws' stream, and the refusal."""

from __future__ import annotations

import numpy as np
import pytest

from sim import SimConfigError, parse_config
from sim.api import run_plan
from sim.draws import Draws
from sim.plan import make_plan


def _fixed(ms: float) -> dict:
    return {"kind": "deterministic", "value_ms": ms}


def _trace(passes: list[float], arrivals: list[float], models: list[int], cores: float = 2.0,
           share: float | None = 1.0, seed: int = 0):
    service = {"experts": [_fixed(ms) for ms in passes], "cores": cores, "quantum_ms": 10.0}
    if share is not None:
        service["joined_share"] = share
    table = {"n_experts": len(passes), "r": 0, "policies": ["uncoded"], "service": service,
             "traffic": {"kind": "trace", "trace_times_ms": arrivals, "trace_models": models}}
    cfg = parse_config(table)
    n, s = len(arrivals), len(passes)
    draws = Draws(seed, np.asarray(arrivals, float), np.asarray(models, np.int64), np.zeros(n, np.int64),
                  np.full((n, s), 0.5), np.ones((n, s)))
    return run_plan(make_plan(cfg, cfg.policies[0], draws), draws)


def test_a_start_on_a_free_core_holds_the_computing_server_until_the_starters_work_is_done() -> None:
    # two cores: q0 on s0 (1 ms) at 0; q1 on s1 (0.5 ms) at 0.4 finds a core free and holds s0 off, 0.6 of its
    # work left, until 0.9; s0 then runs 0.9-1.5. s1 itself runs 0.4-0.9. q2 on s0 at 2.0, nobody computing: 2-3.
    out = _trace([1.0, 0.5], [0.0, 0.4, 2.0], [0, 1, 0])
    np.testing.assert_allclose(out.finish_ms, [1.5, 0.9, 3.0], atol=1e-9)
    for share in (None, 0.0):  # never: s0 ends at 1.0
        plain = _trace([1.0, 0.5], [0.0, 0.4, 2.0], [0, 1, 0], share=share)
        np.testing.assert_allclose(plain.finish_ms, [1.0, 0.9, 3.0], atol=1e-9)


def test_a_server_that_waits_for_a_core_holds_nobody() -> None:
    # one core: q0 on s0 0-1; q1 on s1 at 0.2 finds no core free: it waits its turn, 1-1.5, s0 undisturbed
    out = _trace([1.0, 0.5], [0.0, 0.2], [0, 1], cores=1.0)
    np.testing.assert_allclose(out.finish_ms, [1.0, 1.5], atol=1e-9)


def test_a_held_servers_core_is_free_for_the_next_start_and_its_return_holds_nobody() -> None:
    # two cores, passes 1 / 0.5 / 0.25 ms. q0 on s0 at 0; q1 on s1 at 0.4 holds s0 off until 0.9 (0.6 left);
    # q2 on s2 at 0.6 takes the core s0 left and holds s1 off (0.3 left) until 0.85... s2 runs 0.6-0.85; s1
    # back at 0.85 on the free core: 0.85-1.15 (its return holds nobody); s0 back at 0.9 on the core s2 left:
    # 0.9-1.5
    out = _trace([1.0, 0.5, 0.25], [0.0, 0.4, 0.6], [0, 1, 2])
    np.testing.assert_allclose(out.finish_ms, [1.5, 1.15, 0.85], atol=1e-9)


def test_the_chance_is_drawn_from_its_own_stream_of_the_seed() -> None:
    # share 0.5: s0 ends at 1.5 (held) or 1.0 (not) by the seed's JOINED stream; over 400 seeds held 160-240
    # times (binomial 1/2 within 4 sd), and the same seed gives the same end
    ends = [float(_trace([1.0, 0.5], [0.0, 0.4], [0, 1], share=0.5, seed=seed).finish_ms[0]) for seed in range(400)]
    assert set(np.round(ends, 9)) == {1.0, 1.5}
    assert 160 <= sum(e > 1.2 for e in ends) <= 240
    assert ends[7] == float(_trace([1.0, 0.5], [0.0, 0.4], [0, 1], share=0.5, seed=7).finish_ms[0])


def test_joined_share_needs_time_slicing() -> None:
    with pytest.raises((SimConfigError, ValueError), match="joined_share"):
        parse_config({"n_experts": 2, "r": 0, "policies": ["uncoded"], "traffic": {"rate_per_ms": 0.5},
                      "service": {"expert": _fixed(1.0), "cores": 2.0, "joined_share": 0.5}})


def test_a_server_going_straight_on_to_its_next_task_holds_nobody() -> None:
    # two cores: q0 on s1 (2 ms) at 0. q1 on s0 (0.5 ms) at 0.1: s0 woke, holds s1 off (1.9 left) until 0.6;
    # s0 runs 0.1-0.6. q2 on s0 at 0.2 waits behind q1 and starts at 0.6 straight on, not woken: s1, back at
    # 0.6, runs on, 0.6-2.5 (were q2's start a wake, s1 would be held again until 1.1 and end at 3.0)
    out = _trace([0.5, 2.0], [0.0, 0.1, 0.2], [1, 0, 0])
    np.testing.assert_allclose(out.finish_ms, [2.5, 0.6, 1.1], atol=1e-9)


def test_a_straggling_starter_holds_another_for_its_pass_not_its_straggle() -> None:
    # two cores: q0 on s0 (1 ms) at 0; q1 on s1 (0.5 ms pass, straggling x3: 1.5 ms of work on the cores) at 0.4
    # holds s0 off for its pass alone, until 0.9: s0 0.9-1.5 (held for its whole work, s0 would end at 2.1)
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"],
             "service": {"experts": [_fixed(1.0), _fixed(0.5)], "cores": 2.0, "quantum_ms": 10.0,
                         "joined_share": 1.0},
             "traffic": {"kind": "trace", "trace_times_ms": [0.0, 0.4], "trace_models": [0, 1]}}
    cfg = parse_config(table)
    factor = np.array([[1.0, 1.0], [1.0, 3.0]])
    draws = Draws(0, np.array([0.0, 0.4]), np.array([0, 1]), np.zeros(2, np.int64), np.full((2, 2), 0.5), factor)
    out = run_plan(make_plan(cfg, cfg.policies[0], draws), draws)
    np.testing.assert_allclose(out.finish_ms, [1.5, 1.9], atol=1e-9)
