"""Task arithmetic (Ilharco et al. 2023): θ = θ₀ + α Σᵢ (θᵢ − θ₀), α tuned on the P samples.

As in the paper the task vectors are summed unweighted; α ∈ {0.05, 0.10, …, 1.00}.
"""

from __future__ import annotations

from collections.abc import Sequence

from coin.errors import CodingError
from coin.params import ParamDict, build_coded, merge_buffers, params_of
from coin.selection import pick
from coin.task import CodingTask, EncodeResult

ALPHA_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 21))


def task_arithmetic_merge(base: ParamDict, thetas: Sequence[ParamDict], alpha: float) -> ParamDict:
    """θ₀ + α Σ (θᵢ − θ₀) per tensor."""
    return {n: base[n] + alpha * sum(th[n] - base[n] for th in thetas) for n in base}


def task_arithmetic(task: CodingTask, alpha: float | None = None, grid: Sequence[float] = ALPHA_GRID,
                    rule: str = "score") -> EncodeResult:
    """Needs the base model (``task.base``); α fixed or picked on the P samples."""
    if task.base is None:
        raise CodingError("task_arithmetic needs the base model the experts were fine-tuned from")
    base = params_of(task.base)
    thetas = [params_of(m) for m in task.experts]
    buffers = merge_buffers(task.experts, task.beta)
    alphas = [alpha] if alpha is not None else list(grid)
    rows, models = [], []
    for a in alphas:
        model = build_coded(task.experts[0], task_arithmetic_merge(base, thetas, a), buffers)
        rows.append({"alpha": a, **task.score(model)})
        models.append(model)
    best = pick(rows, rule)
    return EncodeResult("task_arithmetic", models[best], {"alpha": rows[best]["alpha"], "grid": rows})
