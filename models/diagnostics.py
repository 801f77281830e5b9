"""Health checks of trained networks.

`dead_units` finds units that never fire on a data set. A ReLU unit whose output is 0 for every input gets
no gradient and no Fisher information in its incoming weights (every output's Jacobian w.r.t. them is 0),
and its outgoing weights only ever see a zero input. A zoo with many of them leaves a large share of the
parameters out of COIN's Fisher weighting: on those coordinates every merge is as good as any other.
For leaky ReLU and GELU the same test (output never positive) finds units stuck in the negative regime;
those still pass a small gradient, so they are weak rather than dead.
"""

from __future__ import annotations

import torch
from torch import nn

WATCHED = (nn.ReLU, nn.LeakyReLU, nn.GELU)


def _unit_view(out: torch.Tensor) -> torch.Tensor:
    """Activation as (samples, units, positions): a conv layer's unit is a channel over all positions."""
    if out.dim() == 2:
        return out.unsqueeze(-1)
    return out.flatten(2)


@torch.no_grad()
def unit_activity(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> dict[str, tuple[int, int]]:
    """(dead, total) units of every activation module of `model` over the inputs `x`, keyed by module name.

    Activation modules are `nn.ReLU`, `nn.LeakyReLU` and `nn.GELU`. A unit is a feature of a
    (samples × features) activation or a channel of a (samples × channels × …) one; it is dead when the
    activation's output is never positive, for any input at any spatial position (for ReLU: exactly 0).
    The model is run in eval mode on the device of its parameters; its training flag is restored.
    Activations applied as functions (`torch.relu`) are not seen; modules used more than once are counted over
    all their calls (dead only when dead in every call).
    """
    alive: dict[str, torch.Tensor] = {}
    hooks = []

    def watch(name: str):
        def hook(_module: nn.Module, _inputs, out: torch.Tensor) -> None:
            fired = (_unit_view(out) > 0).any(dim=2).any(dim=0).cpu()
            alive[name] = fired if name not in alive else alive[name] | fired
        return hook

    for name, module in model.named_modules():
        if isinstance(module, WATCHED):
            hooks.append(module.register_forward_hook(watch(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for begin in range(0, len(x), batch_size):
            model(x[begin:begin + batch_size].to(device))
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    return {name: (int((~fired).sum()), int(fired.numel())) for name, fired in alive.items()}


def dead_units(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> dict[str, int]:
    """Number of dead units per activation module (channels for conv layers); see `unit_activity`."""
    return {name: dead for name, (dead, _total) in unit_activity(model, x, batch_size).items()}
