"""TIES-merging (Yadav et al. 2023, "Resolving Interference When Merging Models") on task vectors.

Each expert's task vector τᵢ = θᵢ − θ₀ goes through three steps, then is added back to the base:

1. **trim** — keep the fraction ``k`` of τᵢ's entries with the largest magnitude, counted over the whole task
   vector (every tensor together, as in the paper), and zero the rest;
2. **elect** — per entry, the sign γ of Σᵢ βᵢ τ̂ᵢ: the side carrying more (β-weighted) mass;
3. **disjoint mean** — per entry, the β-weighted mean of the trimmed values whose sign is γ; entries of the
   other sign and trimmed zeros take no part; 0 where no expert is left.

θ_c = θ₀ + λ τ_m.

How β enters: the paper weights every task equally; here the elected mass and the mean are weighted by β,
which reduces to the paper's steps for uniform β. That keeps the method aimed at Σβᵢfᵢ: with k = 1, λ = 1
and no sign conflict, τ_m = Σβᵢτᵢ and the coded model is the β-average (vanilla). λ plays the role of task
arithmetic's α but multiplies a β-weighted mean instead of an unweighted sum; for two experts with β = ½ the
λ grid 0.1…2.0 spans the same models as task arithmetic's α grid 0.05…1.0. k and λ are picked together on the
P samples (highest P-sample NDA, ties to the lower coding loss), as task arithmetic picks α.
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

K_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
LAM_GRID: tuple[float, ...] = tuple(round(0.1 * j, 1) for j in range(1, 21))


def trim(tau: ParamDict, k: float) -> ParamDict:
    """Zero all but the round(k·n) largest-magnitude entries of the task vector (n entries over all tensors;
    at least one is kept). Ties at the threshold are broken arbitrarily, so exactly that many survive."""
    if not 0 < k <= 1:
        raise CodingError(f"TIES keeps a fraction k of each task vector, 0 < k ≤ 1; got {k}")
    names = list(tau)
    flat = torch.cat([tau[n].reshape(-1) for n in names])
    keep = max(1, round(k * flat.numel()))
    if keep >= flat.numel():
        return dict(tau)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[flat.abs().topk(keep, sorted=False).indices] = True
    out, start = {}, 0
    for n in names:
        size = tau[n].numel()
        out[n] = torch.where(mask[start:start + size].view_as(tau[n]), tau[n], torch.zeros_like(tau[n]))
        start += size
    return out


def elect_and_merge(trimmed: Sequence[ParamDict], beta: Tensor) -> tuple[ParamDict, dict[str, float]]:
    """Sign election by β-weighted mass and the β-weighted mean of the agreeing entries.

    Also returns counts for the record: the share of entries where trimmed experts disagree in sign
    (``conflict``) and where no expert is left (``empty``)."""
    w = beta.tolist()
    merged, conflicts, empties, total = {}, 0, 0, 0
    for name in trimmed[0]:
        vals = [t[name] for t in trimmed]
        gamma = torch.sign(sum(b * v for b, v in zip(w, vals, strict=True)))
        num = torch.zeros_like(vals[0])
        den = torch.zeros_like(vals[0])
        pos = torch.zeros_like(vals[0], dtype=torch.bool)
        neg = torch.zeros_like(vals[0], dtype=torch.bool)
        for b, v in zip(w, vals, strict=True):
            agree = (torch.sign(v) == gamma) & (v != 0)
            num = num + torch.where(agree, b * v, torch.zeros_like(v))
            den = den + agree.to(v.dtype) * b
            pos, neg = pos | (v > 0), neg | (v < 0)
        merged[name] = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))
        conflicts += int((pos & neg).sum())
        empties += int((den == 0).sum())
        total += den.numel()
    return merged, {"conflict": conflicts / max(total, 1), "empty": empties / max(total, 1)}


def ties_vector(taus: Sequence[ParamDict], beta: Tensor, k: float) -> tuple[ParamDict, dict[str, float]]:
    """τ_m: trim every task vector to its top-k fraction, elect signs, take the disjoint mean."""
    return elect_and_merge([trim(t, k) for t in taus], beta)


def ties(
    task: CodingTask,
    k: float | None = None,
    lam: float | None = None,
    k_grid: Sequence[float] = K_GRID,
    lam_grid: Sequence[float] = LAM_GRID,
    rule: str = "score",
) -> EncodeResult:
    """Needs the base model (``task.base``). ``k`` (fraction kept) and ``lam`` (scale) are fixed when given,
    otherwise picked on the P samples over ``k_grid`` × ``lam_grid``."""
    if task.base is None:
        raise CodingError("ties needs the base model the experts were fine-tuned from")
    ks = [k] if k is not None else list(k_grid)
    lams = [lam] if lam is not None else list(lam_grid)
    if not ks or not lams:
        raise CodingError("ties: empty hyperparameter grid")
    if any(not math.isfinite(v) or v < 0 for v in lams):
        raise CodingError(f"ties: λ must be finite and ≥ 0, got {lams}")
    base = params_of(task.base)
    taus = task_vectors(base, [params_of(m) for m in task.experts])
    buffers = merge_buffers(task.experts, task.beta)
    rows, merged = [], []
    for kk in ks:
        tau_m, counts = ties_vector(taus, task.beta, kk)
        merged.append(tau_m)
        for lm in lams:
            model = build_coded(task.experts[0], add_scaled(base, tau_m, lm), buffers)
            rows.append({"k": kk, "lam": lm, **counts, **task.score(model)})
    best = pick(rows, rule)
    chosen = rows[best]
    # Grid models are not kept (a large model times the grid size would not fit); the winner is rebuilt.
    model = build_coded(task.experts[0], add_scaled(base, merged[best // len(lams)], chosen["lam"]), buffers)
    return EncodeResult("ties", model, {"k": chosen["k"], "lam": chosen["lam"], "conflict": chosen["conflict"],
                                        "empty": chosen["empty"], "grid": rows, "rule": rule})
