"""Aligned COIN: OT-align the experts to expert 0, then run COIN on the aligned experts.

Experts trained from different initializations have no neuron correspondence, so COIN's per-parameter
merge (like any averaging) mixes unrelated neurons. An exact-OT alignment is a permutation, so the aligned
experts compute the same functions and decoding against the original experts is unchanged; COIN then
merges parameters that play matching roles. The coding target and scores stay those of the original
experts (with Sinkhorn the aligned experts only approximate them).
"""

from __future__ import annotations

from coin.methods.coin import coin
from coin.methods.ot_fusion import alignment_info
from coin.otfusion import Metric, Solver, align_all
from coin.task import CodingTask, EncodeResult


def aligned_coin(
    task: CodingTask, metric: Metric = "weight", solver: Solver = "emd", reg: float = 0.01, **coin_options
) -> EncodeResult:
    """``coin_options`` go to the COIN method unchanged (lam, grid, relative, rule, chunk_size, ...)."""
    alignments = align_all(task.experts, metric=metric, solver=solver, reg=reg, x=task.x)
    aligned = CodingTask([a.model for a in alignments], task.beta, task.x, task.y, task.owner, task.base,
                         task.seed, _expert_out=task.expert_outputs())
    res = coin(aligned, **coin_options)
    info = {**res.info, "metric": metric, "solver": solver, "reg": reg, **alignment_info(alignments)}
    return EncodeResult("aligned_coin", res.model, info)
