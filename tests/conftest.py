"""Shared fixtures: a tiny but real zoo (MNIST-5k experts, seconds to train), cached once per session."""

from __future__ import annotations

import pytest
import torch

from models.config import ZooConfig

# Tiny networks gain nothing from intra-op threads, and on a busy 2-core machine spinning threads make each
# training step 10-20x slower; one thread keeps the suite's time predictable.
torch.set_num_threads(1)


def tiny_zoo_table(cache_dir, seed: int = 0, **changes) -> dict:
    """Quickstart's shape at a fraction of the cost: narrow CNN, two short epochs each."""
    table = {
        "name": "tiny",
        "seed": seed,
        "network": {"arch": "cnn", "width": 8},
        "base": {"fraction": 0.3, "train": {"epochs": 2, "lr": 3e-3}},
        "finetune": {"epochs": 2, "lr": 2e-3},
        "experts": [
            {"name": "low", "dataset": "mnist5k", "labels": [0, 1, 2, 3, 4]},
            {"name": "high", "dataset": "mnist5k", "labels": [5, 6, 7, 8, 9]},
        ],
        "cache_dir": str(cache_dir),
    }
    table.update(changes)
    return table


def tiny_zoo_config(cache_dir, seed: int = 0, **changes) -> ZooConfig:
    return ZooConfig.model_validate(tiny_zoo_table(cache_dir, seed, **changes))


@pytest.fixture(scope="session", autouse=True)
def hand_calibration_file(tmp_path_factory):
    """Every run in the suite predicts served latency from a calibration written by hand for this machine
    (tests/calibration_testutil.py) and the isolated profile (no served-pass profile: no servers started), so no
    test measures the machine, and served numbers are worked out on paper. Tests of the measuring and of the
    cache set COINSIM_CALIBRATION / profile.served_passes themselves."""
    import os

    from tests.calibration_testutil import write_calibration

    path = write_calibration(tmp_path_factory.mktemp("calibration") / "hand.json")
    settings = {"COINSIM_CALIBRATION": str(path), "COINSIM_SERVED_PASSES": "calibration"}
    previous = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    yield path
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One checkpoint cache for the whole session, so the tiny zoo is trained once."""
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="session")
def tiny_zoo(tiny_cache):
    from models.zoo import build_zoo

    return build_zoo(tiny_zoo_config(tiny_cache), device="cpu", progress=False)
