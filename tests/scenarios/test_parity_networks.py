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
from scenarios.schema import scenario_from_dict
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


def test_parity_groups_of_one_expert_and_of_any_are_served_on_the_testbed(tiny_cache, tmp_path):
    """Two parity policies served for real: pairs of one expert's queries (a parity network per expert) and groups
    of three in arrival order, closed after 2 ms (one network for mixed groups, partial groups in three places).
    Every parity-decoded answer is judged twice — on the outputs the servers sent (the parity server's output on
    the encoded group, less the companions' own outputs) and the simulator's way (the parity network run here on
    the group's inputs, less the answer table's outputs) — and the two judgements agree query for query.

    Served with the concat encoder, not the default sum: a frontend that dropped the scenario's encoder would send
    the sum byte and fail here. (The sum encoder is served in tests/testbed/test_testbed.py's parity trace, and a
    server encodes both in tests/testbed/test_server_frames.py.)"""
    from scenarios.testbed_run import run_testbed

    raw = _raw(tiny_cache)
    raw["coding"]["parity_encoder"] = "concat"
    # the stragglers stall (hold their server without computing): the same decodes as a computed x20, without the
    # 2.9x work that put the two cores at saturation, where a slower machine decoded 0-3 answers
    raw["sim"].update({"n_queries": 500, "stragglers": {"p": 0.1, "slowdown": 20.0, "hold": "stall"},
                       "policies": ["uncoded", {"kind": "parity", "dispatch": "expert", "k": 2},
                                    {"kind": "parity", "dispatch": "any", "k": 3, "group_timeout_ms": 2.0}]})
    raw["profile"]["latency_model"] = "served"
    raw["testbed"] = {"repeats": 1, "lead_ms": 50.0}
    folder = run_testbed(scenario_from_dict(raw), raw, tmp_path / "out", quiet=True)
    summary = json.loads((folder / "summary.json").read_text())
    measured = pd.read_parquet(folder / "testbed.parquet")
    tasks = pd.read_parquet(folder / "testbed_tasks.parquet")
    for name, nets in (("parity-expert", {3, 4}), ("parity", {5})):  # nets 0-2: experts, coded; "parity": any
        parity = measured[measured["policy"] == name]
        decoded = parity[parity["parity_others"] != ""]
        assert len(decoded) >= 5 and (decoded["answered_by"] == "decoded").all(), name
        assert (parity.loc[parity["parity_others"] == "", "answered_by"] == "direct").all()
        assert (decoded["correct"] == decoded["correct_sim_join"]).all(), name
        sent = tasks[(tasks["policy"] == name) & (tasks["role"] == 5)]
        assert set(sent["server"]) == {2} and set(sent["net"]) == nets, name
        assert summary["accuracy"]["0"][name]["answers_agree_pct"] == 100.0
    served = measured[measured["policy"] == "parity"]
    model_of = dict(zip(served["query_id"], served["model"], strict=True))
    mixed = served[served["parity_others"] != ""]
    companions = mixed["parity_others"].str.split(",")
    assert set(companions.map(len)) <= {1, 2} and companions.map(len).max() == 2  # groups of three, or fewer
    assert any(model_of[int(c)] != m for m, cs in zip(mixed["model"], companions, strict=True) for c in cs)


def test_a_mixed_groups_decode_subtracts_each_companions_own_experts_output():
    """Groups of any experts' queries: the companion's output comes from its own expert's table, the parity
    network sees the members' inputs in k places (a partial group leaves the last place zero)."""
    from scenarios.parity_join import MIXED, judge_decoded

    torch.manual_seed(3)
    experts = [nn.Linear(4, 3, bias=False).double() for _ in range(2)]
    parity = nn.Linear(4, 3).double()
    inputs = [torch.randn(5, 4, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        outs = np.stack([np.concatenate([e(x).numpy() for x in inputs]) for e in experts])  # (2, 10, 3)
    offsets = np.array([0, 5, 10])
    # query 0 (expert 0, sample 2) decoded with query 1 (expert 1, sample 3) in a group of k = 3
    records = pd.DataFrame({"query_id": [0, 1], "model": [0, 1], "sample_id": [2, 3],
                            "parity_others": ["1", ""]})
    with torch.no_grad():
        want = parity(inputs[0][2] + inputs[1][3]).numpy() - experts[1](inputs[1][3]).numpy()
        wrong = parity(inputs[0][2] + inputs[1][3]).numpy() - experts[0](inputs[1][3]).numpy()
    assert want.argmax() != wrong.argmax()  # the seed makes the companion's expert matter
    for label, right in ((want.argmax(), True), (wrong.argmax(), False)):
        labels = np.full(10, label)
        answers = AnswerTables(labels, offsets[:2], outs, np.zeros((1, 10, 3)), np.array([[0.5, 0.5]]))
        index, correct, _ = judge_decoded(records, 3, "any", "sum", answers, {(3, MIXED): parity}, inputs)
        assert list(index) == [0] and correct.tolist() == [right]
