"""Per-task draws (sim.draws = "task"): each task draws its own numbers lazily, so a fleet costs what its tasks do.

Checked against closed forms (M/M/1, zero-load sums, the straggle share), the reference engine query for query
(which scans every list the fast engine keeps a least-loaded heap of), and the properties the layout promises:
a query's draws do not depend on how many queries follow it, a dropped block is drawn again the same, and a
query's task draws alike on every server of the same kind."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from sim_testutil import check_stat

import sim.tasks
from sim.api import run_plan
from sim.draws import draw
from sim.parse import parse_config
from sim.plan import make_plan

EXP1 = {"kind": "exponential", "mean_ms": 1.0}


def _run(cfg_dict: dict, seed: int = 3, engine: str = "fast"):
    cfg = parse_config(cfg_dict)
    d = draw(cfg, seed)
    plan = make_plan(cfg, cfg.policies[0], d)
    return cfg, d, plan, run_plan(plan, d, engine)


def _fleet(policy, n: int = 2500, k: int = 10) -> dict:
    # 4 experts x k instances (JSQ over >= 8: the fast engine's heap index; the reference engine scans), two code
    # groups, ensemble queries, stragglers
    return {"n_experts": 4, "r": 2, "n_queries": n, "policies": [policy], "draws": "task",
            "traffic": {"rate_per_ms": 0.45 * 4 * k, "ensemble_rate_per_ms": 0.05},
            "service": {"expert": EXP1, "coded": EXP1, "backup": EXP1},
            "stragglers": {"p": 0.05, "slowdown": 8.0},
            "deployment": {"instances": k, "balancer": "jsq", "groups": [[0, 1], [2, 3]]}}


@pytest.mark.parametrize("policy", [
    "uncoded",
    {"kind": "replication", "dispatch": "jsq"},
    {"kind": "hedged", "delay_ms": 1.5},
    {"kind": "coded", "dispatch": "hedged", "delay_ms": 1.5},
    {"kind": "coded", "dispatch": "redundant"},
    {"kind": "backup", "dispatch": "hedged", "delay_ms": 1.5},
])
def test_engines_agree_query_for_query_under_per_task_draws(policy):
    cfg = parse_config(_fleet(policy))
    d = draw(cfg, seed=4)
    assert d.service_u is None and d.task_factor is None
    plan = make_plan(cfg, cfg.policies[0], d)
    assert plan.service_ms is None and plan.tasks is not None
    a, b = run_plan(plan, d, "fast"), run_plan(plan, d, "reference")
    np.testing.assert_allclose(a.finish_ms, b.finish_ms, rtol=0, atol=1e-9)
    assert (a.how == b.how).all() and (a.n_tasks == b.n_tasks).all()
    assert all(int(x) == int(y) for x, y in zip(a.mask, b.mask, strict=True))
    used = {s for m in a.mask for s in range(plan.n_servers) if (int(m) >> s) & 1}
    assert len(used) > 30  # the instances far down each list serve too


def test_mm1_under_per_task_draws():
    # one exponential server at rho = 0.7: mean sojourn 1 / (mu - lam)
    _, d, _, out = _run({"n_experts": 1, "r": 0, "n_queries": 200_000, "policies": ["uncoded"], "draws": "task",
                         "traffic": {"rate_per_ms": 0.7}, "service": {"expert": EXP1}}, seed=8)
    check_stat((out.finish_ms - d.arrival_ms)[20_000:], 1.0 / (1.0 - 0.7))


def test_stragglers_hit_the_asked_share_of_tasks_with_the_asked_size():
    # deterministic 1 ms passes at (almost) zero load: a task takes 1 ms or 4 ms, the latter with chance p
    n, p = 40_000, 0.1
    _, d, _, out = _run({"n_experts": 2, "r": 0, "n_queries": n, "policies": ["uncoded"], "draws": "task",
                         "traffic": {"rate_per_ms": 1e-3}, "stragglers": {"p": p, "slowdown": 4.0},
                         "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}}}, seed=2)
    alone = np.diff(d.arrival_ms, prepend=-np.inf) > 5.0  # nobody queued ahead of it
    lat = (out.finish_ms - d.arrival_ms)[alone]
    n = len(lat)
    assert n > 0.99 * len(alone)
    assert np.allclose(lat[lat < 2], 1.0) and np.allclose(lat[lat >= 2], 4.0)
    share = float(np.mean(lat >= 2))
    assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_zero_load_latency_is_delay_out_plus_task_plus_delay_back_per_task():
    n = 30_000
    _, d, _, out = _run({"n_experts": 2, "r": 0, "n_queries": n, "policies": ["uncoded"], "draws": "task",
                         "traffic": {"rate_per_ms": 1e-3}, "service": {"expert": EXP1},
                         "network": {"out": {"kind": "deterministic", "value_ms": 0.25},
                                     "back": {"kind": "exponential", "mean_ms": 0.5}}}, seed=6)
    lat = out.finish_ms - d.arrival_ms
    assert lat.min() > 0.25
    # the sum of an Exp(1) task and an Exp(0.5) delay back: mean 1.5, variance 1.25
    assert abs(lat.mean() - 1.75) < 4 * math.sqrt(1.25 / n)


def test_a_querys_draws_do_not_depend_on_how_many_queries_follow():
    # FIFO servers: later arrivals cannot change an earlier query's answer, so only the draws could
    base = {"n_experts": 2, "r": 0, "policies": ["uncoded"], "draws": "task", "traffic": {"rate_per_ms": 1.2},
            "stragglers": {"p": 0.1, "slowdown": 3.0}, "service": {"expert": EXP1}}
    _, _, _, short = _run({**base, "n_queries": 3000}, seed=5)
    _, _, _, long = _run({**base, "n_queries": 7000}, seed=5)
    np.testing.assert_array_equal(short.finish_ms, long.finish_ms[:3000])


def test_a_dropped_block_is_drawn_again_the_same(monkeypatch):
    cfg = _fleet({"kind": "coded", "dispatch": "hedged", "delay_ms": 1.5}, n=2500, k=8)
    cfg["network"] = {"out": {"kind": "exponential", "mean_ms": 0.1}, "back": {"kind": "exponential", "mean_ms": 0.1}}
    *_, kept = _run(cfg, seed=9)
    monkeypatch.setattr(sim.tasks, "_HELD", {"uniforms": 1, "times": 1, "delays": 1})
    *_, dropped = _run(cfg, seed=9)
    np.testing.assert_array_equal(kept.finish_ms, dropped.finish_ms)
    _, _, _, other = _run(cfg, seed=10)
    assert not np.array_equal(kept.finish_ms, other.finish_ms)  # and the seed does matter


def test_a_querys_first_task_draws_alike_on_every_instance():
    # at zero load a query's latency is its first task's time: one instance or three in turn, the same numbers
    # (per (query, server) draws would give the further instances' queries other numbers)
    base = {"n_experts": 1, "r": 0, "n_queries": 3000, "policies": ["uncoded"], "draws": "task",
            "traffic": {"rate_per_ms": 1e-3}, "service": {"expert": EXP1}, "stragglers": {"p": 0.2, "slowdown": 5.0}}
    _, d, _, one = _run(base, seed=1)
    _, _, _, three = _run({**base, "deployment": {"instances": 3, "balancer": "round_robin"}}, seed=1)
    alone = np.diff(d.arrival_ms, prepend=-np.inf) > 50.0  # nobody queued ahead of it on the one instance
    assert alone.mean() > 0.9
    np.testing.assert_allclose(one.finish_ms[alone], three.finish_ms[alone], rtol=1e-12)
    assert set(np.unique(three.mask).tolist()) == {1, 2, 4}
    _, _, _, server = _run({**base, "draws": "server", "deployment": {"instances": 3, "balancer": "round_robin"}},
                           seed=1)
    assert not np.allclose(one.finish_ms[alone], server.finish_ms[alone], rtol=1e-12)


def test_a_percentile_hedge_delay_is_the_percentile_of_the_experts_task_times():
    n = 20_000
    cfg, _, plan, _ = _run({"n_experts": 2, "r": 1, "n_queries": n, "draws": "task",
                            "policies": [{"kind": "hedged", "delay_ms": "p95"}], "traffic": {"rate_per_ms": 0.5},
                            "service": {"expert": EXP1}})
    # Exp(1)'s 95th percentile; the sample quantile's sd is sqrt(p (1 - p) / n) / density there (0.05)
    tol = 4 * math.sqrt(0.95 * 0.05 / n) / 0.05
    assert plan.delay_ms == pytest.approx([-math.log(0.05)] * 2, abs=tol)


def test_per_task_draws_hold_nothing_per_server():
    # 2 experts x 500 instances + 125 extra servers, 20,000 queries: per-(query, server) arrays would take
    # 20,000 x 1,125 x 8 bytes = 180 MB each; per-task draws hold no array that grows with the servers
    cfg = parse_config({"n_experts": 2, "r": 125, "n_queries": 20_000, "draws": "task",
                        "policies": [{"kind": "coded", "dispatch": "hedged", "delay_ms": "p95"}],
                        "traffic": {"rate_per_ms": 300.0}, "service": {"expert": EXP1, "coded": EXP1},
                        "stragglers": {"p": 0.05, "slowdown": 10.0},
                        "deployment": {"instances": 500, "balancer": "jsq", "groups": [[0, 1]]}})
    assert cfg.n_servers == 1125
    tracemalloc.start()
    try:
        d = draw(cfg, 0)
        make_plan(cfg, cfg.policies[0], d)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB"


def test_the_copies_of_a_query_draw_independently():
    # at zero load a query sent to both holders of its expert is answered by the faster of two Exp(1) copies:
    # mean 1/2 (one shared draw would give 1)
    n = 20_000
    _, d, _, out = _run({"n_experts": 1, "r": 1, "n_queries": n, "draws": "task",
                         "policies": [{"kind": "replication", "dispatch": "redundant", "cancel": True}],
                         "traffic": {"rate_per_ms": 1e-3}, "service": {"expert": EXP1}}, seed=12)
    lat = out.finish_ms - d.arrival_ms
    assert (out.n_tasks == 2).all()
    assert abs(lat.mean() - 0.5) < 4 * 0.5 / math.sqrt(n)


def test_only_the_named_servers_straggle_under_per_task_draws():
    n = 20_000
    _, d, _, out = _run({"n_experts": 2, "r": 0, "n_queries": n, "policies": ["uncoded"], "draws": "task",
                         "traffic": {"rate_per_ms": 1e-3}, "stragglers": {"p": 0.3, "slowdown": 4.0, "servers": [1]},
                         "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}}}, seed=2)
    alone = np.diff(d.arrival_ms, prepend=-np.inf) > 5.0
    lat = (out.finish_ms - d.arrival_ms)[alone]
    model = d.model[alone]
    assert np.allclose(lat[model == 0], 1.0)
    assert abs(np.mean(lat[model == 1] > 2) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / np.sum(model == 1))


def test_the_least_loaded_heap_agrees_with_a_scan_through_any_load_changes():
    # the fast engine's index of a balancer's list against the rules' plain scan (fewest live tasks, ties to the
    # earliest), through 20,000 random changes: enough stale entries to rebuild the heap many times
    from sim.engine import _Least, _Station, _touch

    rng = np.random.default_rng(0)
    members = [_Station(k, 1.0) for k in range(12)]
    ix = _Least(members)
    for pos, st in enumerate(members):
        st.heaps.append((ix, pos))
    rebuilt = 0
    for _ in range(20_000):
        st = members[int(rng.integers(12))]
        st.n_live = max(0, st.n_live + int(rng.choice([-1, 1, 1])) if st.n_live < 6 else st.n_live - 1)
        before = len(ix.heap)
        _touch(st)
        rebuilt += len(ix.heap) < before
        loads = [m.n_live for m in members]
        assert ix.least() is members[loads.index(min(loads))]
    assert rebuilt > 10


def test_servers_map_a_draw_by_their_distribution_not_by_their_model():
    """Experts with the same service distribution share a kind (one mapping of a block serves them all); another
    distribution, scale or straggling makes another kind. Each kind's times are its distribution's quantiles of the
    slot's and block's own uniforms, computed here from the stream directly."""
    from policies.codes import CODED
    from sim.draws import TASKS, stream
    from sim.tasks import BLOCK, TaskTimes

    cfg = parse_config({"n_experts": 4, "r": 1, "n_queries": 10, "draws": "task", "policies": ["coded"],
                        "traffic": {"rate_per_ms": 0.1},
                        "service": {"experts": [EXP1, EXP1, {"kind": "exponential", "mean_ms": 2.0}, EXP1],
                                    "coded": EXP1, "scale": [1.0, 1.0, 1.0, 1.5, 1.0]},
                        "stragglers": {"p": 0.1, "slowdown": 4.0, "servers": [0, 1, 2, 3]}})
    tt = TaskTimes(cfg, (0, 1, 2, 3, CODED), seed=5)
    kinds = tt.kind_of
    assert kinds[0] == kinds[1]  # two models, one distribution
    assert len({kinds[0], kinds[2], kinds[3], kinds[4]}) == 4  # mean, scale, straggling: each another kind
    u = stream(5, TASKS, 2, 1).random((5, BLOCK))
    i = int(np.argmax(u[1] < 0.1))  # the block's first query whose slot-2 task straggles
    assert u[1, i] < 0.1
    base = -np.log1p(-u[0, i])
    for server, mean, scale, straggles in ((0, 1.0, 1.0, True), (1, 1.0, 1.0, True), (2, 2.0, 1.0, True),
                                           (3, 1.0, 1.5, True), (4, 1.0, 1.0, False)):
        task, lone = tt.task_ms(2, BLOCK + i, server)
        assert lone == pytest.approx(base * mean * scale, rel=1e-12)
        assert task == pytest.approx(lone * (4.0 if straggles else 1.0), rel=1e-12)
