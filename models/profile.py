"""Measured forward-pass latency of a network on a device — the simulator's empirical service times."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    """`samples` forward-pass times (ms) at `batch_size`, on inputs drawn from `inputs`, after `warmup` passes.

    Warm-up absorbs one-off costs (allocator growth, kernel selection) that a serving system pays once.
    """
    model.to(device).eval()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(inputs), size=(warmup + samples, batch_size))
    times = np.empty(samples)
    with torch_threads(threads if device.type == "cpu" else None):
        for step, rows in enumerate(picks):
            batch = inputs[torch.from_numpy(rows)].to(device)
            elapsed = time_forward(model, batch, device)
            if step >= warmup:
                times[step - warmup] = elapsed
    return times
