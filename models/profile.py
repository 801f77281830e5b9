"""Measured forward-pass latency of networks on a device — the simulator's empirical service times.

Served networks are timed together, interleaved pass by pass (`profile_interleaved`), so that a machine whose
speed drifts during profiling does not make one network look faster than an identical other; rounds in which
another process took the core can be timed again (`preempted_retries`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

try:
    import resource
except ImportError:  # Windows: no rusage, so preempted rounds go undetected and are kept
    resource = None  # type: ignore[assignment]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _preemptions() -> int:
    """Involuntary context switches of this process so far: times the OS gave one of its cores to another task."""
    if resource is None:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with `n` intra-op threads (a served model usually owns one core), then restore."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def time_forward(model: nn.Module, batch: torch.Tensor, device: torch.device) -> float:
    """Wall-clock milliseconds of one forward pass (input already on `device`), synchronised on CUDA."""
    _sync(device)
    start = time.perf_counter()
    model(batch)
    _sync(device)
    return (time.perf_counter() - start) * 1000.0


@torch.no_grad()
def profile_interleaved(
    models: Mapping[str, nn.Module],
    inputs: torch.Tensor,
    device: torch.device,
    batch_size: int = 1,
    warmup: int = 10,
    samples: int = 200,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool = False,
    preempted_retries: int = 0,
) -> dict[str, np.ndarray]:
    """`samples` forward-pass times (ms) of every network in `models`, measured side by side.

    Timing runs in rounds. Round k draws one batch of `batch_size` rows of `inputs` and runs it through every
    network once, in an order shuffled afresh each round, so pass k of every network happens before pass k + 1
    of any. The first `warmup` rounds are shared warm-up and are not kept. Whatever drifts while we measure
    (clock frequency, caches, other tenants) therefore lands on all networks alike instead of on whichever
    network happened to be timed at that moment; identical architectures get identical distributions up to
    sampling noise. `seed` fixes both the inputs and the orders.

    On a shared machine another process sometimes takes the core in the middle of a pass, which then costs
    milliseconds instead of a fraction of one. Interleaving makes that equally likely for every network, but
    such rare, large delays still dominate the sample means (a few dozen of them in 2,000 passes). With
    `preempted_retries` > 0 a timed round during which this process was preempted (an involuntary context
    switch) is run again, on the same batch in the same order, up to that many times; the last attempt is kept.
    The profile then describes the networks running on a core of their own. 0 keeps preempted passes.
    """
    names = list(models)
    nets = [models[name].to(device).eval() for name in names]
    rng = np.random.default_rng(seed)
    rounds = warmup + samples
    picks = rng.integers(0, len(inputs), size=(rounds, batch_size))  # drawn first: same inputs as before
    orders = [rng.permutation(len(nets)) for _ in range(rounds)]
    times = np.empty((len(nets), samples))
    redone = 0
    bar = tqdm(total=rounds, desc=f"profile ({len(nets)} networks)", unit="round", leave=False, file=sys.stderr,
               disable=not progress or not sys.stderr.isatty() or not nets)
    try:
        with torch_threads(threads if device.type == "cpu" else None):
            for step, (rows, order) in enumerate(zip(picks, orders, strict=True)):
                batch = inputs[torch.from_numpy(rows)].to(device)
                attempts = 1 + (preempted_retries if step >= warmup else 0)
                for attempt in range(attempts):
                    before = _preemptions()
                    elapsed = [time_forward(nets[j], batch, device) for j in order]
                    if attempt + 1 == attempts or _preemptions() == before:
                        break
                    redone += 1
                if step >= warmup:
                    times[order, step - warmup] = elapsed
                bar.update(1)  # between rounds, outside every timed pass
                if redone:
                    bar.set_postfix(redone=redone, refresh=False)
    finally:
        bar.close()
    return {name: times[j] for j, name in enumerate(names)}


def profile_latency(
    model: nn.Module,
    inputs: torch.Tensor,
    device: torch.device,
    batch_size: int = 1,
    warmup: int = 10,
    samples: int = 200,
    seed: int = 0,
    threads: int | None = 1,
) -> np.ndarray:
    """`samples` forward-pass times (ms) of one network at `batch_size`, on inputs drawn from `inputs`, after
    `warmup` passes.

    Warm-up absorbs one-off costs (allocator growth, kernel selection) that a serving system pays once. To
    compare several networks, time them together with `profile_interleaved`: timed one after another they
    see different machine states.
    """
    only = profile_interleaved({"model": model}, inputs, device, batch_size, warmup, samples, seed, threads)
    return only["model"]
