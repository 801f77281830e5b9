"""RegMean (Jin et al. 2023): per linear layer, the weight that best reproduces every expert's layer output
on that expert's own layer inputs.

For a layer with weights Wᵢ (out × in) and input Gram matrices Gᵢ = XᵢᵀXᵢ / rows (Xᵢ: the inputs expert i
feeds that layer on the P samples), W = (Σ βᵢ G̃ᵢ + r I)⁻¹ (Σ βᵢ G̃ᵢ Wᵢᵀ + r W̄ᵀ), where G̃ keeps the diagonal
and scales the off-diagonal by ``nondiag`` (their regularizer; 1 = exact regression) and the ridge r
(relative to the mean Gram diagonal) pulls ill-determined directions to the β-average W̄. Conv2d layers are
linear maps of unfolded input patches, so they get the same treatment with in = C·kh·kw. Biases,
normalization parameters and grouped or non-zero-padded convolutions are β-averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coin.params import ParamDict, build_coded, merge_buffers, params_of, weighted_average
from coin.task import CodingTask, EncodeResult


def regmean_layers(model: nn.Module) -> list[str]:
    """Names of the modules RegMean solves for: Linear, and Conv2d with groups = 1 and zero padding."""
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or (
            isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str)
        ):
            names.append(name)
    return names


def layer_inputs_as_rows(mod: nn.Module, inp: Tensor) -> Tensor:
    """The layer's input as a (rows × in) matrix: features for Linear, unfolded patches for Conv2d."""
    if isinstance(mod, nn.Conv2d):
        cols = F.unfold(inp, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return inp.reshape(-1, inp.shape[-1])


@torch.no_grad()
def layer_grams(model: nn.Module, x: Tensor, layers: list[str], batch_size: int = 256) -> dict[str, Tensor]:
    """Mean input Gram matrix (float64) of each named layer over the samples ``x``."""
    mods = dict(model.named_modules())
    sums: dict[str, Tensor] = {}
    rows: dict[str, int] = dict.fromkeys(layers, 0)

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple) -> None:
            r = layer_inputs_as_rows(mod, args[0].detach()).double()
            sums[name] = sums.get(name, 0) + r.T @ r
            rows[name] += r.shape[0]

        return fn

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in layers]
    was_training = model.training
    model.eval()
    try:
        for xb in x.split(batch_size):
            model(xb)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / rows[n] for n in layers if n in sums}


def regmean_merge(
    thetas: list[ParamDict], grams: list[dict[str, Tensor]], beta: Tensor, nondiag: float = 0.9,
    ridge: float = 1e-4,
) -> ParamDict:
    """RegMean's closed form for every layer that has Gram matrices; everything else β-averaged."""
    merged = weighted_average(thetas, beta)
    for layer in grams[0]:
        key = f"{layer}.weight" if layer else "weight"
        shape = thetas[0][key].shape
        ws = [th[key].reshape(shape[0], -1).double() for th in thetas]
        a = torch.zeros_like(grams[0][layer])
        b = torch.zeros(a.shape[0], shape[0], dtype=a.dtype, device=a.device)
        for w_b, g, w in zip(beta.tolist(), (gd[layer] for gd in grams), ws, strict=True):
            g = g * nondiag + torch.diag_embed(torch.diagonal(g)) * (1 - nondiag)
            a = a + w_b * g
            b = b + w_b * (g @ w.T)
        r = ridge * torch.diagonal(a).mean().clamp_min(1e-12)
        w_avg = merged[key].reshape(shape[0], -1).double()
        eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        sol = torch.linalg.solve(a + r * eye, b + r * w_avg.T)
        merged[key] = sol.T.reshape(shape).to(thetas[0][key].dtype)
    return merged


def regmean(task: CodingTask, nondiag: float = 0.9, ridge: float = 1e-4) -> EncodeResult:
    """Gram matrices of each expert's own layer inputs over the P samples, then the closed form."""
    layers = regmean_layers(task.experts[0])
    grams = [layer_grams(m, task.x, layers) for m in task.experts]
    merged = regmean_merge([params_of(m) for m in task.experts], grams, task.beta, nondiag, ridge)
    coded = build_coded(task.experts[0], merged, merge_buffers(task.experts, task.beta))
    return EncodeResult("regmean", coded, {"layers": layers, "nondiag": nondiag, "ridge": ridge})
