"""Tiny networks for coin/ tests: seconds to build, no data sets."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def make_mlp(seed: int, d_in: int = 6, hidden: int = 8, k: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, k))


def make_cnn(seed: int, k: int = 4) -> nn.Module:
    """Conv + BatchNorm + ReLU + pool + Linear on 1×6×6 inputs."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(3 * 3 * 3, k),
    )
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def perturbed(model: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """A copy of ``model`` with every parameter moved by Gaussian noise: an 'expert' of a 'base'."""
    import copy

    gen = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return out


@pytest.fixture
def mlp_experts() -> list[nn.Module]:
    base = make_mlp(0)
    return [perturbed(base, 1), perturbed(base, 2)]


@pytest.fixture
def x6() -> torch.Tensor:
    return torch.randn(24, 6, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def img() -> torch.Tensor:
    return torch.randn(10, 1, 6, 6, generator=torch.Generator().manual_seed(8))
