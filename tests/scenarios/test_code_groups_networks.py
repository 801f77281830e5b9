"""Code groups with real networks: four tiny experts in two code groups, each group coded on its own. Every
decoded answer is recomputed from the saved outputs alone — from its own group's coded output and experts, by the
group's weights — and the coding matrix, NDA table and generalist backup are checked against what a group code is.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scenarios.runner import run_scenario
from scenarios.schema import ScenarioError, scenario_from_dict
from tests.conftest import tiny_zoo_table

GROUPS = [[0, 2], [1, 3]]


def _raw(cache_dir) -> dict:
    experts = [{"name": name, "dataset": "mnist5k", "labels": labels}
               for name, labels in (("a", [0, 1, 2]), ("b", [3, 4]), ("c", [5, 6, 7]), ("d", [8, 9]))]
    return {
        "name": "tiny-groups",
        "seed": 0,
        "device": "cpu",
        "models": tiny_zoo_table(cache_dir, experts=experts),
        "coding": {"method": "coin", "samples": 60},
        "profile": {"warmup": 2, "samples": 30, "live_check_queries": 0, "latency_model": "compute"},
        "sim": {
            "r": 1,
            "n_queries": 2000,
            "policies": ["uncoded", {"kind": "coded", "dispatch": "redundant"}, {"kind": "backup"}],
            "traffic": {"kind": "poisson", "load": 0.2, "ensemble_rate_per_ms": 0.05},
            "stragglers": {"p": 0.2, "slowdown": 10.0},
            "deployment": {"groups": GROUPS},
        },
    }


@pytest.fixture(scope="module")
def grouped_run(tiny_cache, tmp_path_factory):
    raw = _raw(tiny_cache)
    folder = run_scenario(scenario_from_dict(raw), raw, tmp_path_factory.mktemp("groups"), quiet=True)
    return folder, pd.read_parquet(folder / "queries.parquet")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_each_group_is_coded_from_its_own_experts_only(grouped_run):
    folder, _ = grouped_run
    summary = json.loads((folder / "summary.json").read_text())
    matrix = np.array(summary["coding_matrix"])
    # coded server g codes group g: weight 1/2 on each of its two experts, nothing on the other group's
    assert matrix.tolist() == [[0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.5]]
    assert summary["deployment"]["groups"] == GROUPS and summary["deployment"]["servers"] == 6
    assert set(summary["coding"]["coin"]["nda_pct"]) == {"a", "b", "c", "d"}  # each decoded within its group
    nda = pd.read_csv(folder / "nda.csv")
    assert summary["coding"]["coin"]["encode_s"] == pytest.approx(
        nda.drop_duplicates("code_group")["encode_s"].sum())  # both groups' coding, not the first one's
    assert nda.groupby("code_group")["expert"].apply(sorted).tolist() == [["a", "c"], ["b", "d"]]
    assert "multi_decode" not in summary  # one coded model per group: nothing to decode several at once
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    experts, coded, offsets, labels = (saved[k] for k in ("expert_outputs", "coded_outputs", "offsets", "labels"))
    # a coded model that merged only its group's experts predicts their sum far better than the other group's
    for g, members in enumerate(GROUPS):
        others = GROUPS[1 - g]
        own = np.abs(coded[g] - experts[members].mean(0)).mean()
        other = np.abs(coded[g] - experts[others].mean(0)).mean()
        assert own < 0.5 * other, (g, own, other)
    # the generalist a backup server hosts covers every task: it is no group's coded model
    backup = saved["backup_outputs"]
    assert not np.allclose(backup, coded[0]) and not np.allclose(backup, coded[1])
    rows = np.arange(offsets[-1])
    assert (backup.argmax(-1) == labels[rows]).mean() > 0.5


def test_every_decoded_answer_uses_its_group_and_is_judged_on_its_own_outputs(grouped_run):
    folder, queries = grouped_run
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    labels, offsets, experts = saved["labels"], saved["offsets"], saved["expert_outputs"]
    coded, matrix = saved["coded_outputs"], saved["coding_matrix"]
    group_of = {i: g for g, m in enumerate(GROUPS) for i in m}
    coded_server = {4: 0, 5: 1}  # servers 0-3 the experts, then one coded server per group
    checked = {"routed": 0, "ensemble": 0}
    for row in queries[queries["policy"] == "coded"].itertuples():
        servers = [int(s) for s in row.servers_used.split(",")]
        if row.answered_by != "decoded":
            continue
        if row.model >= 0:
            index = offsets[row.model] + row.sample_id
            g = group_of[row.model]
            assert all(s in coded_server and coded_server[s] == g or group_of[s] == g for s in servers), row
            k = coded_server[next(s for s in servers if s in coded_server)]
            (partner,) = [j for j in GROUPS[g] if j != row.model]
            decoded = (coded[k, index] - matrix[k, partner] * experts[partner, index]) / matrix[k, row.model]
            assert (decoded.argmax() == labels[index]) == row.correct, row
            checked["routed"] += 1
        else:
            index = row.sample_id
            outs = experts[:, index].copy()
            for g, members in enumerate(GROUPS):
                missing = [j for j in members if j not in servers]
                assert len(missing) <= 1 and (not missing or 4 + g in servers), row
                if missing:
                    (m,) = missing
                    (partner,) = [j for j in members if j != m]
                    outs[m] = (coded[g, index] - matrix[g, partner] * experts[partner, index]) / matrix[g, m]
            assert (_softmax(outs).sum(0).argmax() == labels[index]) == row.correct, row
            checked["ensemble"] += 1
    assert checked["routed"] > 20 and checked["ensemble"] > 0, checked


def test_groups_of_one_expert_and_one_code_over_groups_are_refused(tmp_path):
    raw = _raw(tmp_path)
    with pytest.raises(ScenarioError, match="every code group needs at least 2 experts"):
        scenario_from_dict({**raw, "sim": {**raw["sim"], "deployment": {"groups": [[0], [1, 2, 3]]}}})
    with pytest.raises(ScenarioError, match="coding.betas gives one code over all experts"):
        scenario_from_dict({**raw, "coding": {"method": "coin", "betas": [[0.25] * 4]}})


def test_r_following_the_fleet_size_codes_for_the_largest_point_and_decodes_by_row(tiny_cache, tmp_path):
    # one instance per expert and r = 1, then two each and r = 2: two coded models are built (Cauchy rows), the
    # small point's coded server runs row 0 and the large point's k-th coded server row k
    raw = {"name": "tiny-fleet", "seed": 0, "device": "cpu", "models": tiny_zoo_table(tiny_cache),
           "coding": {"method": "coin", "samples": 50},
           "profile": {"warmup": 2, "samples": 30, "live_check_queries": 0, "latency_model": "compute"},
           "sim": {"r": 1, "n_queries": 1500, "traffic": {"kind": "poisson", "load": 0.3},
                   "policies": ["uncoded", {"kind": "coded", "dispatch": "redundant"}],
                   "stragglers": {"p": 0.2, "slowdown": 10.0}, "deployment": {"balancer": "jsq"}},
           "sweep": {"axis": "deployment.instances", "values": [1, 2], "follow": {"r": [1, 2]}}}
    folder = run_scenario(scenario_from_dict(raw), raw, tmp_path, quiet=True)
    assert json.loads((folder / "summary.json").read_text())["sweep_axes"] == ["deployment_instances"]
    queries = pd.read_parquet(folder / "queries.parquet")
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    labels, offsets, experts = saved["labels"], saved["offsets"], saved["expert_outputs"]
    coded, matrix = saved["coded_outputs"], saved["coding_matrix"]
    assert matrix.shape == (2, 2) and coded.shape[0] == 2
    used_rows = set()
    for point, n_base in ((0, 2), (1, 4)):
        rows = queries[(queries["point"] == point) & (queries["answered_by"] == "decoded")]
        assert len(rows) > 10
        for row in rows.itertuples():
            servers = [int(s) for s in row.servers_used.split(",")]
            (k,) = [s - n_base for s in servers if s >= n_base]  # fanout 1: one coded server, row k
            used_rows.add((point, k))
            index = offsets[row.model] + row.sample_id
            other = 1 - row.model
            decoded = (coded[k, index] - matrix[k, other] * experts[other, index]) / matrix[k, row.model]
            assert (decoded.argmax() == labels[index]) == row.correct, row
    assert used_rows == {(0, 0), (1, 0), (1, 1)}


def test_per_group_backups_answer_their_own_groups_queries_with_their_groups_coded_model(tiny_cache, tmp_path):
    """Per-group backups: a group's backup server hosts that group's coded model; a query's backup copy goes to
    its own group's backup, and its answer is judged on that coded model's output (argmax over the routed
    expert's classes) — recomputed here from outputs.npz."""
    raw = _raw(tiny_cache)
    raw["sim"].update({"policies": ["uncoded", {"kind": "backup", "delay_ms": 1.0}],
                       "traffic": {"kind": "poisson", "load": 0.2},
                       "deployment": {"groups": GROUPS, "backups": "per_group"}})
    folder = run_scenario(scenario_from_dict(raw), raw, tmp_path, quiet=True)
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    coded, offsets, labels, backup = (saved[k] for k in ("coded_outputs", "offsets", "labels", "backup_outputs"))
    group_of = {i: g for g, members in enumerate(GROUPS) for i in members}
    for i in range(4):  # expert i's rows: its own group's coded model (r = 1: coded model g)
        rows = slice(offsets[i], offsets[i + 1])
        np.testing.assert_array_equal(backup[rows], coded[group_of[i]][rows])
    queries = pd.read_parquet(folder / "queries.parquet")
    answered = queries[(queries["policy"] == "backup") & (queries["answered_by"] == "backup")]
    assert len(answered) > 20
    for model, server in ((m, int(s)) for m, s in zip(answered["model"], answered["servers_used"], strict=True)):
        assert server == 4 + group_of[int(model)]  # servers 0-3 experts, then one backup per group
    summary = json.loads((folder / "summary.json").read_text())
    classes = {0: [0, 1, 2], 1: [3, 4], 2: [5, 6, 7], 3: [8, 9]}
    for _, q in answered.iterrows():
        row = offsets[int(q["model"])] + int(q["sample_id"])
        want = classes[int(q["model"])][int(np.argmax(backup[row, classes[int(q["model"])]]))] == labels[row]
        assert bool(q["correct"]) == want
    assert summary["policies"]["backup"]["backup_pct"] > 0


def test_cells_decode_from_their_own_cell_with_their_group_s_coded_model(tiny_cache, tmp_path):
    # four experts in two groups, two instances each in two cells: 8 instances, then one coded server per
    # (group, cell) — servers 8, 9 code group 0 in cells 0, 1 and servers 10, 11 code group 1 — all four running
    # their group's one coded model; a decoded answer is judged on that model's output, recomputed here
    raw = _raw(tiny_cache)
    raw["sim"] = {**raw["sim"], "n_queries": 1500, "policies": ["uncoded", {"kind": "coded", "dispatch": "redundant"}],
                  "traffic": {"kind": "poisson", "load": 0.2},
                  "deployment": {"groups": GROUPS, "instances": 2, "cells": 2}}
    folder = run_scenario(scenario_from_dict(raw), raw, tmp_path, quiet=True)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["deployment"]["servers"] == 12 and summary["deployment"]["cells"] == 2
    queries = pd.read_parquet(folder / "queries.parquet")
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    labels, offsets, experts = saved["labels"], saved["offsets"], saved["expert_outputs"]
    coded, matrix = saved["coded_outputs"], saved["coding_matrix"]
    assert coded.shape[0] == 2  # one coded model per group, whatever the cells
    group_of = {i: g for g, m in enumerate(GROUPS) for i in m}
    cell_of = {s: 0 for s in range(4)} | {s: 1 for s in range(4, 8)} | {8: 0, 9: 1, 10: 0, 11: 1}
    expert_of = {s: s % 4 for s in range(8)}
    coded_group = {8: 0, 9: 0, 10: 1, 11: 1}
    checked = 0
    for row in queries[(queries["policy"] == "coded") & (queries["answered_by"] == "decoded")].itertuples():
        servers = [int(s) for s in row.servers_used.split(",")]
        assert {cell_of[s] for s in servers} == {row.query_id % 2}, row
        index = offsets[row.model] + row.sample_id
        g = group_of[row.model]
        (c,) = [s for s in servers if s in coded_group]
        assert coded_group[c] == g and all(group_of[expert_of[s]] == g for s in servers if s < 8), row
        (partner,) = [j for j in GROUPS[g] if j != row.model]
        decoded = (coded[g, index] - matrix[g, partner] * experts[partner, index]) / matrix[g, row.model]
        assert (decoded.argmax() == labels[index]) == row.correct, row
        checked += 1
    assert checked > 20
