"""DARE (Yu et al. 2024, "Language Models are Super Mario"): drop and rescale task vectors, then add them up.

Every entry of each task vector τᵢ = θᵢ − θ₀ is dropped independently with probability p and the survivors
are multiplied by 1/(1 − p): τ̃ᵢ = mᵢ ⊙ τᵢ / (1 − p) with mᵢ ~ Bernoulli(1 − p), so E[τ̃ᵢ] = τᵢ. The rescaled
vectors are then combined as in task arithmetic: θ_c = θ₀ + λ Σᵢ βᵢ τ̃ᵢ.

How β enters: task arithmetic sums the task vectors unweighted and scales by α; here each is weighted by βᵢ
so that with p = 0 and λ = 1 the coded model is the β-average (vanilla), the natural first approximation
of Σβᵢfᵢ. For uniform β this is task arithmetic with α = λ/N (p = 0 gives exactly that model), and for two
experts the λ grid 0.1…2.0 spans task arithmetic's α grid 0.05…1.0.

Randomness: the masks come from one generator seeded with the task's seed, and the same uniform draws are
reused for every p on the grid (an entry dropped at p is dropped at every larger p), so the grid compares
drop rates rather than different luck. p and λ are picked together on the P samples (highest P-sample NDA,
ties to the lower coding loss), as task arithmetic picks α. The default grid leaves out p = 0, which would
just be β-weighted task arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from coin.errors import CodingError
from coin.params import ParamDict, add_scaled, build_coded, merge_buffers, params_of, task_vectors
from coin.selection import pick
from coin.task import CodingTask, EncodeResult

P_GRID: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
LAM_GRID: tuple[float, ...] = tuple(round(0.1 * j, 1) for j in range(1, 21))


def drop_and_rescale(taus: Sequence[ParamDict], p: float, seed: int) -> list[ParamDict]:
    """Each task vector with every entry kept with probability 1 − p and scaled by 1/(1 − p).

    Masks are drawn on the CPU from ``torch.Generator().manual_seed(seed)``, expert by expert and tensor by
    tensor in order, one uniform u per entry, keeping u ≥ p; so p = 0 keeps everything and the same seed gives
    nested masks for different p."""
    if not 0 <= p < 1:
        raise CodingError(f"DARE's drop rate must satisfy 0 ≤ p < 1, got {p}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for tau in taus:
        kept = {}
        for name, t in tau.items():
            keep = torch.rand(t.shape, generator=gen, dtype=torch.float64).to(t.device) >= p
            kept[name] = torch.where(keep, t / (1 - p), torch.zeros_like(t))
        out.append(kept)
    return out


def weighted_sum(taus: Sequence[ParamDict], beta: Tensor) -> ParamDict:
    """Σ βᵢ τᵢ per tensor."""
    w = beta.tolist()
    return {n: sum(b * t[n] for b, t in zip(w, taus, strict=True)) for n in taus[0]}


def dare(
    task: CodingTask,
    p: float | None = None,
    lam: float | None = None,
    p_grid: Sequence[float] = P_GRID,
    lam_grid: Sequence[float] = LAM_GRID,
    rule: str = "score",
) -> EncodeResult:
    """Needs the base model (``task.base``). ``p`` (drop rate) and ``lam`` (scale) are fixed when given,
    otherwise picked on the P samples over ``p_grid`` × ``lam_grid``; masks are seeded by ``task.seed``."""
    if task.base is None:
        raise CodingError("dare needs the base model the experts were fine-tuned from")
    ps = [p] if p is not None else list(p_grid)
    lams = [lam] if lam is not None else list(lam_grid)
    if not ps or not lams:
        raise CodingError("dare: empty hyperparameter grid")
    if any(not math.isfinite(v) or v < 0 for v in lams):
        raise CodingError(f"dare: λ must be finite and ≥ 0, got {lams}")
    base = params_of(task.base)
    taus = task_vectors(base, [params_of(m) for m in task.experts])
    buffers = merge_buffers(task.experts, task.beta)
    rows, combined = [], []
    for pp in ps:
        delta = weighted_sum(drop_and_rescale(taus, pp, task.seed), task.beta)
        combined.append(delta)
        for lm in lams:
            model = build_coded(task.experts[0], add_scaled(base, delta, lm), buffers)
            rows.append({"p": pp, "lam": lm, **task.score(model)})
    best = pick(rows, rule)
    chosen = rows[best]
    # Grid models are not kept (a large model times the grid size would not fit); the winner is rebuilt.
    model = build_coded(task.experts[0], add_scaled(base, combined[best // len(lams)], chosen["lam"]), buffers)
    return EncodeResult("dare", model, {"p": chosen["p"], "lam": chosen["lam"], "seed": task.seed, "grid": rows,
                                        "rule": rule})
