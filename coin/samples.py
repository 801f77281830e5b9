"""Drawing the P coding samples: P/N from each expert's own (training) pool, as in the paper (P' = 100
per expert, P = 200)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from coin.errors import CodingError


def draw_coding_samples(
    pools: Sequence[tuple[Tensor, Tensor]], p: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(x, y, owner) with ⌊P/N⌋ samples from each pool (the first P mod N pools give one more)."""
    n = len(pools)
    if p < 1:
        raise CodingError(f"P must be ≥ 1, got {p}")
    total = sum(len(y) for _, y in pools)
    if p > total:
        raise CodingError(f"P={p} exceeds the available data ({total} samples in {n} pools)")
    shares = [p // n + (1 if i < p % n else 0) for i in range(n)]
    for i, ((_, y), k) in enumerate(zip(pools, shares, strict=True)):
        if k > len(y):
            raise CodingError(f"P={p} needs {k} samples from pool {i}, which has only {len(y)}")
    gen = torch.Generator().manual_seed(seed)
    xs, ys, owners = [], [], []
    for i, ((x, y), k) in enumerate(zip(pools, shares, strict=True)):
        idx = torch.randperm(len(y), generator=gen)[:k]
        xs.append(x[idx.to(x.device)])
        ys.append(y[idx.to(y.device)])
        owners.append(torch.full((k,), i, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys), torch.cat(owners)
