"""Supervised training and evaluation of one network on in-memory tensors."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from models.config import TrainSpec


@dataclass(frozen=True)
class TrainResult:
    seconds: float
    final_loss: float


def freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode so running statistics stay those of the base model.

    Experts then share identical BN buffers, which is what makes parameter-space coding well defined.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: TrainSpec,
    seed: int,
    device: torch.device,
    label: str = "train",
    progress: bool = True,
    freeze_bn: bool = False,
) -> TrainResult:
    """AdamW on cross-entropy; batch order drawn from `seed` so the run is reproducible."""
    model.to(device).train()
    if freeze_bn:
        freeze_batchnorm(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    n = len(x)
    steps = spec.epochs * ((n + spec.batch_size - 1) // spec.batch_size)
    bar = tqdm(total=steps, desc=label, unit="step", leave=False, file=sys.stderr,
               disable=not progress or not sys.stderr.isatty())
    start, loss_value = time.perf_counter(), float("nan")
    for _ in range(spec.epochs):
        order = torch.randperm(n, generator=generator)
        for begin in range(0, n, spec.batch_size):
            idx = order[begin:begin + spec.batch_size]
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    bar.close()
    model.eval()
    return TrainResult(seconds=time.perf_counter() - start, final_loss=loss_value)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Logits for every row of x, batched, returned on the CPU."""
    model.to(device).eval()
    outs = [model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Top-1 accuracy in percent."""
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x, device).argmax(1) == y).float().mean() * 100)
