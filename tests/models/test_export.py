"""`coinsim models export`: a trained zoo written as given networks runs to the same numbers, query for query."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w
import torch
from click.testing import CliRunner

from models.export import architecture_table, png_exact
from models.given_config import GivenArchitecture
from models.networks import NetworkSpec, build_network
from scenarios.cli import cli


def _scenario(cache_dir: Path) -> dict:
    """A tiny zoo with one expert on MNIST-5k (8-bit images → PNGs) and one on upsampled digits (→ .npz)."""
    return {
        "name": "roundtrip",
        "seed": 1,
        "device": "cpu",
        "models": {
            "network": {"arch": "cnn", "width": 8},
            "base": {"fraction": 0.3, "train": {"epochs": 2, "lr": 3e-3}},
            "finetune": {"epochs": 3, "lr": 2e-3},
            "experts": [{"name": "mnist 0-2", "dataset": "mnist5k", "labels": [0, 1, 2]},
                        {"name": "digits/3-5", "dataset": "digits", "labels": [3, 4, 5]}],
            "cache_dir": str(cache_dir),
        },
        "coding": {"method": "coin", "compare": ["vanilla"], "samples": 30},
        "profile": {"warmup": 1, "samples": 20},
        "sim": {"r": 1, "n_queries": 1500,
                "policies": ["uncoded", "replication", {"kind": "coded", "dispatch": "hedged", "delay_ms": "p95"}],
                "traffic": {"kind": "poisson", "load": 0.3}, "stragglers": {"p": 0.1, "slowdown": 10.0}},
    }


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, ["--threads", "1", "--quiet", *args])


def _result(out: Path) -> Path:
    return next(p for p in out.glob("*/*") if p.is_dir() and not p.name.startswith("."))


@pytest.mark.slow
def test_export_then_run_reproduces_nda_and_every_query(tmp_path):
    scenario = tmp_path / "roundtrip.toml"
    scenario.write_text(tomli_w.dumps(_scenario(tmp_path / "cache")))
    ran = _invoke(["run", str(scenario), "--out", str(tmp_path / "zoo"), "--no-report"])
    assert ran.exit_code == 0, ran.output
    first = _result(tmp_path / "zoo")

    exported = _invoke(["models", "export", str(scenario), "--out", str(tmp_path / "given")])
    assert exported.exit_code == 0, exported.output
    given = tmp_path / "given"
    written = tomllib.loads((given / "roundtrip-given.toml").read_text())
    experts = written["models"]["experts"]
    assert experts[0]["train"] == "data/mnist_0-2/train" and experts[1]["train"] == "data/digits_3-5/train.npz"
    assert written["models"]["architecture"]["factory"] == "models.networks:zoo_network"
    pngs = list((given / "data" / "mnist_0-2" / "test").glob("*/*.png"))
    assert {p.parent.name for p in pngs} == {"0", "1", "2"} and len(pngs) > 100
    assert {k: written[k] for k in ("seed", "coding", "profile", "sim")} == \
        {k: _scenario(tmp_path)[k] for k in ("seed", "coding", "profile", "sim")}

    again = _invoke(["run", str(given / "roundtrip-given.toml"), "--out", str(tmp_path / "rerun"), "--no-report",
                     "--set", f"profile.replay={first}"])
    assert again.exit_code == 0, again.output
    second = _result(tmp_path / "rerun")
    nda = [pd.read_csv(p / "nda.csv").drop(columns="encode_s") for p in (first, second)]
    pd.testing.assert_frame_equal(*nda, check_exact=True)
    assert (nda[0]["nda_pct"] > 0).all()
    queries = [pd.read_parquet(p / "queries.parquet") for p in (first, second)]
    assert len(queries[0]) == 3 * 1500
    pd.testing.assert_frame_equal(*queries, check_exact=True)
    with np.load(first / "outputs.npz") as a, np.load(second / "outputs.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_export_refuses_before_writing(tmp_path):
    scenario = tmp_path / "roundtrip.toml"
    scenario.write_text(tomli_w.dumps(_scenario(tmp_path / "cache")))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = _invoke(["models", "export", str(scenario), "--out", str(busy)])
    assert result.exit_code == 2 and "not an empty folder" in result.output
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "cache").exists(), "refused before training anything"

    # digits are upsampled floats: PNGs would change them, so imagefolder is refused and nothing appears
    result = _invoke(["models", "export", str(scenario), "--out", str(tmp_path / "png"), "--format", "imagefolder"])
    assert result.exit_code == 2 and "not 8-bit images" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".png")], "no partial folder left behind"

    given = tmp_path / "given.toml"
    given.write_text(tomli_w.dumps({"name": "g", "sim": {"policies": ["uncoded"]}, "models": {
        "architecture": {"torchvision": "resnet18"}, "base": "b.safetensors", "experts": []}}))
    result = _invoke(["models", "export", str(given), "--out", str(tmp_path / "again")])
    assert result.exit_code == 2 and not (tmp_path / "again").exists()


def test_png_exact_only_for_8_bit_images():
    pixels = torch.randint(0, 256, (3, 1, 4, 4)).float()
    x = pixels / 255.0 * 2.0 - 1.0  # how the zoo maps uint8 images
    assert png_exact(x)
    assert not png_exact(x + 1e-3)
    assert not png_exact(torch.zeros(2, 2, 4, 4))  # two channels: no PNG mode


@pytest.mark.parametrize("spec", [NetworkSpec(arch="resnet18", in_channels=3, num_classes=7),
                                  NetworkSpec(arch="resnet18", in_channels=1, num_classes=7),
                                  NetworkSpec(arch="resnet_cifar", in_channels=3, width=4)])
def test_exported_architecture_has_the_zoo_networks_keys_and_shapes(spec):
    table = architecture_table(spec)
    assert ("torchvision" in table) == (spec.in_channels == 3 and spec.arch == "resnet18")
    torch.manual_seed(0)
    zoo_net = build_network(spec)
    given_net = GivenArchitecture.model_validate(table).build()
    assert [(k, v.shape) for k, v in zoo_net.state_dict().items()] == \
        [(k, v.shape) for k, v in given_net.state_dict().items()]
