"""A learned coded model: a network trained toward Σ βᵢ fᵢ(x) on the experts' whole training pools.

The trained alternative the COIN paper sets against parameter averaging: where COIN and the other training-free
methods look at P coding samples, this method is handed every training query of every expert (the caller
passes the full pools: `training_pools` below) and regresses the coded model's outputs on the β-combined
experts' outputs for several epochs with a training learning rate — the same loss as ensemble distillation
(`coin.methods.distill`), at the data and compute a trained model costs. Its encode time is that cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from coin.methods.distill import distill
from coin.task import CodingTask, EncodeResult


def learned(task: CodingTask, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.01,
            init: str = "average", eval_fn: Callable[[torch.nn.Module], dict] | None = None) -> EncodeResult:
    """Train the coded model on `task.x` (every training query, when called through a scenario or `coinsim
    code`) by MSE to Σ βᵢ fᵢ(x), starting from the β-average (or the base: init="base")."""
    res = distill(task, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, init=init,
                  eval_fn=eval_fn, log_train=False)
    return EncodeResult("learned", res.model, {**res.info, "train_samples": int(task.x.shape[0])})


learned.training_pools = True  # type: ignore[attr-defined]  # wants every training query, not P coding samples
