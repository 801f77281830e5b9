"""bench/repro_distill_resnet18.py end to end on the tiny session zoo (narrow CNN), P = 8, 2 distillation epochs."""

from __future__ import annotations

import importlib.util
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch

import coin
from scenarios.coding import CSV_FIELDS

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "repro_distill_resnet18.py"


@pytest.fixture(scope="module")
def repro():
    spec = importlib.util.spec_from_file_location("repro_distill_resnet18", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(repro, tiny_zoo):
    return repro.code_zoo(tiny_zoo, samples=[8], methods=["coin", "regmean", "distill", "vanilla"],
                          distill_epochs=2, keep_models=True, progress=False)


def test_tables_have_the_project_columns_and_plausible_values(result):
    records = pd.DataFrame(result["records"])
    assert tuple(records.columns) == CSV_FIELDS  # same layout as `coinsim code`'s nda.csv
    assert len(records) == 4 * 2  # methods × experts
    runs = pd.DataFrame(result["runs"])
    assert list(runs["method"]) == ["coin", "regmean", "distill", "vanilla"]
    for col in ("train_nda_pct", "test_nda_pct", "encode_s"):
        assert runs[col].map(math.isfinite).all(), col
    assert runs["train_nda_pct"].between(0, 150).all() and runs["test_nda_pct"].between(20, 150).all()
    assert (runs["encode_s"] > 0).all()
    epochs = pd.DataFrame(result["epochs"])
    assert list(epochs["epoch"]) == [0, 1, 2]
    assert epochs[["train_nda_pct", "test_nda_pct"]].map(math.isfinite).all().all()


def test_train_nda_is_measured_on_the_p_samples_and_test_nda_on_the_test_partitions(result, tiny_zoo):
    x, y, owner = result["models"][(8, "samples")]
    pools = [(e.train_x, e.train_y) for e in tiny_zoo.experts]
    x_ref, y_ref, owner_ref = coin.draw_coding_samples(pools, 8, tiny_zoo.config.seed)
    assert torch.equal(x.cpu(), x_ref) and torch.equal(y, y_ref) and owner.bincount().tolist() == [4, 4]

    beta = torch.tensor([0.5, 0.5], dtype=torch.float64)
    student = result["models"][(8, "distill")]
    outs = [coin.outputs(m, x) for m in tiny_zoo.models]
    on_p = coin.score_outputs(coin.outputs(student, x), outs, beta, y, owner)["nda"]
    tests = [(e.test_x, e.test_y) for e in tiny_zoo.experts]
    on_test = statistics.fmean(r.nda for r in coin.evaluate(student, tiny_zoo.models, beta, tests))
    last = result["epochs"][-1]
    run = next(r for r in result["runs"] if r["method"] == "distill")
    assert last["train_nda_pct"] == pytest.approx(on_p) and run["train_nda_pct"] == pytest.approx(on_p)
    assert last["test_nda_pct"] == pytest.approx(on_test) and run["test_nda_pct"] == pytest.approx(on_test)

    # epoch 0 is the β-average distillation starts from, i.e. what vanilla averaging gives
    vanilla = next(r for r in result["runs"] if r["method"] == "vanilla")
    assert result["epochs"][0]["train_nda_pct"] == pytest.approx(vanilla["train_nda_pct"])
    assert result["epochs"][0]["test_nda_pct"] == pytest.approx(vanilla["test_nda_pct"])


def test_summary_helpers(repro, result):
    runs = pd.DataFrame(result["runs"])
    table = repro.nda_vs_p(runs)
    assert list(table.index) == [8] and set(table.columns) == {"coin", "regmean", "distill", "vanilla"}
    per_epoch = repro.epoch_table(pd.DataFrame(result["epochs"]), 8)
    assert list(per_epoch.index) == [0, 1, 2]
    assert list(per_epoch.columns) == ["train_nda_pct", "test_nda_pct", "train_loss"]


def test_a_method_trained_on_the_pools_runs_once_on_every_training_query(repro, tiny_zoo):
    """`learned` is handed every training query (not P) and is trained once however many P the run sweeps."""
    res = repro.code_zoo(tiny_zoo, samples=[4, 8], methods=["vanilla", "learned"], keep_models=True,
                         progress=False)
    runs = pd.DataFrame(res["runs"])
    total = sum(len(e.train_y) for e in tiny_zoo.experts)
    assert runs[runs["method"] == "vanilla"]["samples"].tolist() == [4, 8]
    assert runs[runs["method"] == "learned"]["samples"].tolist() == [total]
    assert (4, "learned") in res["models"] and (8, "learned") not in res["models"]
    x, _, _ = coin.coding_samples(coin.get_method("learned"), [(e.train_x, e.train_y) for e in tiny_zoo.experts], 4, 0)
    beta = torch.tensor([0.5, 0.5], dtype=torch.float64)
    outs = [coin.outputs(m, x) for m in tiny_zoo.models]
    y = torch.cat([e.train_y for e in tiny_zoo.experts])
    owner = torch.cat([torch.full((len(e.train_y),), i) for i, e in enumerate(tiny_zoo.experts)])
    on_pools = coin.score_outputs(coin.outputs(res["models"][(4, "learned")], x), outs, beta, y, owner)["nda"]
    assert runs[runs["method"] == "learned"]["train_nda_pct"].item() == pytest.approx(on_pools)
