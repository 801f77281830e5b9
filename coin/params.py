"""Parameter and buffer handling shared by all coding methods.

Every method works on plain ``{name: tensor}`` dicts so the arithmetic can be tested on toy tensors;
these helpers validate inputs, pull the dicts out of modules and put a merged dict back into a module.

Buffers (BatchNorm running statistics, ``num_batches_tracked``) are not parameters and are never
Fisher-weighted. When every expert carries the same buffer (the usual case: BatchNorm is frozen during
fine-tuning) it is copied unchanged. When they differ, floating buffers are β-averaged (for BatchNorm
this is the mixture's mean of the per-expert statistics) and integer buffers take the elementwise maximum,
so a counter stays an integer and never goes backwards.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from coin.errors import CodingError

ParamDict = dict[str, Tensor]


def check_beta(beta: Sequence[float] | Tensor, n: int) -> Tensor:
    """Return β as a float64 vector after checking length, positivity and Σβ = 1."""
    b = torch.as_tensor(beta, dtype=torch.float64).flatten()
    if b.numel() != n:
        raise CodingError(f"coding weights β have {b.numel()} entries but there are {n} experts")
    if not bool(torch.isfinite(b).all()) or bool((b <= 0).any()):
        raise CodingError(f"coding weights β must all be positive, got {b.tolist()}")
    if not math.isclose(float(b.sum()), 1.0, abs_tol=1e-6):
        raise CodingError(f"coding weights β must sum to 1, got sum {float(b.sum()):.6g}")
    return b


def check_experts(models: Sequence[nn.Module], base: nn.Module | None = None) -> None:
    """Raise CodingError unless all models share one architecture (same names, shapes and dtypes)."""
    if len(models) < 2:
        raise CodingError(f"coding needs at least 2 experts, got {len(models)}")
    ref = models[0]
    others = list(enumerate(models[1:], start=1))
    if base is not None:
        others.append(("base", base))
    ref_sig = _signature(ref)
    for idx, m in others:
        if type(m) is not type(ref):
            raise CodingError(
                f"experts differ in architecture: model {idx} is {type(m).__name__}, "
                f"model 0 is {type(ref).__name__}"
            )
        sig = _signature(m)
        if sig != ref_sig:
            diff = sorted(set(sig.items()) ^ set(ref_sig.items()))
            name = diff[0][0] if diff else "?"
            raise CodingError(
                f"experts differ in architecture: tensor '{name}' is {sig.get(name, 'missing')} "
                f"in model {idx} but {ref_sig.get(name, 'missing')} in model 0"
            )


def _signature(m: nn.Module) -> dict[str, tuple]:
    sig = {n: ("param", tuple(p.shape), p.dtype) for n, p in m.named_parameters()}
    sig.update({n: ("buffer", tuple(b.shape), b.dtype) for n, b in m.named_buffers()})
    return sig


def params_of(model: nn.Module) -> ParamDict:
    """Detached parameters of a module (no copy)."""
    return {n: p.detach() for n, p in model.named_parameters()}


def weighted_average(dicts: Sequence[ParamDict], beta: Tensor) -> ParamDict:
    """Σ βᵢ θᵢ per tensor (the vanilla coded model)."""
    out = {}
    for name in dicts[0]:
        acc = torch.zeros_like(dicts[0][name])
        for b, d in zip(beta.tolist(), dicts, strict=True):
            acc = acc + b * d[name]
        out[name] = acc
    return out


def task_vectors(base: ParamDict, thetas: Sequence[ParamDict]) -> list[ParamDict]:
    """τᵢ = θᵢ − θ₀ per tensor: what fine-tuning from the base changed in each expert."""
    return [{n: th[n] - base[n] for n in base} for th in thetas]


def add_scaled(base: ParamDict, delta: ParamDict, scale: float) -> ParamDict:
    """θ₀ + scale · δ per tensor."""
    return {n: base[n] + scale * delta[n] for n in base}


def merge_buffers(models: Sequence[nn.Module], beta: Tensor) -> ParamDict:
    """Buffers of the coded model: shared ones copied, differing floats β-averaged, integers max'ed."""
    per_model = [dict(m.named_buffers()) for m in models]
    out: ParamDict = {}
    for name, b0 in per_model[0].items():
        bs = [d[name] for d in per_model]
        if all(torch.equal(b0, b) for b in bs[1:]):
            out[name] = b0.detach().clone()
        elif b0.is_floating_point():
            out[name] = sum(float(w) * b.detach() for w, b in zip(beta.tolist(), bs, strict=True))
        else:
            out[name] = torch.stack([b.detach() for b in bs]).amax(dim=0)
    return out


def build_coded(template: nn.Module, params: ParamDict, buffers: ParamDict | None = None) -> nn.Module:
    """A deep copy of ``template`` carrying ``params`` (and ``buffers``), in eval mode."""
    coded = copy.deepcopy(template)
    state = {n: t.to(dtype=coded.get_parameter(n).dtype) for n, t in params.items()}
    if buffers is not None:
        state.update(buffers)
    missing, unexpected = coded.load_state_dict(state, strict=False)
    unknown = [k for k in missing if k in dict(coded.named_parameters())]
    if unknown or unexpected:
        raise CodingError(f"merged state does not fit the architecture: {(unknown + unexpected)[0]}")
    return coded.eval()
