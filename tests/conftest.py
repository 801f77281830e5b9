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


@pytest.fixture(scope="session", autouse=True)
def one_serving_test_at_a_time():
    """Real servers are timed in real time, and a testbed's frontend runs at real-time priority: two of them at
    once on two cores starve each other (a parity test decoded 1 answer instead of ~70). The suite runs two test
    processes (pytest-xdist), so every cluster of real servers and every measurement that spawns its own load
    holds a lock file the processes share, while the rest of the suite goes on beside it."""
    import fcntl
    import functools
    import os
    import tempfile
    import time
    import warnings
    from pathlib import Path

    import calibration.measure as measure
    from testbed.cluster import LocalCluster

    path = Path(tempfile.gettempdir()) / f"coinsim-tests-{os.getuid()}-serving.lock"
    held = {"depth": 0, "fd": -1}

    def take() -> None:
        if held["depth"] == 0:
            held["fd"] = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            give_up = time.monotonic() + 240.0  # a cluster some test never closed must not hang the suite
            while True:
                try:
                    fcntl.flock(held["fd"], fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > give_up:
                        warnings.warn("serving lock not released for 240 s: serving beside another test", stacklevel=2)
                        break
                    time.sleep(0.05)
        held["depth"] += 1

    def give() -> None:
        held["depth"] -= 1
        if held["depth"] == 0:
            os.close(held["fd"])  # closing the descriptor releases the lock

    def locked(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            take()
            try:
                return fn(*args, **kwargs)
            finally:
                give()
        return run

    enter, close = LocalCluster.__enter__, LocalCluster.close

    def cluster_enter(self):  # held from the start of the servers until the cluster is closed (__exit__ or close)
        take()
        self._test_lock = True
        try:
            return enter(self)
        except BaseException:
            self._test_lock = False
            give()
            raise

    def cluster_close(self):
        try:
            return close(self)
        finally:
            if getattr(self, "_test_lock", False):
                self._test_lock = False
                give()

    saved = {name: getattr(measure, name) for name in ("measure_slicing", "measure_corun")}
    LocalCluster.__enter__, LocalCluster.close = cluster_enter, cluster_close
    for name, fn in saved.items():
        setattr(measure, name, locked(fn))
    yield
    LocalCluster.__enter__, LocalCluster.close = enter, close
    for name, fn in saved.items():
        setattr(measure, name, fn)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One checkpoint cache for the whole session, so the tiny zoo is trained once."""
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="session")
def tiny_zoo(tiny_cache):
    from models.zoo import build_zoo

    return build_zoo(tiny_zoo_config(tiny_cache), device="cpu", progress=False)
