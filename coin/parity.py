"""Learned parity models: coding over *queries*, the other family of coded inference.

Where COIN codes over models (one coded network f_c ≈ Σ βᵢ fᵢ answers for any expert on the same query), a parity
model codes over queries: k queries x₁..x_k for one expert f are encoded into one parity query E(x₁..x_k), a
parity network f_p is trained so that f_p(E(x₁..x_k)) ≈ Σⱼ f(xⱼ), and the output of a query whose server is slow
is decoded as f_p(E(x)) − Σ_{j≠i} f(xⱼ). The parity network must be trained — with data and compute — which is
the cost the COIN paper weighs against parameter averaging; `train_parity` measures it (seconds, samples, epochs)
and `degraded_accuracy` scores what the decoded answers are worth (the metric that line of work reports).

Encoders (`ENCODERS`): ``sum`` adds the k inputs; ``concat`` shrinks each to one tile of a ⌈√k⌉-row grid (area
averaging) and places them side by side in one input of the original size, empty tiles left at zero.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coin.errors import CodingError


def sum_encoder(xs: Tensor) -> Tensor:
    """(k, B, ...) → (B, ...): the k queries added."""
    return xs.sum(0)


def grid(k: int) -> tuple[int, int]:
    """Rows and columns of the tiling the concat encoder places k queries in."""
    rows = math.ceil(math.sqrt(k))
    return rows, math.ceil(k / rows)


def concat_encoder(xs: Tensor) -> Tensor:
    """(k, B, C, H, W) → (B, C, H, W): each query shrunk by area averaging to one tile of the grid, tiles in
    row-major order, empty tiles zero. H and W must be divisible by the grid's rows and columns."""
    if xs.ndim != 5:
        raise CodingError(f"the concat encoder needs image queries (k, B, C, H, W), got shape {tuple(xs.shape)}")
    k, b, c, h, w = xs.shape
    rows, cols = grid(k)
    if h % rows or w % cols:
        raise CodingError(f"the concat encoder cannot tile {k} queries of {h}×{w} pixels in a {rows}×{cols} grid "
                          "(the sides must divide evenly)")
    th, tw = h // rows, w // cols
    out = xs.new_zeros((b, c, h, w))
    small = F.adaptive_avg_pool2d(xs.reshape(k * b, c, h, w), (th, tw)).reshape(k, b, c, th, tw)
    for j in range(k):
        r, q = divmod(j, cols)
        out[:, :, r * th:(r + 1) * th, q * tw:(q + 1) * tw] = small[j]
    return out


ENCODERS: dict[str, Callable[[Tensor], Tensor]] = {"sum": sum_encoder, "concat": concat_encoder}


def check_code(k: int, encoder: str) -> None:
    """Refuse a parity code that cannot be one whatever the networks: k < 2, an unknown encoder."""
    if not isinstance(k, int) or k < 2:
        raise CodingError(f"a parity code needs k ≥ 2 queries per parity query, got {k!r}")
    if encoder not in ENCODERS:
        raise CodingError(f"unknown parity encoder '{encoder}'; choose from {', '.join(ENCODERS)}")


def check_parity(k: int, encoder: str, sample: Tensor, parity: nn.Module, expert: nn.Module) -> None:
    """Refuse, before any training, what cannot be a parity code: `check_code`, an encoder that does not fit the
    input shape, a parity network whose output is not the expert's."""
    check_code(k, encoder)
    xs = sample[:1].unsqueeze(0).expand(k, *sample[:1].shape)
    encoded = ENCODERS[encoder](xs)
    with torch.no_grad():
        got, want = parity.eval()(encoded), expert.eval()(sample[:1])
    if got.shape != want.shape:
        raise CodingError(f"the parity network answers {tuple(got.shape[1:])} where the expert answers "
                          f"{tuple(want.shape[1:])}")


def groups(n: int, k: int, generator: torch.Generator) -> Tensor:
    """(n // k, k) indices: a random partition of range(n) into groups of k (the rest left out)."""
    return torch.randperm(n, generator=generator)[: (n // k) * k].reshape(-1, k)


@dataclass
class ParityResult:
    """A trained parity network and what it cost."""

    model: nn.Module
    k: int
    encoder: str
    init: str
    seconds: float
    samples: int  # training queries (the expert's training pool)
    epochs: int
    history: list[dict] = field(default_factory=list)


def train_parity(expert: nn.Module, x: Tensor, k: int, encoder: str = "sum", init: nn.Module | None = None,
                 init_name: str = "scratch", epochs: int = 20, lr: float = 1e-3, batch_size: int = 64,
                 weight_decay: float = 0.0, seed: int = 0, targets: Tensor | None = None) -> ParityResult:
    """Train a parity network for `expert` on the queries `x` (its training pool): every epoch draws a fresh
    random grouping of the pool into groups of k, encodes each group, and regresses the parity network's output
    on the sum of the expert's outputs on the group's queries (MSE). `init` is the network to start from (a copy;
    the base model, or a freshly initialised one for 'scratch'; default: a re-initialised copy of the expert).
    `targets`: each query's output to sum instead of the expert's (a parity network for groups that mix experts'
    queries: each query's own expert's output). Timed on the wall clock, everything included."""
    if init is None:
        init = copy.deepcopy(expert)
        for module in init.modules():  # the network itself included (a bare layer is its own only module)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    parity = copy.deepcopy(init)
    check_parity(k, encoder, x, parity, expert)
    if len(x) < k:
        raise CodingError(f"a parity code with k = {k} needs at least {k} training queries, got {len(x)}")
    encode = ENCODERS[encoder]
    started = time.perf_counter()
    expert.eval()
    if targets is None:
        with torch.no_grad():
            targets = torch.cat([expert(chunk) for chunk in x.split(1024)])
    elif len(targets) != len(x):
        raise CodingError(f"parity training: {len(targets)} target outputs for {len(x)} queries")
    for p in parity.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(parity.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    parity.eval()  # BatchNorm keeps its statistics, as the experts' fine-tuning does
    history = []
    for epoch in range(1, epochs + 1):
        index = groups(len(x), k, gen)
        total = 0.0
        for chunk in index.split(batch_size):
            inputs = encode(x[chunk.T])  # (k, b, ...) -> (b, ...)
            loss = (parity(inputs) - targets[chunk].sum(1)).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(chunk)
        history.append({"epoch": epoch, "train_loss": total / max(len(index), 1)})
    for p in parity.parameters():
        p.requires_grad_(False)
    return ParityResult(parity.eval(), k, encoder, init_name, time.perf_counter() - started, len(x), epochs, history)


def decode(parity_out: Tensor, others: Tensor) -> Tensor:
    """The missing query's output: the parity output less the k − 1 outputs that returned ((k − 1, B, C) summed)."""
    return parity_out - others.sum(0)


def degraded_accuracy(parity: nn.Module, expert: nn.Module, x: Tensor, y: Tensor, k: int, encoder: str = "sum",
                      seed: int = 0, outputs: Tensor | None = None) -> dict[str, float]:
    """Degraded mode: the test queries in random groups of k; for every query of every group, its output decoded
    from the group's parity output and the other k − 1 outputs (as if its server were the slow one). Returns the
    accuracy of the decoded answers against the labels (`degraded_accuracy_pct`), their agreement with the
    expert's own answer (`agreement_pct`), the expert's accuracy on the same queries (`expert_accuracy_pct`) and
    how many decoded answers were scored (`n`). `outputs`: each query's own output instead of the expert's (groups
    that mix experts' queries)."""
    check_parity(k, encoder, x, parity, expert)
    index = groups(len(x), k, torch.Generator().manual_seed(seed))
    if not len(index):
        raise CodingError(f"degraded mode with k = {k} needs at least {k} test queries, got {len(x)}")
    with torch.no_grad():
        outs = outputs if outputs is not None else torch.cat([expert.eval()(chunk) for chunk in x.split(1024)])
        par = torch.cat([parity.eval()(ENCODERS[encoder](x[chunk.T])) for chunk in index.split(256)])
    grouped = outs[index]  # (G, k, C)
    total = grouped.sum(1, keepdim=True)  # (G, 1, C)
    decoded = par.unsqueeze(1) - (total - grouped)  # each member missing in turn: parity − the others
    labels, own = y[index], grouped.argmax(-1)
    guess = decoded.argmax(-1)
    return {"degraded_accuracy_pct": float((guess == labels).float().mean() * 100),
            "agreement_pct": float((guess == own).float().mean() * 100),
            "expert_accuracy_pct": float((own == labels).float().mean() * 100),
            "n": int(index.numel())}
