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
                                           test_y=model(sx).argmax(-1).detach()))
        return SimpleNamespace(base=base, experts=experts, models=[e.model for e in experts])

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
    data = json.loads((tmp_path / "coding.json").read_text())
    assert len(data["summary"]) == 5 and data["beta"] == [0.5, 0.5]
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_code_distill_history_and_sweep(fake_zoo, tmp_path):
    res = CliRunner().invoke(code, ["--methods", "distill,coin", "-P", "8,12", "--out", str(tmp_path),
                                    "--lambda-study"])
    assert res.exit_code == 0, res.output
    epochs = list(csv.DictReader(open(tmp_path / "distill_epochs.csv")))
    assert len(epochs) == 2 * 20 and "test_nda" in epochs[0] and "train_nda" in epochs[0]
    data = json.loads((tmp_path / "coding.json").read_text())
    coin_runs = [r for r in data["runs"] if r["method"] == "coin"]
    assert all("test_nda" in g for r in coin_runs for g in r["info"]["grid"])


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
