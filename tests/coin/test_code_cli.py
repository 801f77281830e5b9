"""`coinsim code` on a stand-in zoo of tiny networks (the real zoo is exercised by the reproductions)."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from conftest import make_mlp, perturbed

import coin
from scenarios.coding import code


@pytest.fixture
def fake_zoo(monkeypatch):
    calls = []

    def build_zoo(config, device="auto", progress=True):
        calls.append(config.seed)
        base = make_mlp(config.seed)
        experts = []
        for i in range(2):
            gen = torch.Generator().manual_seed(100 * config.seed + i)
            tx, ty = torch.randn(40, 6, generator=gen), torch.randint(0, 4, (40,), generator=gen)
            model = perturbed(base, 10 * config.seed + i + 1, scale=0.1)
            sx = torch.randn(30, 6, generator=gen)
            experts.append(SimpleNamespace(name=f"e{i}", model=model, train_x=tx, train_y=ty, test_x=sx,
                                           test_y=model(sx).argmax(-1).detach(), partition=f"p{i}",
                                           accuracy=100.0))
        return SimpleNamespace(base=base, experts=experts, models=[e.model for e in experts],
                               device=torch.device("cpu"))

    monkeypatch.setattr("models.zoo.build_zoo", build_zoo)
    return calls


def test_code_prints_table_and_writes_files(fake_zoo, tmp_path):
    res = CliRunner().invoke(code, ["quickstart", "--methods", "coin,vanilla,task_arithmetic,regmean,fisher",
                                    "--samples", "12", "--seeds", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert fake_zoo == [0, 1]
    for m in ("coin", "vanilla", "task_arithmetic", "regmean", "fisher"):
        assert m in res.output
    assert "avg NDA" in res.output and "±" in res.output
    rows = list(csv.DictReader(open(tmp_path / "nda.csv")))
    assert len(rows) == 2 * 5 * 2
    assert {r["name"] for r in rows} == {"e0", "e1"}
    assert {"nda_pct", "decoded_acc_pct", "expert_acc_pct", "encode_s"} <= set(rows[0])  # issue 11 names
    data = json.loads((tmp_path / "coding.json").read_text())
    assert len(data["summary"]) == 5 and data["beta"] == [0.5, 0.5]
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_code_distill_history_and_sweep(fake_zoo, tmp_path):
    res = CliRunner().invoke(code, ["--methods", "distill,coin", "-P", "8,12", "--out", str(tmp_path),
                                    "--lambda-study"])
    assert res.exit_code == 0, res.output
    epochs = list(csv.DictReader(open(tmp_path / "distill_epochs.csv")))
    assert len(epochs) == 2 * 20 and "test_nda_pct" in epochs[0] and "train_nda_pct" in epochs[0]
    data = json.loads((tmp_path / "coding.json").read_text())
    coin_runs = [r for r in data["runs"] if r["method"] == "coin"]
    assert all("test_nda_pct" in g for r in coin_runs for g in r["info"]["grid"])


@pytest.mark.parametrize("args,exc,word", [
    (["--methods", "coin,magic"], coin.CodingError, "magic"),
    (["--samples", "100000"], coin.CodingError, "exceeds"),
    (["--beta", "0.7,0.7"], coin.CodingError, "sum to 1"),
    (["--beta", "-0.5,1.5"], coin.CodingError, "positive"),
])
def test_code_bad_input_is_one_line_error(fake_zoo, tmp_path, args, exc, word):
    res = CliRunner().invoke(code, [*args, "--out", str(tmp_path)])
    assert isinstance(res.exception, exc) and word in str(res.exception) and "\n" not in str(res.exception)
    if word != "exceeds":
        assert fake_zoo == []  # rejected before any model is built


def test_code_usage_errors_exit_2(fake_zoo, tmp_path):
    for args in (["--seeds", "0"], ["--samples", "abc"], ["--set", "oops"]):
        res = CliRunner().invoke(code, [*args, "--out", str(tmp_path)])
        assert res.exit_code == 2, (args, res.output)
    assert fake_zoo == []


def test_code_runs_ties_dare_and_the_ensemble_ceiling(fake_zoo, tmp_path):
    res = CliRunner().invoke(code, ["--methods", "ties,dare,ensemble,vanilla", "-P", "12", "--seeds", "2",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "nda.csv")))
    assert {r["method"] for r in rows} == {"ties", "dare", "ensemble", "vanilla"} and len(rows) == 2 * 4 * 2
    # the fake experts' test labels are their own predictions: the exact ensemble decodes every one of them
    assert all(float(r["nda_pct"]) == 100.0 for r in rows if r["method"] == "ensemble")
    runs = json.loads((tmp_path / "coding.json").read_text())["runs"]
    ties = [r["info"] for r in runs if r["method"] == "ties"]
    dare = [r["info"] for r in runs if r["method"] == "dare"]
    assert len(ties) == len(dare) == 2
    assert all(0 < i["k"] <= 1 and i["lam"] > 0 and len(i["grid"]) == 120 for i in ties)
    assert [i["seed"] for i in dare] == [0, 1] and all(0 < i["p"] < 1 for i in dare)


def test_scenario_compare_accepts_the_new_methods_and_serves_the_ensemble(fake_zoo, monkeypatch):
    """`coding.compare` validates against the registry, and the runner codes with each method; with
    `coding.method = "ensemble"` the parity server hosts the ensemble and every decoded answer is exact."""
    from scenarios.runner import prepare_networks
    from scenarios.schema import ScenarioError, scenario_from_dict
    from tests.conftest import tiny_zoo_table

    raw = {"name": "t", "seed": 0, "device": "cpu", "models": tiny_zoo_table("/nonexistent"),
           "coding": {"method": "ensemble", "compare": ["ties", "dare", "vanilla"], "samples": 12},
           "profile": {"warmup": 1, "samples": 5},
           "sim": {"r": 1, "n_queries": 100, "policies": ["uncoded"], "traffic": {"kind": "poisson", "load": 0.3}}}
    scenario = scenario_from_dict(raw)
    with pytest.raises(ScenarioError, match="magic"):
        scenario_from_dict({**raw, "coding": {"method": "coin", "compare": ["ties", "magic"]}})
    facts = prepare_networks(scenario, quiet=True)
    assert list(dict.fromkeys(facts.nda["method"])) == ["ensemble", "ties", "dare", "vanilla"]
    assert (facts.nda.loc[facts.nda["method"] == "ensemble", "nda_pct"] == 100.0).all()
    assert facts.coded_name == "ensemble" and "coded" in facts.profile_ms


def test_parity_trains_scores_and_writes_its_table(fake_zoo, tmp_path):
    from scenarios.coding import parity

    res = CliRunner().invoke(parity, ["--k", "2,3", "--inits", "scratch,base", "--epochs", "3",
                                      "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "parity.csv")))
    assert len(rows) == 2 * 2 * 2  # experts x k x starts
    assert {(r["name"], r["k"], r["init"]) for r in rows} == {(e, k, i) for e in ("e0", "e1") for k in ("2", "3")
                                                             for i in ("scratch", "base")}
    for r in rows:
        # the stand-in experts' labels are their own argmax: an expert is 100 % right on its queries
        assert float(r["expert_accuracy_pct"]) == 100.0 and int(r["train_samples"]) == 40 and r["epochs"] == "3"
        assert 0 <= float(r["degraded_accuracy_pct"]) <= 100 and float(r["train_s"]) > 0
        assert int(r["n"]) == 30 // int(r["k"]) * int(r["k"])
    assert "degraded acc %" in res.output


@pytest.mark.parametrize("args, word", [(["--k", "1"], "k ≥ 2"), (["--encoders", "xor"], "encoder"),
                                        (["--inits", "warm"], "start"), (["--epochs", "0"], "epochs")])
def test_parity_bad_input_is_refused_before_training(fake_zoo, tmp_path, args, word):
    from scenarios.cli import cli

    res = CliRunner().invoke(cli, ["parity", *args, "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and word in res.output and fake_zoo == []
    assert not (tmp_path / "p").exists()
