"""Latency profiling: served networks are timed interleaved, so a drifting machine cannot favour one of them."""

from __future__ import annotations

import copy
import io
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from models.networks import NetworkSpec, build_network
from models.profile import profile_interleaved, profile_latency

CPU = torch.device("cpu")


class Recorder(nn.Module):
    """Identity network that appends (its name, the batch it saw) to a log shared with other recorders."""

    def __init__(self, name: str, log: list[tuple[str, torch.Tensor]], delay_s: float = 0.0):
        super().__init__()
        self.name, self.log, self.delay_s = name, log, delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append((self.name, x.clone()))
        if self.delay_s:
            time.sleep(self.delay_s)
        return x


class DriftingMachine:
    """A machine that slows down steadily: the k-th forward pass on it, of any network, takes `step_s` × k
    longer than the first. Shared by every network timed on it."""

    def __init__(self, base_s: float, step_s: float):
        self.base_s, self.step_s, self.calls = base_s, step_s, 0

    def run(self) -> None:
        delay = self.base_s + self.step_s * self.calls
        self.calls += 1
        end = time.perf_counter() + delay
        time.sleep(delay)
        while time.perf_counter() < end:  # sleep may wake early on some platforms
            pass


class OnMachine(nn.Module):
    def __init__(self, machine: DriftingMachine):
        super().__init__()
        self.machine = machine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.machine.run()
        return x


def paired_gap(a: np.ndarray, b: np.ndarray, z: float = 5.0, floor: float = 0.03) -> tuple[float, float]:
    """|mean(a) - mean(b)| and what sampling noise allows for it.

    Pass k of both networks was timed in the same round, so the differences a_k - b_k are a paired sample;
    their mean is within z standard errors (std / sqrt(n)) of 0 when both networks have the same service-time
    distribution. The floor (a fraction of the overall mean) keeps a near-zero spread from demanding more
    precision than a timer on a shared machine has.
    """
    d = a - b
    se = d.std(ddof=1) / np.sqrt(len(d))
    return abs(float(d.mean())), max(z * se, floor * float(np.mean([a.mean(), b.mean()])))


def test_every_round_runs_every_network_once_on_one_batch():
    log: list[tuple[str, torch.Tensor]] = []
    names = ["a", "b", "c"]
    models = {n: Recorder(n, log) for n in names}
    inputs = torch.arange(40.0).reshape(40, 1)
    times = profile_interleaved(models, inputs, CPU, batch_size=2, warmup=3, samples=12, seed=5)

    assert list(times) == names
    assert all(t.shape == (12,) and np.all(np.isfinite(t)) and np.all(t > 0) for t in times.values())
    assert len(log) == 3 * (3 + 12)
    orders = []
    for k in range(0, len(log), 3):
        round_ = log[k:k + 3]
        assert sorted(name for name, _ in round_) == names  # pass k of each before pass k + 1 of any
        assert all(torch.equal(batch, round_[0][1]) for _, batch in round_)  # on the same input
        assert round_[0][1].shape == (2, 1)
        orders.append(tuple(name for name, _ in round_))
    assert len(set(orders)) > 1  # shuffled, not a fixed order
    assert len({tuple(batch.flatten().tolist()) for _, batch in log}) > 1  # inputs drawn, not one batch

    # the seed fixes inputs and orders; another seed changes them
    again: list[tuple[str, torch.Tensor]] = []
    profile_interleaved({n: Recorder(n, again) for n in names}, inputs, CPU, 2, 3, 12, seed=5)
    assert [n for n, _ in again] == [n for n, _ in log]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(again, log, strict=True))
    other: list[tuple[str, torch.Tensor]] = []
    profile_interleaved({n: Recorder(n, other) for n in names}, inputs, CPU, 2, 3, 12, seed=6)
    assert [n for n, _ in other] != [n for n, _ in log]


def test_each_network_gets_its_own_times():
    log: list[tuple[str, torch.Tensor]] = []
    models = {"slow": Recorder("slow", log, delay_s=0.003), "fast": Recorder("fast", log)}
    times = profile_interleaved(models, torch.zeros(4, 1), CPU, warmup=1, samples=10, seed=0)
    assert times["slow"].min() >= 3.0
    assert times["fast"].mean() < times["slow"].mean() - 2.0


def test_profile_latency_times_one_network_on_the_same_inputs():
    inputs = torch.arange(30.0).reshape(30, 1)
    alone: list[tuple[str, torch.Tensor]] = []
    t = profile_latency(Recorder("x", alone), inputs, CPU, batch_size=3, warmup=2, samples=8, seed=1)
    assert t.shape == (8,) and np.all(t > 0)
    assert len(alone) == 10
    together: list[tuple[str, torch.Tensor]] = []
    profile_interleaved({"x": Recorder("x", together), "y": Recorder("y", together)}, inputs, CPU, 3, 2, 8, seed=1)
    seen_by_x = [batch for name, batch in together if name == "x"]
    assert all(torch.equal(a, b) for (_, a), b in zip(alone, seen_by_x, strict=True))


def test_identical_networks_profile_alike():
    torch.manual_seed(0)
    net = build_network(NetworkSpec(arch="cnn", width=8))
    models = {f"copy{i}": copy.deepcopy(net) for i in range(3)}
    inputs = torch.randn(64, 1, 28, 28)
    times = profile_interleaved(models, inputs, CPU, warmup=20, samples=400, seed=0, threads=1)
    names = list(times)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            gap, allowed = paired_gap(times[a], times[b])
            assert gap <= allowed, (a, b, times[a].mean(), times[b].mean())


def test_drift_separates_sequential_profiles_but_not_interleaved_ones():
    warmup, samples, step_s = 2, 40, 2e-5  # 3 × 42 passes; the last one ~2.5 ms slower than the first
    inputs = torch.zeros(8, 1)

    machine = DriftingMachine(2e-4, step_s)
    sequential = {n: profile_latency(OnMachine(machine), inputs, CPU, warmup=warmup, samples=samples, seed=0)
                  for n in ("a", "b", "c")}
    # timed one after the other, c ran 2 × 42 passes later than a: ~1.7 ms slower per pass on average
    expected = 2 * (warmup + samples) * step_s * 1000
    assert sequential["c"].mean() - sequential["a"].mean() > 0.5 * expected
    gap, allowed = paired_gap(sequential["a"], sequential["c"])
    assert gap > allowed  # the statistical check catches it

    machine = DriftingMachine(2e-4, step_s)
    shared = profile_interleaved({n: OnMachine(machine) for n in ("a", "b", "c")}, inputs, CPU, warmup=warmup,
                                 samples=samples, seed=0)
    assert machine.calls == 3 * (warmup + samples)
    for a, b in (("a", "b"), ("a", "c"), ("b", "c")):
        gap, allowed = paired_gap(shared[a], shared[b])
        assert gap <= allowed, (a, b, shared[a].mean(), shared[b].mean())
    # the drift itself is still there, seen by all: late passes are slower than early ones for every network
    assert all(t[-10:].mean() > t[:10].mean() for t in shared.values())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress,tty,shown", [(True, True, True), (False, True, False), (True, False, False)])
def test_progress_bar_only_when_asked_and_on_a_terminal(monkeypatch, progress, tty, shown):
    stream = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    profile_interleaved({"a": nn.Identity(), "b": nn.Identity()}, torch.zeros(4, 1), CPU, warmup=1, samples=5,
                        progress=progress)
    assert ("profile" in stream.getvalue()) == shown
