"""Shared cores time-sliced in quanta (service.quantum_ms), checked against independent computations:
- the quantum -> 0 limit is the fluid processor-sharing engine, query for query; a coarse quantum is not;
- with a core per server nothing is ever sliced: the results are those of the config without cores;
- hand-computed schedules (three servers on two cores; 1.5 cores = two slots at 0.75; a stalling straggler;
  a cancelled task's pass finishing through the scheduler), each written out step by step;
- closed forms: two saturated servers on one core alternate quanta; one server on one core is Lindley's FIFO;
- bad input is one SimConfigError line; the reference engine refuses the option.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_testutil import lindley

from policies.codes import HOW
from sim import SimConfigError, parse_config, simulate
from sim.api import run_plan
from sim.draws import Draws, draw
from sim.plan import make_plan


def _trace(table: dict, arrivals, models, factors):
    """Run the config's first policy on hand-written draws: deterministic service (u = 0.5 for every task)
    times `factors` (n x servers), arrivals and models as given."""
    cfg = parse_config(table | {"traffic": {"kind": "trace", "trace_times_ms": list(arrivals),
                                            "trace_models": list(models)}})
    n, s = len(arrivals), cfg.n_experts + cfg.r
    f = np.asarray(factors, float)
    assert f.shape == (n, s)
    draws = Draws(0, np.asarray(arrivals, float), np.asarray(models, np.int64), np.zeros(n, np.int64),
                  np.full((n, s), 0.5), f)
    return run_plan(make_plan(cfg, cfg.policies[0], draws), draws)


def _own_server_work(models, works, n_servers):
    """Task factors putting work works[k] on query k's own expert server (service value 1 ms)."""
    f = np.ones((len(models), n_servers))
    for k, (m, w) in enumerate(zip(models, works, strict=True)):
        f[k, m] = w
    return f


# ------------------------------------------------------------------------------------------ limits
def _poisson(quantum, policy, *, n, rate, service=None, stragglers=None, seed=3):
    svc = {"expert": {"kind": "exponential", "mean_ms": 1.0}, "cores": 2.0, "quantum_ms": quantum}
    table = {"n_experts": 3, "r": 1, "n_queries": n, "warmup_fraction": 0.0, "policies": [policy],
             "traffic": {"kind": "poisson", "rate_per_ms": rate}, "service": svc | (service or {})}
    if stragglers:
        table["stragglers"] = stragglers
    return simulate(parse_config(table), seed)


@pytest.mark.parametrize("policy, kw", [
    ("uncoded", {"n": 600, "rate": 1.2}),
    ({"kind": "hedged", "delay_ms": 1.0},
     {"n": 400, "rate": 1.2, "stragglers": {"p": 0.1, "slowdown": 4.0,
                                            "failures": {"mean_up_ms": 200.0, "mean_down_ms": 5.0}}}),
    ({"kind": "coded", "dispatch": "redundant"},
     {"n": 200, "rate": 0.3, "service": {"cancel_in_service": "finish_pass"},
      "stragglers": {"p": 0.1, "slowdown": 4.0, "hold": "stall"}}),
])
def test_a_vanishing_quantum_is_processor_sharing(policy, kw):
    # round robin over slots with a quantum q gives each of k > C runnable servers C / k of the cores, up to
    # an error of order q per task: latencies converge to the fluid engine's as q -> 0 (C = 2 is whole, so a
    # lone server runs at full speed in both models). Catches a wrong slot speed, lost work on a switch, a
    # server never given back its slot, or a stall / finish_pass / failure path that bypasses the scheduler.
    fluid, small, coarse = (_poisson(q, policy, **kw) for q in (None, 1e-3, 5.0))
    lat = fluid.records["latency_ms"].to_numpy()
    diff = {q: np.abs(r.records["latency_ms"].to_numpy() - lat).mean() for q, r in ((1e-3, small), (5.0, coarse))}
    assert diff[1e-3] < 2e-3, diff
    assert diff[5.0] > 0.1, diff  # a coarse quantum measurably changes the schedule
    np.testing.assert_allclose(small.servers["busy_ms"].to_numpy(), fluid.servers["busy_ms"].to_numpy(),
                               rtol=0.02, atol=0.2)


@pytest.mark.parametrize("cores", [4.0, 6.0])
def test_a_slot_per_server_is_the_plain_fifo_engine(cores):
    # 4 servers and at least 4 whole cores: every runnable server has a slot at speed 1 and nobody ever waits,
    # so slicing must change nothing — query for query, with stragglers that stall, failures and finish_pass
    # cancels. Catches a run queue used while slots are free, or slot speed != 1 for a whole core count.
    def table(with_cores):
        svc = {"expert": {"kind": "lognormal", "mean_ms": 1.0, "sigma": 0.6}, "cancel_in_service": "finish_pass"}
        if with_cores:
            svc |= {"cores": cores, "quantum_ms": 0.3}
        return parse_config({
            "n_experts": 3, "r": 1, "n_queries": 3000, "warmup_fraction": 0.0,
            "policies": [{"kind": "coded", "dispatch": "redundant"}, {"kind": "hedged", "delay_ms": "p90"},
                         {"kind": "replication", "dispatch": "jsq"}],
            "traffic": {"kind": "poisson", "rate_per_ms": 1.2, "ensemble_rate_per_ms": 0.05},
            "service": svc,
            "stragglers": {"p": 0.08, "slowdown": {"kind": "pareto", "alpha": 2.5, "scale": 2.0}, "hold": "stall",
                           "failures": {"mean_up_ms": 300.0, "mean_down_ms": 4.0}}})
    plain, sliced = simulate(table(False), 7), simulate(table(True), 7)
    for col in ("finish_ms", "server_ms"):
        np.testing.assert_allclose(sliced.records[col].to_numpy(), plain.records[col].to_numpy(), atol=1e-9)
    for col in ("answered_by", "servers_used", "n_tasks"):
        assert (sliced.records[col].to_numpy() == plain.records[col].to_numpy()).all(), col
    for col in ("busy_ms", "cancelled_ms", "lost_ms"):
        np.testing.assert_allclose(sliced.servers[col].to_numpy(), plain.servers[col].to_numpy(), atol=1e-8)


# ------------------------------------------------------------------------------------- hand traces
def test_three_servers_on_two_cores_hand_trace():
    # C = 2: two slots at speed 1, quantum 1 ms. A (server 0) arrives at 0 with 2.5 ms of work, B (server 1)
    # at 0.2 with 1.5, C (server 2) at 0.5 with 1.2.
    #   0.0  A takes slot 1                      0.2  B takes slot 2
    #   0.5  C waits: run queue [C]
    #   1.0  A's quantum ends (1.5 left): queue [A]; C takes the slot until 2.0
    #   1.2  B's quantum ends (0.5 left): queue [B]; A takes the slot until 2.2
    #   2.0  C's quantum ends (0.2 left): queue [C]; B takes the slot (ends at 2.5)
    #   2.2  A's quantum ends (0.5 left): queue [A]; C takes the slot, ends at 2.4
    #   2.4  C done; A takes the slot, ends at 2.9     2.5  B done     2.9  A done
    models, works = [0, 1, 2], [2.5, 1.5, 1.2]
    table = {"n_experts": 3, "r": 0, "policies": ["uncoded"],
             "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "cores": 2.0, "quantum_ms": 1.0}}
    out = _trace(table, [0.0, 0.2, 0.5], models, _own_server_work(models, works, 3))
    np.testing.assert_allclose(out.finish_ms, [2.9, 2.5, 2.4], atol=1e-9)
    # busy time = wall time each task held its server, run-queue waits included
    np.testing.assert_allclose(out.busy_ms, [2.9, 2.3, 1.9], atol=1e-9)
    # processor sharing differs: from 0.5 the three run at 2/3 (A 2.0 left, B and C 1.2), B and C end at 2.3,
    # A (0.8 left) at 3.1
    fluid = _trace(table | {"service": table["service"] | {"quantum_ms": None}}, [0.0, 0.2, 0.5], models,
                   _own_server_work(models, works, 3))
    np.testing.assert_allclose(fluid.finish_ms, [3.1, 2.3, 2.3], atol=1e-9)


def test_fractional_cores_hand_trace():
    # C = 1.5: two slots, k holders each at min(1, 1.5 / k) (a lone server at full speed, two at 0.75), quantum
    # 1 ms. Works: A (server 0, t = 0) 1.8, B1 (server 1, 0.4) 0.6, C (server 2, 0.6) 1.14, B2 (server 1, 0.8)
    # 0.3 — queued behind B1.
    #   0.0  A alone at speed 1          0.4  A has 1.4 left; B1 takes slot 2: both at 0.75, B1 ends at 1.2
    #   0.6  C waits: queue [C]; quantum ends armed: A at 1.0, B1 at 1.4
    #   1.0  A's quantum ends (0.4 + 0.45 done, 0.95 left): queue [A]; C takes the slot (quantum to 2.0)
    #   1.2  B1 done: A takes the slot (q0 = 1.2); server 1 starts B2, which waits: queue [B2]
    #   2.0  C's quantum ends (0.75 done, 0.39 left): queue [C]; B2 takes the slot, ends at 2.4
    #   2.2  A's quantum (from 1.2) ends (0.2 left): queue [A]; C takes the slot (0.39 left)
    #   2.4  B2 done; A takes the slot, ends at 2.4 + 0.2 / 0.75 = 2.6667
    #   2.6667  A done: C alone at speed 1 with 0.39 - 0.4667 * 0.75 = 0.04 left, done at 2.70667
    models, works = [0, 1, 2, 1], [1.8, 0.6, 1.14, 0.3]
    table = {"n_experts": 3, "r": 0, "policies": ["uncoded"],
             "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "cores": 1.5, "quantum_ms": 1.0}}
    out = _trace(table, [0.0, 0.4, 0.6, 0.8], models, _own_server_work(models, works, 3))
    a_done = 2.4 + 0.2 / 0.75
    c_done = a_done + 0.39 - (a_done - 2.2) * 0.75
    np.testing.assert_allclose(out.finish_ms, [a_done, 1.2, c_done, 2.4], atol=1e-9)
    np.testing.assert_allclose(out.busy_ms, [a_done, 0.8 + 1.2, c_done - 0.6], atol=1e-9)


@pytest.mark.parametrize("hold, finish", [("stall", [3.8, 2.0]), ("compute", [4.0, 2.2])])
def test_a_stalling_straggler_gives_up_its_slot(hold, finish):
    # one core, quantum 0.4. A (server 0, t = 0): a 1 ms pass straggling x3; B (server 1, t = 0.2): 1 ms.
    #   0.2 B waits; 0.4 A -> queue, B runs; 0.8 B (0.6 left) -> queue, A runs; 1.2 A (0.8 done) -> queue, B runs;
    #   1.6 B (0.2 left) -> queue, A runs.
    # stall: A's pass ends at 1.8; it stalls 2 ms off the core (done at 3.8) and B takes the slot, done at 2.0.
    # compute: A's straggle is 2 more ms of work: 2.0 A (1.8 left) -> queue, B runs, done at 2.2; A alone, 4.0.
    models = [0, 1]
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "stragglers": {"hold": hold},
             "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "cores": 1.0, "quantum_ms": 0.4}}
    out = _trace(table, [0.0, 0.2], models, _own_server_work(models, [3.0, 1.0], 2))
    np.testing.assert_allclose(out.finish_ms, finish, atol=1e-9)


@pytest.mark.parametrize("cancel", ["finish_pass", "preempt"])
def test_a_cancelled_pass_still_waits_for_its_quanta(cancel):
    # one core, quantum 0.4, hedged policy with delay 0.3; servers: expert 0 (pass 1.9 ms), expert 1 (2 ms),
    # replica of model 0 (0.7 ms). Query 0 (t = 0) straggles x2 on server 0 (3.8 ms of work, pass 1.9); its
    # hedge R goes to the replica at 0.3. Query 1 (t = 1.45) needs 0.9 ms on server 1.
    #   0.3 R waits; 0.4 A (0.4 done) -> queue, R runs; 0.8 R (0.3 left) -> queue, A runs;
    #   1.2 A (0.8 done) -> queue, R runs, ends at 1.5; 1.45 B waits behind A: queue [A, B]
    #   1.5 R answers query 0, A takes the slot and is cancelled with 0.8 of its pass done.
    # finish_pass: A still has 1.1 ms of pass to run, through the scheduler:
    #   1.9 A (0.7 left) -> queue, B runs; 2.3 B (0.5 left) -> queue, A runs; 2.7 A (0.3 left) -> queue, B runs;
    #   3.1 B (0.1 left) -> queue, A runs, its pass ends at 3.4; B takes the slot, done at 3.5.
    # preempt: A leaves at 1.5; B runs alone, done at 2.4.
    table = {"n_experts": 2, "r": 1, "policies": [{"kind": "hedged", "delay_ms": 0.3}],
             "service": {"expert": {"kind": "deterministic", "value_ms": 2.0}, "scale": [0.95, 1.0, 0.35],
                         "cores": 1.0, "quantum_ms": 0.4, "cancel_in_service": cancel}}
    out = _trace(table, [0.0, 1.45], [0, 1], [[2.0, 1.0, 1.0], [1.0, 0.45, 1.0]])
    assert [HOW[h] for h in out.how] == ["hedge", "direct"]
    a_end, b_end = (3.4, 3.5) if cancel == "finish_pass" else (1.5, 2.4)
    np.testing.assert_allclose(out.finish_ms, [1.5, b_end], atol=1e-9)
    np.testing.assert_allclose(out.cancelled_ms, [a_end, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(out.busy_ms, [a_end, b_end - 1.45, 1.5 - 0.3], atol=1e-9)


# ------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("w, q", [(2.5, 1.0), (1.7, 0.3), (0.45, 1.0), (3.1, 0.7)])
def test_two_saturated_servers_on_one_core_alternate_quanta(w, q):
    # K queries for each of two servers, all at t = 0 (A's first), deterministic work w = n q + f (0 < f < q).
    # Both always have work, so the core alternates A, B, A, ... in whole quanta; A's task ends f into its
    # (n+1)-th quantum, at 2 n q + f into the pair; B then runs its last f (its slot was just freed) and ends at
    # 2w, when A's next task is first in line again — the pattern repeats every 2w.
    # Hence A's k-th latency is 2w(k - 1) + 2nq + f and B's is 2wk (processor sharing would give 2wk to both).
    n_full = math.floor(w / q)
    f = w - n_full * q
    assert 1e-6 < f < q - 1e-6
    K = 6
    models = [0, 1] * K
    table = {"n_experts": 2, "r": 0, "policies": ["uncoded"],
             "service": {"expert": {"kind": "deterministic", "value_ms": w}, "cores": 1.0, "quantum_ms": q}}
    out = _trace(table, [0.0] * (2 * K), models, np.ones((2 * K, 2)))
    k = np.arange(1, K + 1)
    np.testing.assert_allclose(out.finish_ms[0::2], 2 * w * (k - 1) + 2 * n_full * q + f, atol=1e-9)
    np.testing.assert_allclose(out.finish_ms[1::2], 2 * w * k, atol=1e-9)


@pytest.mark.parametrize("q", [0.05, 1.0, 40.0])
def test_one_server_on_one_core_is_lindley_whatever_the_quantum(q):
    # nobody ever waits for the only slot: an M/G/1 queue, every sojourn given by Lindley's recursion
    cfg = parse_config({"n_experts": 1, "r": 0, "n_queries": 4000, "warmup_fraction": 0.0, "policies": ["uncoded"],
                        "traffic": {"kind": "poisson", "rate_per_ms": 0.7},
                        "service": {"expert": {"kind": "lognormal", "mean_ms": 1.0, "sigma": 0.8},
                                    "cores": 1.0, "quantum_ms": q}})
    res = simulate(cfg, 5)
    d = draw(cfg, 5)
    svc = cfg.service.expert.ppf(d.service_u[:, 0]) * d.task_factor[:, 0]
    np.testing.assert_allclose(res.records["latency_ms"].to_numpy(), lindley(d.arrival_ms, svc), atol=1e-9)


# ------------------------------------------------------------------------------------------ input
@pytest.mark.parametrize("service, word", [
    ({"quantum_ms": 1.0}, "needs cores"),
    ({"cores": 2.0, "quantum_ms": 0.0}, "greater than 0"),
    ({"cores": 2.0, "quantum_ms": -1.0}, "greater than 0"),
    ({"cores": 2.0, "quantum_ms": float("nan")}, "finite"),
    ({"cores": 2.0, "quantum_ms": float("inf")}, "finite"),
])
def test_bad_quantum_is_one_config_error_line(service, word):
    with pytest.raises(SimConfigError) as e:
        parse_config({"n_experts": 2, "r": 0, "n_queries": 10, "policies": ["uncoded"],
                      "traffic": {"kind": "poisson", "rate_per_ms": 0.5}, "service": service})
    msg = str(e.value)
    assert "\n" not in msg and "quantum_ms" in msg and word in msg, msg


def test_reference_engine_refuses_time_slicing():
    cfg = parse_config({"n_experts": 2, "r": 0, "n_queries": 10, "policies": ["uncoded"],
                        "traffic": {"kind": "poisson", "rate_per_ms": 0.5},
                        "service": {"cores": 1.0, "quantum_ms": 1.0}})
    with pytest.raises(NotImplementedError, match="time slicing"):
        simulate(cfg, 0, engine="reference")
