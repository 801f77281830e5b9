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


def all_samples(pools: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """(x, y, owner): every sample of every pool, pool by pool (what a method with `training_pools` is given)."""
    if not pools:
        raise CodingError("no training pools to code from")
    owners = [torch.full((len(y),), i, dtype=torch.long) for i, (_, y) in enumerate(pools)]
    return torch.cat([x for x, _ in pools]), torch.cat([y for _, y in pools]), torch.cat(owners)


def coding_samples(method_fn: object, pools: Sequence[tuple[Tensor, Tensor]], p: int, seed: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The inputs a coding method looks at: P drawn samples, or every training query for a method that trains on
    the pools (`training_pools = True`)."""
    if getattr(method_fn, "training_pools", False):
        return all_samples(pools)
    return draw_coding_samples(pools, p, seed)
