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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from coin.params import ParamDict

DEFAULT_MAX_BYTES = 256 * 2**20
METHODS = ("auto", "layers", "vmap")
# Upper bound on samples per chunk on the layer-wise path (memory is bounded separately by max_bytes);
# on the SmallCNN, interleaved timings gave 11 / 8.6 / 6.6 / 4.6 ms per sample for 16 / 32 / 64 / 128.
LAYER_CHUNK = 256


def jacobian_sq_diag(
    model: nn.Module,
    x: Tensor,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    weights: Tensor | None = None,
    chunk_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    method: str = "auto",
) -> ParamDict:
    """(1/P) Σₗ Σₖ wₗₖ (∂gₖ(xₗ)/∂θ)² per parameter, with g = transform(f) (default f) and w = 1 by default.

    The model is evaluated in eval mode (BatchNorm uses its running statistics, so samples stay
    independent). ``weights`` has shape (P, K). ``method``: ``layers`` backpropagates the K output
    directions in one batched backward pass and forms each layer's per-sample gradients from its saved
    inputs (Linear, Conv2d, eval BatchNorm; exact, and far cheaper than materializing full Jacobians);
    ``vmap`` materializes per-sample Jacobians with torch.func and works for any module; ``auto`` uses
    ``layers`` when every parameter belongs to a supported module called once per forward, else ``vmap``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown Jacobian method '{method}'")
    if method in ("auto", "layers"):
        try:
            return _layers_sq_diag(model, x, transform, weights, chunk_size, max_bytes)
        except _Unsupported:
            if method == "layers":
                raise
    return _vmap_sq_diag(model, x, transform, weights, chunk_size, max_bytes)


class _Unsupported(Exception):
    """The model has a parameterized module the layer-wise path cannot handle."""


def _supported(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    if isinstance(mod, nn.Conv2d):
        return mod.groups == 1 and mod.padding_mode == "zeros" and not isinstance(mod.padding, str)
    if isinstance(mod, nn.BatchNorm2d | nn.BatchNorm1d):
        return mod.track_running_stats and mod.running_mean is not None
    return False


def _layers_sq_diag(model, x, transform, weights, chunk_size, max_bytes) -> ParamDict:
    owners: dict[str, tuple[str, nn.Module]] = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            if not _supported(mod):
                raise _Unsupported(mname)
            owners[f"{mname}.{pname}" if mname else pname] = (mname, mod)
    mods = {m: mod for m, mod in owners.values()}
    params = dict(model.named_parameters())
    if set(owners) != set(params):
        raise _Unsupported("shared parameters")
    was_training = model.training
    flags = {n: p.requires_grad for n, p in params.items()}
    model.eval()
    saved: dict[str, list] = {}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple, out: Tensor) -> None:
            saved.setdefault(name, []).append((args[0].detach(), out))

        return fn

    handles = [mod.register_forward_hook(hook(name)) for name, mod in mods.items()]
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.no_grad():
            model(x[:1])
        per_sample = sum(o.numel() for v in saved.values() for _, o in v) * 3 + sum(
            m.weight.numel() for m in mods.values() if isinstance(m, nn.Conv2d))
        saved.clear()
        if chunk_size is None:
            chunk_size = max(1, min(LAYER_CHUNK, int(max_bytes // (4 * max(per_sample, 1)))))
        for start in range(0, x.shape[0], chunk_size):
            xb = x[start : start + chunk_size]
            saved.clear()
            with torch.enable_grad():
                out = model(xb)
                if transform is not None:
                    out = transform(out)
                if out.dim() != 2 or len(saved) != len(mods) or any(len(v) != 1 for v in saved.values()):
                    raise _Unsupported("module reused or output not (B, K)")
                names = list(saved)
                outs = [saved[n][0][1] for n in names]
                cache: dict[str, Tensor] = {}
                scale = None if weights is None else weights[start : start + chunk_size].to(out.dtype).sqrt()
                # One backward per output k over the whole chunk (the forward is shared): seeding with the
                # k-th unit vector per sample gives every layer's per-sample output gradient for output k;
                # sqrt(w) in the seed makes the squares carry the weights w.
                for k in range(out.shape[1]):
                    seed = torch.zeros_like(out)
                    seed[:, k] = 1.0 if scale is None else scale[:, k]
                    grads = torch.autograd.grad(out, outs, grad_outputs=seed, allow_unused=True,
                                                retain_graph=k + 1 < out.shape[1])
                    for name, g in zip(names, grads, strict=True):
                        if g is not None:
                            _accumulate(mods[name], name, saved[name][0][0], g.detach().unsqueeze(0), acc, cache)
        return {n: a / x.shape[0] for n, a in acc.items()}
    finally:
        for h in handles:
            h.remove()
        saved.clear()
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)


def _accumulate(mod: nn.Module, name: str, inp: Tensor, g: Tensor, acc: ParamDict, cache: dict) -> None:
    """Add Σ_{k,b} (per-sample gradient)² of ``mod``'s parameters; g is (K, B, *out_shape). ``cache`` keeps
    the layer's unfolded input / normalized input across the K output directions of one chunk."""
    pre = f"{name}." if name else ""
    if isinstance(mod, nn.Linear):
        if inp.dim() != 2:
            raise _Unsupported("Linear on sequences")
        g2 = g.pow(2)
        acc[pre + "weight"] += torch.einsum("kbo,bi->oi", g2, inp.pow(2))
        if mod.bias is not None:
            acc[pre + "bias"] += g2.sum(dim=(0, 1))
    elif isinstance(mod, nn.Conv2d):
        if name not in cache:
            cache[name] = F.unfold(inp, mod.kernel_size, dilation=mod.dilation, padding=mod.padding,
                                   stride=mod.stride)
        cols = cache[name]
        gf = g.reshape(g.shape[0], g.shape[1], g.shape[2], -1)  # (K, B, out, L)
        per = torch.einsum("kbol,bil->kboi", gf, cols)  # per-sample, per-output weight gradients
        acc[pre + "weight"] += per.pow(2).sum(dim=(0, 1)).reshape(mod.weight.shape)
        if mod.bias is not None:
            acc[pre + "bias"] += gf.sum(-1).pow(2).sum(dim=(0, 1))
    else:  # eval-mode BatchNorm: y = γ x̂ + β per channel
        shape = [1, -1] + [1] * (inp.dim() - 2)
        if name not in cache:
            cache[name] = (inp - mod.running_mean.reshape(shape)) / torch.sqrt(
                mod.running_var.reshape(shape) + mod.eps)
        xhat = cache[name]
        gf = g.reshape(g.shape[0], g.shape[1], g.shape[2], -1)
        if mod.weight is not None:
            acc[pre + "weight"] += (gf * xhat.reshape(1, xhat.shape[0], xhat.shape[1], -1)).sum(-1).pow(2).sum(
                dim=(0, 1))
        if mod.bias is not None:
            acc[pre + "bias"] += gf.sum(-1).pow(2).sum(dim=(0, 1))


def _vmap_sq_diag(model, x, transform, weights, chunk_size, max_bytes) -> ParamDict:
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
