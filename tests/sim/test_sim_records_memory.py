"""A point's memory: the fast engine gives back its per-query lists when it returns (it sits in reference cycles
that only the garbage collector would free, so a point's later policies used to run beside every earlier
policy's lists), and the records' categorical columns are built without per-query strings."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from sim import parse_config
from sim.api import _model_names, run_plan
from sim.draws import draw
from sim.plan import make_plan


def test_the_engine_keeps_nothing_per_query_beyond_its_output():
    n = 20_000
    cfg = parse_config({"n_experts": 2, "r": 1, "n_queries": n, "traffic": {"rate_per_ms": 0.5},
                        "policies": [{"kind": "coded", "dispatch": "hedged", "delay_ms": 2.0}],
                        "stragglers": {"p": 0.05, "slowdown": 10.0}})
    draws = draw(cfg, 0)
    plan = make_plan(cfg, cfg.policies[0], draws)
    gc.collect()
    gc.disable()  # what is left is what the engine's cycles would hold until a collection
    try:
        tracemalloc.start()
        out = run_plan(plan, draws)
        kept = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    finally:
        gc.enable()
    own = sum(a.nbytes for a in (out.finish_ms, out.how, out.mask, out.n_tasks, out.server_ms))  # 29 B a query
    assert own == 29 * n
    assert kept < own + 20 * n, kept / n  # a per-query Python list alone is >= 32 bytes a query


@pytest.mark.parametrize("names", [["b", "a", "c"], ["x10", "x2"], ["same", "same"]])
def test_model_names_are_the_categorical_pandas_would_infer(names):
    model = np.random.default_rng(0).integers(-1, len(names), 1000)
    want = pd.Categorical(np.where(model < 0, "ensemble", np.array([*names, ""])[model]))
    got = _model_names(model, names)
    assert list(got.categories) == list(want.categories)
    assert (np.asarray(got) == np.asarray(want)).all()
    assert list(_model_names(np.array([1, 1]), ["a", "b"]).categories) == ["b"]  # only the names present


def test_each_policy_s_engine_is_freed_before_its_records_are_built():
    """The engine breaks its own reference cycles (servers <-> engine, events, rules) when it returns, so reference
    counting frees it as soon as a policy has run. Left to the collector, at 1,000 servers a dead engine's objects
    were most of a short point's peak (8 of 11 MB at 512 queries), which made the memory preflight's short probes
    read 11.5 kB a query where a long run's share is about 0.5 kB."""
    from sim.api import simulate_each
    from sim.engine import FastEngine

    cfg = parse_config({"n_experts": 2, "r": 2, "n_queries": 500, "draws": "task", "traffic": {"rate_per_ms": 2.0},
                        "policies": ["uncoded", {"kind": "coded", "dispatch": "hedged", "delay_ms": 2.0},
                                     {"kind": "hedged", "delay_ms": 2.0, "hedge_budget_pct": 5.0}],  # its budget
                        "stragglers": {"p": 0.05, "slowdown": 10.0},  # wraps the rules' own methods: a cycle too
                        "deployment": {"instances": 4, "balancer": "jsq"}})
    gc.collect()
    gc.disable()  # only an explicit collection frees a cycle now
    try:
        _, _, runs = simulate_each(cfg, 0)
        for run in runs:
            alive = [o for o in gc.get_objects() if type(o) is FastEngine]
            assert alive == [], f"{len(alive)} engine(s) still held after {run.plan.name!r} ran"
    finally:
        gc.enable()
