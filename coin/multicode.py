"""r > 1 coded models: coding matrices and decoding of several missing outputs at once.

Coded model k approximates Σⱼ B[k, j] fⱼ. With N experts and r coded models, any set M of missing experts with
|M| ≤ (number of coded outputs that came back) is recovered by solving the small linear system
B[C, M] f_M = f_C − B[C, A] f_A (least squares when more coded outputs than unknowns are back).
That works for every choice of M and C only if every square submatrix of B is invertible; a Cauchy matrix
1/(xₖ + yⱼ) with positive, distinct x and y has that property, and scaling its rows to sum 1 keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from coin.errors import CodingError


def cauchy_coding_matrix(n_experts: int, r: int) -> np.ndarray:
    """r × N positive coding weights, rows summing to 1, every square submatrix invertible.

    r = 1 gives uniform weights (the paper's β = 1/N); for r > 1 the nodes xₖ = k + 1/2, yⱼ = j + 1 keep the
    rows distinct enough that small systems stay well conditioned for the N, r used in practice.
    """
    if n_experts < 2 or r < 1:
        raise CodingError(f"need N >= 2 experts and r >= 1 coded models (got N={n_experts}, r={r})")
    if r == 1:
        return np.full((1, n_experts), 1.0 / n_experts)
    x = np.arange(r) + 0.5
    y = np.arange(n_experts) + 1.0
    cauchy = 1.0 / (x[:, None] + y[None, :])
    return cauchy / cauchy.sum(axis=1, keepdims=True)


def check_coding_matrix(matrix: Sequence[Sequence[float]] | np.ndarray, n_experts: int) -> np.ndarray:
    """Validate an r × N coding matrix: positive entries, rows summing to 1."""
    b = np.asarray(matrix, dtype=float)
    if b.ndim != 2 or b.shape[1] != n_experts:
        raise CodingError(f"coding matrix must have shape (r, {n_experts}), got {b.shape}")
    if np.any(b <= 0) or not np.allclose(b.sum(axis=1), 1.0, atol=1e-6):
        raise CodingError("every coding weight vector must be positive and sum to 1")
    return b


def worst_condition(matrix: np.ndarray) -> float:
    """Largest condition number over all square submatrices (the decoding systems that can arise)."""
    r, n = matrix.shape
    worst = 1.0
    for size in range(1, min(r, n) + 1):  # a square system is at most as large as the smaller side
        for rows in combinations(range(r), size):
            for cols in combinations(range(n), size):
                worst = max(worst, float(np.linalg.cond(matrix[np.ix_(rows, cols)])))
    return worst


def decode_missing(
    expert_outs: np.ndarray,
    coded_outs: np.ndarray,
    matrix: np.ndarray,
    missing: Sequence[int],
    coded_back: Sequence[int],
) -> np.ndarray:
    """Outputs of the `missing` experts from the others and the coded outputs that came back.

    expert_outs: (N, S, K), rows of missing experts are ignored; coded_outs: (r, S, K). Returns (|M|, S, K).
    """
    missing, coded_back = list(missing), list(coded_back)
    if len(coded_back) < len(missing):
        raise CodingError(f"{len(missing)} missing outputs need at least as many coded outputs, got {len(coded_back)}")
    present = [j for j in range(matrix.shape[1]) if j not in missing]
    rhs = coded_outs[coded_back] - np.einsum("cj,jsk->csk", matrix[np.ix_(coded_back, present)], expert_outs[present])
    system = matrix[np.ix_(coded_back, missing)]
    c, s, k = rhs.shape
    solution, *_ = np.linalg.lstsq(system, rhs.reshape(c, s * k), rcond=None)
    return solution.reshape(len(missing), s, k)
