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


class _CoreLock:
    """Real servers are timed in real time, and a testbed's frontend runs at real-time priority: with the suite in
    two processes (pytest-xdist, `-n 2`), a real-serving test beside any busy test misses its timing asserts (a
    parity test decoded 0-1 answers instead of ~70). So every test holds a shared lock on a file the processes
    share, and a test that starts real servers (a `testbed.LocalCluster`, until it is closed) or a measurement that
    spawns its own load turns it exclusive: it waits for the other process's current test to end and holds the
    cores alone meanwhile. A turnstile file gives the exclusive taker precedence over the next shared one; every
    wait gives up after 240 s with a warning rather than hang the suite."""

    WAIT_S = 240.0

    def __init__(self) -> None:
        import os
        import tempfile
        from pathlib import Path

        root = Path(tempfile.gettempdir())
        self.main = os.open(root / f"coinsim-tests-{os.getuid()}-cores.lock", os.O_CREAT | os.O_RDWR, 0o600)
        self.turn = os.open(root / f"coinsim-tests-{os.getuid()}-turn.lock", os.O_CREAT | os.O_RDWR, 0o600)
        self.depth = 0  # exclusive holds under way (nested clusters)
        self.in_test = False

    def _flock(self, fd: int, how: int) -> None:
        import fcntl
        import time
        import warnings

        if how == fcntl.LOCK_UN:
            fcntl.flock(fd, how)
            return
        give_up = time.monotonic() + self.WAIT_S
        while True:
            try:
                fcntl.flock(fd, how | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > give_up:
                    warnings.warn("test lock not granted within 240 s: going on beside another test", stacklevel=3)
                    return
                time.sleep(0.02)

    def shared(self) -> None:
        import fcntl

        self._flock(self.turn, fcntl.LOCK_EX)  # behind any exclusive taker waiting
        self._flock(self.main, fcntl.LOCK_SH)
        self._flock(self.turn, fcntl.LOCK_UN)

    def start_test(self) -> None:
        self.in_test = True
        if self.depth == 0:
            self.shared()

    def end_test(self) -> None:
        import fcntl

        self.in_test = False
        if self.depth == 0:
            self._flock(self.main, fcntl.LOCK_UN)

    def take(self) -> None:
        import fcntl

        if self.depth == 0:
            self._flock(self.main, fcntl.LOCK_UN)  # our own shared hold first: two takers must not wait on each other
            self._flock(self.turn, fcntl.LOCK_EX)
            self._flock(self.main, fcntl.LOCK_EX)
            self._flock(self.turn, fcntl.LOCK_UN)
        self.depth += 1

    def give(self) -> None:
        import fcntl

        self.depth -= 1
        if self.depth == 0:
            self._flock(self.main, fcntl.LOCK_UN)
            if self.in_test:
                self.shared()


_TIMING_FREE = [False]  # the test being set up is marked `timing_free`: its clusters take no exclusive hold


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of the test (a module's cluster is set up ahead of the function-scoped ones): does it
    time anything?"""
    _TIMING_FREE[0] = item.get_closest_marker("timing_free") is not None


@pytest.fixture(scope="session", autouse=True)
def core_lock():
    """One `_CoreLock` per test process, taken exclusive around every cluster of real servers and every measurement
    that spawns its own load."""
    import functools

    import calibration.measure as measure
    from testbed.cluster import LocalCluster

    lock = _CoreLock()

    def locked(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            lock.take()
            try:
                return fn(*args, **kwargs)
            finally:
                lock.give()
        return run

    enter, close = LocalCluster.__enter__, LocalCluster.close

    def cluster_enter(self):  # held from the start of the servers until the cluster is closed (__exit__ or close)
        if _TIMING_FREE[0]:  # a test that times nothing lets its servers run beside the other process's test
            return enter(self)
        lock.take()
        self._test_lock = True
        try:
            return enter(self)
        except BaseException:
            self._test_lock = False
            lock.give()
            raise

    def cluster_close(self):
        try:
            return close(self)
        finally:
            if getattr(self, "_test_lock", False):
                self._test_lock = False
                lock.give()

    saved = {name: getattr(measure, name) for name in ("measure_slicing", "measure_corun")}
    LocalCluster.__enter__, LocalCluster.close = cluster_enter, cluster_close
    for name, fn in saved.items():
        setattr(measure, name, locked(fn))
    yield lock
    LocalCluster.__enter__, LocalCluster.close = enter, close
    for name, fn in saved.items():
        setattr(measure, name, fn)


@pytest.fixture(autouse=True)
def _share_the_cores(core_lock):
    core_lock.start_test()
    yield
    core_lock.end_test()


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One checkpoint cache for the whole session, so the tiny zoo is trained once."""
    return tmp_path_factory.mktemp("zoo-cache")


@pytest.fixture(scope="session")
def tiny_zoo(tiny_cache):
    from models.zoo import build_zoo

    return build_zoo(tiny_zoo_config(tiny_cache), device="cpu", progress=False)
