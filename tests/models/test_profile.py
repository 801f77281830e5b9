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


class FakeScheduler:
    """Stands in for the process's involuntary-context-switch counter: the passes listed in `preempt_on`
    (counted over all networks, from 0) are 'preempted' and take `cost_s` longer."""

    def __init__(self, preempt_on: set[int], cost_s: float = 0.02):
        self.preempt_on, self.cost_s, self.passes, self.switches = preempt_on, cost_s, 0, 0

    def count(self) -> int:
        return self.switches

    def run(self) -> None:
        if self.passes in self.preempt_on:
            self.switches += 1
            time.sleep(self.cost_s)
        self.passes += 1


class Scheduled(Recorder):
    def __init__(self, name: str, log: list[tuple[str, torch.Tensor]], scheduler: FakeScheduler):
        super().__init__(name, log)
        self.scheduler = scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.scheduler.run()
        return super().forward(x)


def _profile_with(monkeypatch, scheduler: FakeScheduler, retries: int) -> tuple[dict, list]:
    monkeypatch.setattr("models.profile._preemptions", scheduler.count)
    log: list[tuple[str, torch.Tensor]] = []
    models = {n: Scheduled(n, log, scheduler) for n in ("a", "b")}
    times = profile_interleaved(models, torch.arange(10.0).reshape(10, 1), CPU, warmup=1, samples=4, seed=2,
                                preempted_retries=retries)
    return times, log


def test_a_preempted_round_is_timed_again_on_the_same_batch(monkeypatch):
    # passes 0-1: warm-up round; pass 5 is the second pass of timed round 2 (rounds are 2 passes long)
    times, log = _profile_with(monkeypatch, FakeScheduler({5}), retries=3)
    assert len(log) == 2 * 5 + 2  # one round again
    first, again = log[4:6], log[6:8]
    assert [n for n, _ in first] == [n for n, _ in again]  # same order ...
    assert all(torch.equal(x, first[0][1]) for _, x in first + again)  # ... on the same batch
    victim = first[1][0]
    assert times[victim][1] < 10.0  # the 20 ms pass was replaced by the retry

    kept, log = _profile_with(monkeypatch, FakeScheduler({5}), retries=0)
    assert len(log) == 2 * 5 and kept[victim][1] >= 20.0

    # preempted every time: give up after the retries, keep the last attempt
    times, log = _profile_with(monkeypatch, FakeScheduler({5, 7, 9}), retries=2)
    assert len(log) == 2 * 5 + 4 and times[victim][1] >= 20.0


def test_preemptions_in_warmup_are_not_retried(monkeypatch):
    times, log = _profile_with(monkeypatch, FakeScheduler({0, 1}), retries=3)
    assert len(log) == 2 * 5


def test_the_real_preemption_counter_only_grows():
    from models.profile import _preemptions

    first = _preemptions()
    time.sleep(0.001)
    assert isinstance(first, int) and _preemptions() >= first >= 0
