"""Bad input fails early with one clear SimConfigError line; TOML and trace files load."""

from __future__ import annotations

import numpy as np
import pytest

import sim
from sim import SimConfigError

OK = {"n_experts": 2, "r": 1, "traffic": {"rate_per_ms": 1.0}, "n_queries": 1000}


def _bad(cfg: dict, *needles: str) -> str:
    with pytest.raises(SimConfigError) as ei:
        sim.simulate(cfg, seed=0)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("sim config:")
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.mark.parametrize(
    "patch, needles",
    [
        ({"traffic": {"rate_per_ms": -1.0}}, ("traffic.rate_per_ms", "greater than or equal to 0", "-1")),
        ({"traffic": {"rate_per_ms": 1.0, "ensemble_rate_per_ms": -0.5}}, ("ensemble_rate_per_ms",)),
        ({"stragglers": {"p": 1.5}}, ("stragglers.p", "less than or equal to 1")),
        ({"stragglers": {"p": -0.1}}, ("stragglers.p",)),
        ({"stragglers": {"p": 0.1, "slowdown": 0.5}}, ("slowdown",)),
        ({"traffic": {"kind": "markov_hot", "rate_per_ms": 1.0, "strength": 2}}, ("strength",)),
        ({"policies": ["magic"]}, ("policies.0.kind", "'magic'")),
        ({"policies": [{"kind": "coded", "dispatch": "random"}]}, ("unknown dispatch 'random'",)),
        ({"policies": [{"kind": "hedged", "delay_ms": "fast"}]}, ("delay_ms",)),
        ({"policies": ["coded", "coded"]}, ("unique",)),
        ({"n_queries": 0}, ("n_queries",)),
        ({"typo_field": 1}, ("typo_field", "Extra inputs")),
        ({"service": {"expert": {"kind": "exponential", "mean_ms": 0}}}, ("mean_ms",)),
        ({"service": {"expert": {"kind": "empirical", "samples_ms": []}}}, ("samples_ms", "empty")),
        ({"service": {"expert": {"kind": "empirical", "samples_ms": [1.0, -2.0]}}}, ("samples_ms",)),
        ({"service": {"scale": [1.0, 1.0]}}, ("service.scale has length 2, expected 3",)),
        ({"traffic": {"rate_per_ms": 1.0, "weights": [1.0]}}, ("traffic.weights",)),
        ({"r": 0, "policies": ["coded"]}, ("needs r >= 1",)),
        ({"policies": [{"kind": "coded", "fanout": 2}]}, ("fanout",)),
        ({"stragglers": {"failures": {"mean_up_ms": 10, "mean_down_ms": -1}}}, ("mean_down_ms",)),
        ({"traffic": {"kind": "trace"}}, ("trace_csv",)),
        ({"traffic": {"kind": "trace", "trace_times_ms": [0, 1], "trace_models": [0, 7]}}, ("trace_models",)),
        ({"traffic": {"kind": "trace", "trace_times_ms": [2, 1], "trace_models": [0, 0]}}, ("non-decreasing",)),
        ({"n_queries": 10, "horizon_ms": 5.0}, ("not both",)),
        ({"draws": "tasks"}, ("draws", "'server' or 'task'")),
    ],
)
def test_bad_input_is_one_clear_line(patch, needles):
    _bad(OK | patch, *needles)


def test_unstable_load_needs_an_explicit_horizon():
    cfg = {"n_experts": 2, "r": 1, "traffic": {"rate_per_ms": 2.5}, "policies": ["uncoded"]}
    _bad(cfg, "unstable load", "uncoded", "n_queries or horizon_ms")
    # the coded policy's capacity (3 servers) still fails for 3.5/ms of unit work
    _bad(cfg | {"traffic": {"rate_per_ms": 3.5}, "policies": ["coded"]}, "unstable load", "coded")
    # stragglers count: 0.9/ms at mean 1 ms is fine, but not with p = 0.5 and slowdown 3 (mean 2 ms)
    sim.parse_config({"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": 0.9}, "policies": ["uncoded"]})
    _bad(
        {
            "n_experts": 1,
            "r": 0,
            "traffic": {"rate_per_ms": 0.9},
            "policies": ["uncoded"],
            "stragglers": {"p": 0.5, "slowdown": 3},
        },
        "unstable",
    )
    # an explicit horizon makes the transient legitimate
    res = sim.simulate(cfg | {"horizon_ms": 200.0}, seed=0)
    assert res.summary["uncoded"]["n_queries"] > 0


def test_a_config_built_directly_is_held_to_the_same_stability_rule():
    """A SimConfig made by hand (not through parse_config) with a default horizon is refused when simulated."""
    unstable = sim.SimConfig(n_experts=2, r=1, traffic={"rate_per_ms": 2.5}, policies=["uncoded"])
    assert unstable.default_horizon and unstable.n_queries == 100_000
    with pytest.raises(SimConfigError, match="unstable load: policy 'uncoded'"):
        sim.simulate(unstable, seed=0)
    given = sim.SimConfig(n_experts=2, r=1, traffic={"rate_per_ms": 2.5}, policies=["uncoded"], n_queries=50)
    assert not given.default_horizon and sim.simulate(given, seed=0).summary["uncoded"]["n_queries"] > 0


def test_error_is_a_value_error_and_raised_by_direct_model_construction():
    assert issubclass(SimConfigError, ValueError)
    with pytest.raises(SimConfigError, match="rate_per_ms"):
        sim.Traffic(rate_per_ms=-3)
    with pytest.raises(SimConfigError, match="seed"):
        sim.simulate(OK, seed=-1)
    with pytest.raises(SimConfigError, match="no policy named"):
        sim.simulate(OK, seed=0, policies=["nope"])


def test_toml_scenario_loads_and_runs(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        """
[sim]
n_experts = 2
r = 1
n_queries = 2000
model_names = ["day", "night"]
policies = ["uncoded", {kind = "coded", dispatch = "sed"}, {kind = "hedged", delay_ms = "p90"}]

[sim.traffic]
kind = "markov_hot"
rate_per_ms = 1.2
strength = 0.7
mean_dwell_ms = 300
sample_pool = [100, 50]

[sim.service.expert]
kind = "empirical"
samples_ms = [0.8, 0.9, 1.0, 1.4]

[sim.stragglers]
p = 0.05
slowdown = {kind = "pareto", alpha = 2.0}
"""
    )
    cfg = sim.load_config(str(path))
    res = sim.simulate(cfg, seed=1)
    rec = res.records
    assert set(rec["policy"].unique()) == {"uncoded", "coded-sed", "hedged"}
    assert set(rec["model_name"].unique()) <= {"day", "night"}
    for m, pool in ((0, 100), (1, 50)):
        ids = rec.loc[rec["model"] == m, "sample_id"]
        assert ids.min() >= 0 and ids.max() < pool and ids.nunique() > pool // 2
    with pytest.raises(SimConfigError, match="cannot read"):
        sim.load_config(str(tmp_path / "missing.toml"))


def test_trace_csv_replay(tmp_path):
    p = tmp_path / "trace.csv"
    p.write_text("timestamp_ms,model\n5.0,night\n0.0,day\n7.5,ensemble\n9.0,1\n")
    cfg = OK | {"model_names": ["day", "night"], "traffic": {"kind": "trace", "trace_csv": str(p)}}
    del cfg["n_queries"]
    rec = sim.simulate(cfg, seed=0, policies=["uncoded"]).records
    assert rec["arrival_ms"].tolist() == [0.0, 5.0, 7.5, 9.0]
    assert rec["model"].tolist() == [0, 1, -1, 1]
    assert rec["kind"].tolist() == ["routed", "routed", "ensemble", "routed"]
    p.write_text("timestamp_ms,model\n1.0,dawn\n")
    _bad(cfg, "unknown model")
    p.write_text("time,model\n1.0,0\n")
    _bad(cfg, "timestamp_ms")


def test_empirical_service_resamples_the_measured_times():
    samples = [2.0, 3.0, 7.0]
    res = sim.simulate(
        OK | {"service": {"expert": {"kind": "empirical", "samples_ms": np.array(samples)}}},
        seed=0,
        policies=["uncoded"],
    )
    used = np.unique(np.round(res.records["server_ms"], 12))
    assert set(used) == set(samples)


def _one_query_for(model: int) -> dict:
    return {"kind": "trace", "trace_times_ms": [0.0, 0.001], "trace_models": [model, model]}


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("n_experts", [64, 100])
def test_an_expert_past_bit_63_answers_with_its_own_bit(engine, n_experts):
    """64 servers need bit 63 of an answer mask, 100 servers bit 99 (past int64: a query for expert 63 used to
    crash with an OverflowError after simulating, then such deployments were refused)."""
    top = n_experts - 1
    rec = sim.simulate({"n_experts": n_experts, "r": 0, "traffic": _one_query_for(top)}, seed=0, engine=engine).records
    assert rec["answer_mask"].tolist() == [1 << top, 1 << top]
    assert rec["servers_used"].tolist() == [str(top), str(top)]


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_sixty_three_servers_the_top_server_answers_with_its_own_bit(engine):
    """62 experts + 1 replica of expert 0 (server 62): the second of two back-to-back queries for expert 0
    joins the replica's empty queue, so server 62 answers it."""
    cfg = {
        "n_experts": 62,
        "r": 1,
        "traffic": _one_query_for(0),
        "policies": [{"kind": "replication", "dispatch": "jsq"}],
    }
    rec = sim.simulate(cfg, seed=0, engine=engine).records
    assert rec["servers_used"].tolist() == ["0", "62"]
    assert rec["answer_mask"].tolist() == [1, 1 << 62]
    assert rec["answered_by"].tolist() == ["direct", "replica"]
