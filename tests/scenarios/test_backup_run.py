"""The generalist backup end to end on the tiny zoo: its outputs are a real forward pass of the network the
backup servers host, every backup answer in queries.parquet is that network's argmax, and its name is
checked before any work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import accel
import coin
from scenarios.runner import build_point_configs, prepare_networks, run_scenario
from scenarios.schema import ScenarioError, scenario_from_dict
from tests.conftest import tiny_zoo_table

POLICIES = ["uncoded", {"kind": "coded", "dispatch": "hedged", "delay_ms": "p50"},
            {"kind": "backup", "dispatch": "hedged", "delay_ms": "p50"}]


def _raw(cache_dir, **coding) -> dict:
    return {
        "name": "tinybackup",
        "seed": 0,
        "device": "cpu",
        "models": tiny_zoo_table(cache_dir),
        "coding": {"method": "coin", "compare": ["vanilla"], "samples": 50, **coding},
        "profile": {"warmup": 2, "samples": 30},
        "sim": {"r": 1, "n_queries": 2000, "policies": POLICIES,
                "traffic": {"kind": "poisson", "load": 0.15, "ensemble_rate_per_ms": 0.0},  # far from capacity even
                # with p = 0.2 stragglers x10 and a noisy 30-sample profile
                "stragglers": {"p": 0.2, "slowdown": 10.0}},
    }


def _forward(model: torch.nn.Module, facts) -> np.ndarray:
    return coin.outputs(model, torch.cat(facts.test_inputs)).numpy()


def test_the_default_generalist_is_the_coded_model_and_answers_undecoded(tmp_path, tiny_cache):
    raw = _raw(tiny_cache)
    scenario = scenario_from_dict(raw)
    facts = prepare_networks(scenario, quiet=True)
    assert facts.backup_name == "coin" and "backup" not in facts.profile_ms and "backup" not in facts.served
    np.testing.assert_allclose(facts.answers.backup_outs, _forward(facts.coded_models[0], facts), atol=1e-5)
    (_, config), = build_point_configs(scenario, facts)
    assert config.service.backup is None  # the backup servers take the coded network's measured passes
    assert config.service.backup_dist().samples_ms == config.service.coded.samples_ms

    folder = run_scenario(scenario, raw, tmp_path / "out", quiet=True)
    summary = json.loads((folder / "summary.json").read_text())
    queries = pd.read_parquet(folder / "queries.parquet")
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    labels, offsets, generalist = saved["labels"], saved["offsets"], saved["backup_outputs"]
    np.testing.assert_array_equal(generalist, saved["coded_outputs"][0])
    assert summary["backup"]["method"] == "coin" and summary["backup"]["network"] == "coded"
    assert summary["versions"]["engine"] == accel.status()  # which engine computed the numbers
    stats = summary["policies"]["backup"]
    backup = queries[(queries["policy"] == "backup") & (queries["answered_by"] == "backup")]
    assert len(backup) > 50 and stats["backup_pct"] > 0
    rows = offsets[backup["model"].to_numpy()] + backup["sample_id"].to_numpy()
    # a backup answer to a routed query: the generalist's best class among the routed expert's own labels
    tasks = [e["labels"] for e in raw["models"]["experts"]]

    def task_argmax(model: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.array([tasks[m][int(np.argmax(generalist[r, tasks[m]]))] for m, r in zip(model, index, strict=True)])

    answer = task_argmax(backup["model"].to_numpy(), rows)
    assert (answer != generalist[rows].argmax(-1)).any()  # the task restriction matters on this zoo
    assert (backup["correct"].to_numpy() == (answer == labels[rows])).all()
    own = saved["expert_outputs"][backup["model"].to_numpy(), rows].argmax(-1)
    assert (backup["agrees_with_expert"].to_numpy() == (answer == own)).all()
    measured = backup[~backup["warmup"]]
    assert stats["backup_accuracy_pct"] == pytest.approx(measured["correct"].mean() * 100)
    assert stats["backup_agreement_pct"] == pytest.approx(measured["agrees_with_expert"].mean() * 100)
    for name, acc in summary["backup"]["accuracy_pct"].items():
        i = [e["name"] for e in summary["experts"]].index(name)
        part = slice(offsets[i], offsets[i + 1])
        part_rows = np.arange(offsets[i], offsets[i + 1])
        assert acc == pytest.approx((task_argmax(np.full(len(part_rows), i), part_rows) == labels[part]).mean() * 100)
        every = summary["backup"]["accuracy_all_classes_pct"][name]
        assert every == pytest.approx((generalist[part].argmax(-1) == labels[part]).mean() * 100)
    for gone in ("frac_backup", "decoded_fraction", "utilization", "extra_load_vs_uncoded"):
        assert gone not in stats


def test_a_named_generalist_is_its_own_network_profiled_as_backup(tmp_path, tiny_cache):
    """coding.backup = task_arithmetic (not the coded method, not compared): encoded once, run on every test
    row, and profiled on its own; its outputs differ from the coded model's."""
    raw = _raw(tiny_cache, backup="task_arithmetic")
    scenario = scenario_from_dict(raw)
    facts = prepare_networks(scenario, quiet=True)
    generalist = facts.served["backup"]
    assert generalist is not facts.coded_models[0] and facts.backup_name == "task_arithmetic"
    np.testing.assert_allclose(facts.answers.backup_outs, _forward(generalist, facts), atol=1e-5)
    assert not np.allclose(facts.answers.backup_outs, facts.answers.coded_outs[0], atol=1e-3)
    assert set(facts.profile_ms) == {"low", "high", "coded", "backup"}
    (_, config), = build_point_configs(scenario, facts)
    assert config.service.backup.samples_ms == tuple(sorted(facts.profile_ms["backup"].tolist()))

    folder = run_scenario(scenario, raw, tmp_path / "out", quiet=True)
    # replaying that folder's profile needs the generalist's samples too; a folder without them is refused
    again = dict(raw, profile={"replay": str(folder)})
    assert scenario_from_dict(again).profile.replay is not None
    coded_only = tmp_path / "coded-only"
    coded_only.mkdir()
    profile = pd.read_csv(folder / "profile.csv")
    profile[profile["model"] != "backup"].to_csv(coded_only / "profile.csv", index=False)
    with pytest.raises(ScenarioError, match="no samples for backup"):
        scenario_from_dict(dict(raw, profile={"replay": str(coded_only)}))


def test_an_unknown_generalist_method_fails_before_any_work(tiny_cache):
    with pytest.raises(ScenarioError, match="coding.backup: unknown method 'oracle'"):
        scenario_from_dict(_raw(tiny_cache, backup="oracle"))


def test_the_testbed_accepts_the_backup_policy(tmp_path, tiny_cache):
    from scenarios.testbed_run import check_testbed

    check_testbed(scenario_from_dict(_raw(tiny_cache)), tmp_path / "out")  # served for real (tests/testbed)
    assert not (tmp_path / "out").exists()
