"""Exact diagonals of Jacobian outer products, from per-sample Jacobians.

COIN needs diag(E_x[J Jᵀ]) with J = ∂f(x)/∂θ the K×d Jacobian of the *outputs*: for every parameter, the
squared per-sample derivatives summed over the K outputs and averaged over the P samples. Squaring the
gradient of a batch sum is a different (and wrong) quantity because cross-sample terms survive, so the
Jacobian is formed per sample with ``torch.func`` (``vmap`` over samples of ``jacrev``), in chunks sized
to bound memory, and squared before any reduction.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from coin.params import ParamDict

DEFAULT_MAX_BYTES = 256 * 2**20


def jacobian_sq_diag(
    model: nn.Module,
    x: Tensor,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    weights: Tensor | None = None,
    chunk_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ParamDict:
    """(1/P) Σₗ Σₖ wₗₖ (∂gₖ(xₗ)/∂θ)² per parameter, with g = transform(f) (default f) and w = 1 by default.

    The model is evaluated in eval mode (BatchNorm uses its running statistics, so samples stay
    independent). ``weights`` has shape (P, K).
    """
    was_training = model.training
    model.eval()
    try:
        params = {n: p.detach() for n, p in model.named_parameters()}
        buffers = {n: b.detach() for n, b in model.named_buffers()}

        def single(p: ParamDict, xi: Tensor) -> Tensor:
            out = functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)
            return transform(out) if transform is not None else out

        per_sample_jac = vmap(jacrev(single), in_dims=(None, 0))
        n_params = sum(p.numel() for p in params.values())
        if chunk_size is None:
            with torch.no_grad():
                k = single(params, x[0]).numel()
            chunk_size = max(1, int(max_bytes // (4 * k * max(n_params, 1) * 2)))
        acc = {n: torch.zeros_like(p) for n, p in params.items()}
        for start in range(0, x.shape[0], chunk_size):
            xb = x[start : start + chunk_size]
            jac = per_sample_jac(params, xb)
            wb = None if weights is None else weights[start : start + chunk_size]
            for name, j in jac.items():
                sq = j.pow(2)  # (B, K, *shape)
                if wb is not None:
                    sq = sq * wb.reshape(wb.shape + (1,) * (sq.dim() - 2)).to(sq.dtype)
                acc[name] += sq.sum(dim=(0, 1))
        return {n: a / x.shape[0] for n, a in acc.items()}
    finally:
        model.train(was_training)


def output_fisher(model: nn.Module, x: Tensor, **kw) -> ParamDict:
    """COIN's Fisher (eq. 16): diagonal of E_x[∇f ∇fᵀ] over the K outputs, Gaussian-likelihood view."""
    return jacobian_sq_diag(model, x, **kw)


def categorical_fisher(model: nn.Module, x: Tensor, **kw) -> ParamDict:
    """Exact Fisher of a softmax classifier (Matena & Raffel): E_x Σ_y p(y|x) (∂ log p(y|x)/∂θ)².

    The expectation over y is taken exactly over all K classes with the model's own probabilities, not
    sampled and not at the true label (that would be the 'empirical' Fisher).
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(xb), dim=-1) for xb in x.split(256)])
    model.train(was_training)
    return jacobian_sq_diag(model, x, transform=lambda o: torch.log_softmax(o, dim=-1), weights=probs, **kw)


def loop_output_fisher(model: nn.Module, x: Tensor) -> ParamDict:
    """Reference: one backward pass per (sample, output); slow, used by tests and the benchmark."""
    model.eval()
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for xi in x:
        out = model(xi.unsqueeze(0)).squeeze(0)
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], list(params.values()), retain_graph=True, allow_unused=True)
            for (n, _), g in zip(params.items(), grads, strict=True):
                if g is not None:
                    acc[n] += g.detach().pow(2)
    return {n: a / x.shape[0] for n, a in acc.items()}
