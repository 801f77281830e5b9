"""Fisher merging (Matena & Raffel 2022) with the exact Fisher of the softmax classifier.

θ = Σ βᵢ Fᵢ θᵢ / Σ βᵢ Fᵢ with Fᵢ = E_x Σ_y p_θᵢ(y|x) (∂ log p_θᵢ(y|x)/∂θ)², the expectation over y
taken exactly over all classes. A small Fisher floor (their default 1e-6) keeps unused weights finite.
Unlike COIN it models the softmax likelihood, not the logits the decoder subtracts.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from coin.jacobian import categorical_fisher
from coin.methods.coin import coin_merge
from coin.params import ParamDict, build_coded, merge_buffers, params_of
from coin.task import CodingTask, EncodeResult


def fisher_merge(thetas: Sequence[ParamDict], fishers: Sequence[ParamDict], beta: Tensor,
                 floor: float = 0.0) -> ParamDict:
    """Σ βᵢ (Fᵢ + floor) θᵢ / Σ βᵢ (Fᵢ + floor), β-average where all Fishers vanish."""
    return coin_merge(thetas, fishers, beta, floor)


def fisher(task: CodingTask, floor: float = 1e-6, chunk_size: int | None = None) -> EncodeResult:
    """Exact-Fisher merging; needs no labels and no hyperparameter search."""
    thetas = [params_of(m) for m in task.experts]
    fishers = [categorical_fisher(m, task.x, chunk_size=chunk_size) for m in task.experts]
    coded = build_coded(task.experts[0], fisher_merge(thetas, fishers, task.beta, floor),
                        merge_buffers(task.experts, task.beta))
    return EncodeResult("fisher", coded, {"floor": floor})
