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
