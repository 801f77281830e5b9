"""Vanilla averaging (model soups): θ = Σ βᵢ θᵢ."""

from __future__ import annotations

from coin.params import build_coded, merge_buffers, params_of, weighted_average
from coin.task import CodingTask, EncodeResult


def vanilla(task: CodingTask) -> EncodeResult:
    """β-weighted parameter average; needs no data."""
    thetas = [params_of(m) for m in task.experts]
    merged = weighted_average(thetas, task.beta)
    coded = build_coded(task.experts[0], merged, merge_buffers(task.experts, task.beta))
    return EncodeResult("vanilla", coded, {})
