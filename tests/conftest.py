"""Shared fixtures: a tiny but real zoo (MNIST-5k experts, seconds to train), cached once per session."""

from __future__ import annotations

import pytest

from models.config import ZooConfig


def tiny_zoo_config(cache_dir, seed: int = 0, **changes) -> ZooConfig:
    """Quickstart's shape at a fraction of the cost: narrow CNN, one epoch each."""
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
    return ZooConfig.model_validate(table)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    from models.zoo import build_zoo

    return build_zoo(tiny_zoo_config(tmp_path_factory.mktemp("zoo-cache")), device="cpu", progress=False)
