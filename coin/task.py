"""What a coding method is given (``CodingTask``) and what it returns (``EncodeResult``).

The task holds the experts, the coding weights β and the P coding samples. Labels and the partition each
sample was drawn from are optional: with them, hyperparameters are scored by NDA on the P samples (as in
the paper's appendix); without them, by agreement of the decoded argmax with the expert's own argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from coin.decode import decode, outputs


@dataclass
class CodingTask:
    """Inputs of one encode: N same-architecture experts, β (float64, validated), P samples."""

    experts: list[nn.Module]
    beta: Tensor
    x: Tensor
    y: Tensor | None = None
    owner: Tensor | None = None
    base: nn.Module | None = None
    seed: int = 0
    _expert_out: list[Tensor] | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.experts[0].parameters()).device

    def expert_outputs(self) -> list[Tensor]:
        """fᵢ(x) on the P samples, computed once."""
        if self._expert_out is None:
            self._expert_out = [outputs(m, self.x) for m in self.experts]
        return self._expert_out

    def target(self) -> Tensor:
        """Σ βᵢ fᵢ(x) on the P samples: what the coded model should output (eq. 1)."""
        outs = self.expert_outputs()
        return sum(float(b) * o for b, o in zip(self.beta.tolist(), outs, strict=True))

    def score(self, coded: nn.Module, idx: Tensor | None = None) -> dict[str, float]:
        """Score a coded model on the P samples (or the subset ``idx``): NDA / agreement and coding loss."""
        return score_outputs(
            outputs(coded, self.x if idx is None else self.x[idx]),
            [o if idx is None else o[idx] for o in self.expert_outputs()],
            self.beta,
            None if self.y is None else (self.y if idx is None else self.y[idx]),
            None if self.owner is None else (self.owner if idx is None else self.owner[idx]),
        )


def score_outputs(
    coded_out: Tensor, expert_outs: list[Tensor], beta: Tensor, y: Tensor | None, owner: Tensor | None
) -> dict[str, float]:
    """Average over experts of NDA (needs labels) and agreement, each on the expert's own samples; and the
    coding loss mean‖f_c − Σβf‖² of eq. (5) without its constant factor."""
    target = sum(float(b) * o for b, o in zip(beta.tolist(), expert_outs, strict=True))
    loss = (coded_out - target).pow(2).sum(-1).mean().item()
    ndas, agrees = [], []
    for i, fi in enumerate(expert_outs):
        if owner is None:
            sel = torch.ones(len(fi), dtype=torch.bool, device=fi.device)
        else:
            sel = owner.to(fi.device) == i
        if not bool(sel.any()):
            continue
        dec = decode(coded_out[sel], [o[sel] for o in expert_outs], beta, i).argmax(-1)
        agrees.append((dec == fi[sel].argmax(-1)).float().mean().item() * 100)
        if y is not None:
            yi = y.to(fi.device)[sel]
            own = (fi[sel].argmax(-1) == yi).float().mean().item()
            if own > 0:
                ndas.append(100 * (dec == yi).float().mean().item() / own)
    agreement = sum(agrees) / len(agrees) if agrees else float("nan")
    nda = sum(ndas) / len(ndas) if ndas else float("nan")
    return {"nda": nda, "agreement": agreement, "loss": loss, "score": nda if ndas else agreement}


@dataclass
class EncodeResult:
    """A coded model plus what the method chose (λ, α, history, ...) and its encode wall time."""

    method: str
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
