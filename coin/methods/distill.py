"""Ensemble distillation: regress the coded model's outputs on Σ βᵢ fᵢ(x) over the P samples (eq. 5).

Paper's appendix settings: AdamW, lr 1e-5, batch 8, weight decay 0.1, 20 epochs. The student starts from
the β-average (``init="average"``) or the base model (``init="base"``). It is trained in eval mode so
BatchNorm keeps its running statistics frozen, as in the paper's fine-tuning. Each epoch logs the coding
loss and the P-sample (train) score; ``eval_fn(model) -> dict`` adds e.g. test NDA. Logging time is
reported as ``eval_seconds`` and excluded from the encode time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from coin.errors import CodingError
from coin.params import build_coded, merge_buffers, params_of, weighted_average
from coin.task import CodingTask, EncodeResult


def distill(
    task: CodingTask,
    epochs: int = 20,
    lr: float = 1e-5,
    batch_size: int = 8,
    weight_decay: float = 0.1,
    init: str = "average",
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    log_train: bool = True,
) -> EncodeResult:
    """Train a student by MSE to the β-combined teacher outputs; returns the last epoch's student."""
    if init == "average":
        avg = weighted_average([params_of(m) for m in task.experts], task.beta)
        student = build_coded(task.experts[0], avg, merge_buffers(task.experts, task.beta))
    elif init == "base":
        if task.base is None:
            raise CodingError("distill init='base' needs the base model")
        student = copy.deepcopy(task.base)
    else:
        raise CodingError(f"unknown distill init '{init}'; choose average or base")
    for p in student.parameters():
        p.requires_grad_(True)
    targets = task.target().detach()
    gen = torch.Generator().manual_seed(task.seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    student.eval()
    history, eval_seconds = [], 0.0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(task.x.shape[0], generator=gen).to(task.x.device)
        total = 0.0
        for idx in perm.split(batch_size):
            loss = (student(task.x[idx]) - targets[idx]).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        t0 = time.perf_counter()
        rec: dict = {"epoch": epoch, "train_loss": total / task.x.shape[0]}
        if log_train:
            s = task.score(student)
            rec.update({"train_nda_pct": s["nda"], "train_agreement_pct": s["agreement"]})
        if eval_fn is not None:
            rec.update(eval_fn(student))
        eval_seconds += time.perf_counter() - t0
        history.append(rec)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return EncodeResult("distill", student, {"history": history, "eval_seconds": eval_seconds, "lr": lr,
                                             "epochs": epochs, "batch_size": batch_size, "init": init})
