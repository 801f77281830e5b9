"""Decoding (eq. 2) and normalized decoding accuracy (eq. 18).

Decoding is pure tensor arithmetic on outputs; ``evaluate`` runs the real forward passes of the coded
model and the other experts on expert i's own test partition, decodes expert i as if it were missing,
and reports NDA together with the two accuracies it is the ratio of.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


def decode(coded_out: Tensor, expert_outs: Sequence[Tensor] | Tensor, beta: Tensor, missing: int) -> Tensor:
    """f̂ᵢ = (f_c − Σ_{j≠i} βⱼ fⱼ) / βᵢ; ``expert_outs[missing]`` is never read."""
    b = torch.as_tensor(beta, dtype=coded_out.dtype, device=coded_out.device)
    rest = torch.zeros_like(coded_out)
    for j, fj in enumerate(expert_outs):
        if j != missing:
            rest = rest + b[j] * fj
    return (coded_out - rest) / b[missing]


@torch.no_grad()
def outputs(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Eval-mode outputs of ``model`` on ``x`` in batches, on the model's device."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(xb.to(dev)) for xb in x.split(batch_size)])
    model.train(was_training)
    return out


@dataclass
class NDARow:
    """NDA of one expert: decoded accuracy over the expert's own accuracy, in percent."""

    expert: int
    nda: float
    decoded_acc: float
    expert_acc: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def nda_from_outputs(decoded: Tensor, expert_out: Tensor, labels: Tensor, expert: int = 0) -> NDARow:
    """Eq. (18) from logits; NDA is NaN when the expert itself gets nothing right."""
    labels = labels.to(decoded.device)
    dec = (decoded.argmax(-1) == labels).float().mean().item() * 100
    own = (expert_out.argmax(-1) == labels).float().mean().item() * 100
    return NDARow(expert, 100 * dec / own if own > 0 else float("nan"), dec, own, int(labels.numel()))


def evaluate(
    coded: nn.Module,
    experts: Sequence[nn.Module],
    beta: Tensor,
    test_sets: Sequence[tuple[Tensor, Tensor]],
    batch_size: int = 512,
) -> list[NDARow]:
    """NDA of every expert i on ``test_sets[i]``, decoding fᵢ from the coded model and the others."""
    rows = []
    for i, (x, y) in enumerate(test_sets):
        outs = [outputs(m, x, batch_size) for m in experts]
        dec = decode(outputs(coded, x, batch_size), outs, beta, i)
        rows.append(nda_from_outputs(dec, outs[i], y, i))
    return rows
