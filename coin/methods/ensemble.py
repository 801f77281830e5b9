"""Output ensemble: Σ βᵢ fᵢ(x) computed exactly by running every expert — the ceiling row of an NDA table.

This is **not a deployable coded model**: it holds all N experts and costs N forward passes, so a parity
server hosting it would be as slow as the experts it is meant to back up, and it needs every expert's weights.
It exists so that NDA tables show what any coded model that approximates Σβᵢfᵢ is approaching: decoding
from it returns each expert's own output up to float rounding, so its NDA is 100 wherever the expert gets
anything right. Encoding only copies the experts (seconds ≈ 0); it uses no data and no base.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import Tensor, nn

from coin.errors import CodingError
from coin.task import CodingTask, EncodeResult


class OutputEnsemble(nn.Module):
    """Wraps copies of the experts; ``forward`` returns Σ βᵢ fᵢ(x). The copies make it independent of the
    originals (moving it to a device or switching its mode leaves the experts alone)."""

    def __init__(self, experts: Sequence[nn.Module], beta: Sequence[float]) -> None:
        super().__init__()
        if len(experts) != len(beta):
            raise CodingError(f"{len(beta)} coding weights for {len(experts)} experts")
        self.members = nn.ModuleList(copy.deepcopy(m) for m in experts)
        self.weights = tuple(float(b) for b in beta)

    def forward(self, x: Tensor) -> Tensor:
        total = None
        for w, m in zip(self.weights, self.members, strict=True):
            term = w * m(x)
            total = term if total is None else total + term
        return total


def ensemble(task: CodingTask) -> EncodeResult:
    """The exact target Σβᵢfᵢ as one module, in eval mode (the ceiling, not a coded model)."""
    return EncodeResult("ensemble", OutputEnsemble(task.experts, task.beta.tolist()).eval(),
                        {"members": len(task.experts)})
