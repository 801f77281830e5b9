"""OT fusion as a coding method: align every expert's neurons to expert 0, then β-average (Singh & Jaggi)."""

from __future__ import annotations

from coin.otfusion import Metric, Solver, fuse
from coin.task import CodingTask, EncodeResult


def alignment_info(alignments: list) -> dict:
    """Per aligned expert: whether every map is a permutation and the share of neurons left in place."""
    return {"permutation": [a.is_permutation for a in alignments[1:]],
            "identity_fraction": [a.identity_fraction for a in alignments[1:]]}


def ot_fusion(task: CodingTask, metric: Metric = "weight", solver: Solver = "emd", reg: float = 0.01) -> EncodeResult:
    """Data-free with the weight metric; the activation metric uses the P coding samples."""
    fusion = fuse(task.experts, task.beta, metric=metric, solver=solver, reg=reg, x=task.x)
    info = {"metric": metric, "solver": solver, "reg": reg, **alignment_info(fusion.alignments)}
    return EncodeResult("ot_fusion", fusion.model, info)
