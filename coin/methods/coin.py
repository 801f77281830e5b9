"""COIN (Algorithm 1, eq. 17): Fisher-weighted averaging with the output Fisher plus a λ penalty.

θ_c = (Σ β̄ᵢ (Fᵢ + λ))⁻¹ Σ β̄ᵢ (Fᵢ + λ) θᵢ, elementwise because F is diagonal. The paper defines
β̄ᵢ = βᵢ Σⱼ βⱼ, which is just βᵢ since Σβ = 1 (and any common factor cancels in eq. 17 anyway), so βᵢ is
used directly. λ → ∞ gives the β-average, λ → 0 plain Fisher-weighted averaging with the output Fisher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from coin.errors import CodingError
from coin.jacobian import output_fisher
from coin.params import ParamDict, build_coded, merge_buffers, params_of
from coin.selection import pick
from coin.task import CodingTask, EncodeResult

LAMBDA_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def coin_merge(
    thetas: Sequence[ParamDict], fishers: Sequence[ParamDict], beta: Tensor, lam: float
) -> ParamDict:
    """Eq. (17) per tensor. Where every Fisher is zero and λ = 0, fall back to the β-average."""
    out = {}
    w = beta.tolist()
    for name in thetas[0]:
        num = torch.zeros_like(thetas[0][name])
        den = torch.zeros_like(thetas[0][name])
        avg = torch.zeros_like(thetas[0][name])
        for b, th, f in zip(w, thetas, fishers, strict=True):
            wt = b * (f[name] + lam)
            num = num + wt * th[name]
            den = den + wt
            avg = avg + b * th[name]
        out[name] = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), avg)
    return out


def mean_fisher(fishers: Sequence[ParamDict], beta: Tensor) -> float:
    """β-weighted mean of all Fisher entries: the scale λ is compared to."""
    sums = [sum(f.sum().item() for f in fd.values()) for fd in fishers]
    total = sum(float(b) * s for b, s in zip(beta.tolist(), sums, strict=True))
    count = sum(f.numel() for f in fishers[0].values())
    return total / max(count, 1)


def coin(
    task: CodingTask,
    lam: float | None = None,
    grid: Sequence[float] = LAMBDA_GRID,
    relative: bool = False,
    rule: str = "score",
    chunk_size: int | None = None,
    return_grid: bool = False,
) -> EncodeResult:
    """COIN. With ``lam`` fixed no selection is done; else λ is chosen on the P samples over ``grid``
    (absolute values as in the paper, or multiples of mean(F) when ``relative``). ``return_grid`` keeps
    every grid point's coded model in ``info["grid_models"]`` (for generalization studies)."""
    thetas = [params_of(m) for m in task.experts]
    fishers = [output_fisher(m, task.x, chunk_size=chunk_size) for m in task.experts]
    mf = mean_fisher(fishers, task.beta)
    buffers = merge_buffers(task.experts, task.beta)
    if lam is not None:
        if lam < 0:
            raise CodingError(f"λ must be ≥ 0, got {lam}")
        coded = build_coded(task.experts[0], coin_merge(thetas, fishers, task.beta, lam), buffers)
        return EncodeResult("coin", coded, {"lam": lam, "lam_rel": lam / mf if mf > 0 else float("nan"),
                                            "mean_fisher": mf})
    rows, models = [], []
    for g in grid:
        lam_abs = g * mf if relative else g
        model = build_coded(task.experts[0], coin_merge(thetas, fishers, task.beta, lam_abs), buffers)
        rel = lam_abs / mf if mf > 0 else float("nan")
        rows.append({"lam": lam_abs, "lam_rel": rel, **task.score(model)})
        models.append(model)
    best = pick(rows, rule)
    info = {"lam": rows[best]["lam"], "lam_rel": rows[best]["lam_rel"], "mean_fisher": mf, "grid": rows,
            "rule": rule, "relative": relative}
    if return_grid:
        info["grid_models"] = models
    return EncodeResult("coin", models[best], info)
