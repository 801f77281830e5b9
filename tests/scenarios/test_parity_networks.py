"""The parity policy judged on real parity networks: exact for a linear expert whose parity network is itself (no
bias: f(x₁ + x₂) = f(x₁) + f(x₂)), and end to end on the tiny zoo, every parity-decoded answer recomputed in the
test from the saved expert outputs and a parity network trained again from the same seed."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from scenarios.parity_join import judge_parity_answers
from scenarios.points import AnswerTables
from scenarios.runner import run_scenario
from scenarios.schema import ScenarioError, scenario_from_dict
from sim import parse_config
from tests.conftest import tiny_zoo_table


def test_a_linear_experts_parity_network_decodes_its_own_output_exactly():
    # one expert f(x) = W x on 4-pixel inputs, 3 classes; its parity network for pairs is f itself
    torch.manual_seed(0)
    expert = nn.Linear(4, 3, bias=False).double()
    inputs = torch.randn(6, 4, dtype=torch.float64)
    with torch.no_grad():
        outs = expert(inputs).numpy()
    labels = np.array([0, 1, 2, 0, 1, 2])
    answers = AnswerTables(labels, np.array([0, 6]), outs[None], np.zeros((1, 6, 3)), np.array([[1.0]]))
    config = parse_config({"n_experts": 1, "r": 1, "n_queries": 10, "traffic": {"rate_per_ms": 0.1},
                           "policies": ["uncoded", {"kind": "parity", "dispatch": "expert", "k": 3}]})
    # queries 0-2 of the parity policy: 0 decoded from 1 and 2 (a full group of 3), 2 decoded from 1 (a partial
    # pair); query 1 direct
    records = pd.DataFrame({
        "policy": pd.Categorical(["uncoded"] * 3 + ["parity-expert"] * 3),
        "query_id": [0, 1, 2] * 2, "model": 0, "sample_id": [4, 5, 1] * 2, "warmup": False,
        "answered_by": ["direct"] * 3 + ["decoded", "direct", "decoded"],
        "parity_others": [np.nan] * 3 + ["1,2", "", "1"],
        "latency_ms": 1.0, "n_tasks": 1, "server_ms": 1.0,
    })
    own_right = outs.argmax(-1) == labels
    records["correct"] = np.r_[own_right[[4, 5, 1]], [False, own_right[5], False]]  # decoded rows not judged yet
    records["agrees_with_expert"] = [True] * 4 + [True, False]
    summary = {"uncoded": {"mean_ms": 1.0}, "parity-expert": {"mean_ms": 1.0}}
    judged, new_summary = judge_parity_answers(records, summary, config, answers, {(3, 0): expert},
                                               [inputs])
    parity_rows = judged[judged["policy"] == "parity-expert"]
    assert parity_rows["correct"].tolist() == own_right[[4, 5, 1]].tolist()  # decoded = the expert's own output
    assert parity_rows["agrees_with_expert"].tolist() == [True, True, True]
    assert new_summary["parity-expert"]["accuracy_pct"] == pytest.approx(100 * own_right[[4, 5, 1]].mean())
    assert new_summary["parity-expert"]["accuracy_vs_uncoded_pct"] == pytest.approx(0.0)
    assert new_summary["parity-expert"]["mean_ms"] == 1.0  # the simulator's numbers stay
    assert not records["correct"].iloc[3]  # the caller's frame is left alone


def _raw(cache_dir) -> dict:
    return {"name": "tiny-parity", "seed": 0, "device": "cpu", "models": tiny_zoo_table(cache_dir),
            "coding": {"method": "coin", "samples": 50, "parity_epochs": 3},
            "profile": {"warmup": 2, "samples": 30, "live_check_queries": 0, "latency_model": "compute"},
            "sim": {"r": 1, "n_queries": 1500, "traffic": {"kind": "poisson", "load": 0.25},
                    "policies": ["uncoded", {"kind": "parity", "dispatch": "expert", "k": 2}],
                    "stragglers": {"p": 0.1, "slowdown": 10.0}}}


def test_every_parity_decoded_answer_is_judged_on_its_groups_real_parity_output(tiny_cache, tiny_zoo, tmp_path):
    from coin.parity import train_parity

    folder = run_scenario(scenario_from_dict(_raw(tiny_cache)), _raw(tiny_cache), tmp_path, quiet=True)
    summary = json.loads((folder / "summary.json").read_text())
    assert [(row["k"], row["expert"], row["epochs"]) for row in summary["parity"]] == [(2, "low", 3), (2, "high", 3)]
    assert all(0 < row["degraded_accuracy_pct"] <= 100 and row["train_s"] > 0 for row in summary["parity"])
    queries = pd.read_parquet(folder / "queries.parquet")
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    outs, offsets, labels = saved["expert_outputs"], saved["offsets"], saved["labels"]
    parity = queries[queries["policy"] == "parity-expert"].set_index("query_id")
    decoded = parity[parity["answered_by"] == "decoded"]
    assert len(decoded) > 20
    networks = {i: train_parity(e.model, e.train_x, 2, "sum", init=copy.deepcopy(tiny_zoo.base), init_name="base",
                                epochs=3, seed=0).model for i, e in enumerate(tiny_zoo.experts)}
    for qid, row in decoded.iterrows():
        others = [int(q) for q in row["parity_others"].split(",")]
        assert all(parity.at[q, "model"] == row["model"] for q in others)  # one expert's group
        m, samples = int(row["model"]), [int(row["sample_id"]), *(int(parity.at[q, "sample_id"]) for q in others)]
        with torch.no_grad():
            out = networks[m](tiny_zoo.experts[m].test_x[samples].sum(0, keepdim=True)).double().numpy()[0]
        guess = (out - outs[m, offsets[m] + np.asarray(samples[1:])].sum(0)).argmax()
        assert bool(row["correct"]) == (guess == labels[offsets[m] + samples[0]]), qid
    measured = parity[~parity["warmup"]]
    assert summary["policies"]["parity-expert"]["accuracy_pct"] == pytest.approx(100 * measured["correct"].mean())


def test_parity_with_networks_groups_per_expert_and_is_served_on_the_testbed(tiny_cache, tmp_path):
    """Groups of one expert's queries only (a parity network is trained per expert); served for real, every
    parity-decoded answer is judged twice — on the outputs the servers sent (the parity server's output on the
    encoded group, less the companion's own output) and the simulator's way (the parity network run here on the
    group's inputs, less the answer table's output) — and the two judgements agree query for query."""
    raw = _raw(tiny_cache)
    raw["sim"]["policies"] = ["uncoded", {"kind": "parity", "k": 2}]
    with pytest.raises(ScenarioError, match="dispatch = 'expert'"):
        scenario_from_dict(raw)
    from scenarios.testbed_run import run_testbed

    raw = _raw(tiny_cache)
    raw["sim"].update({"n_queries": 400, "stragglers": {"p": 0.1, "slowdown": 20.0}})
    raw["profile"]["latency_model"] = "served"
    raw["testbed"] = {"repeats": 1, "lead_ms": 50.0}
    folder = run_testbed(scenario_from_dict(raw), raw, tmp_path / "out", quiet=True)
    measured = pd.read_parquet(folder / "testbed.parquet")
    parity = measured[measured["policy"] == "parity-expert"]
    decoded = parity[parity["parity_others"] != ""]
    assert len(decoded) >= 5 and (decoded["answered_by"] == "decoded").all()
    assert (parity.loc[parity["parity_others"] == "", "answered_by"] == "direct").all()
    assert (decoded["correct"] == decoded["correct_sim_join"]).all()
    tasks = pd.read_parquet(folder / "testbed_tasks.parquet")
    sent = tasks[(tasks["policy"] == "parity-expert") & (tasks["role"] == 5)]
    assert len(sent) >= len(parity) // 2 - 1 and set(sent["server"]) == {2} and set(sent["net"]) == {3, 4}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["accuracy"]["0"]["parity-expert"]["answers_agree_pct"] == 100.0