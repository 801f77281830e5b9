"""The output-Fisher diagonal is exact: it matches one backward pass per (sample, output)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cnn, make_mlp
from torch import nn

from coin import categorical_fisher, loop_output_fisher, output_fisher


def rel_err(a: dict, b: dict) -> float:
    num = max((a[n] - b[n]).abs().max().item() for n in b)
    den = max(b[n].abs().max().item() for n in b)
    return num / den


@pytest.mark.parametrize("method", ["layers", "vmap"])
def test_output_fisher_matches_per_sample_loop_mlp(x6, method):
    net = make_mlp(3)
    assert rel_err(output_fisher(net, x6, method=method), loop_output_fisher(net, x6)) < 1e-5


@pytest.mark.parametrize("method", ["layers", "vmap"])
def test_output_fisher_matches_per_sample_loop_cnn_with_batchnorm(img, method):
    net = make_cnn(4)
    ref = loop_output_fisher(net, img)
    assert rel_err(output_fisher(net, img, method=method), ref) < 1e-5
    # chunking does not change the result
    assert rel_err(output_fisher(net, img, chunk_size=3, method=method), ref) < 1e-5
    # BatchNorm's affine parameters get a Fisher too
    assert ref["1.weight"].abs().sum() > 0


def test_squaring_a_batch_gradient_is_a_different_quantity(x6):
    """The bug the issue warns about: (Σₗ ∇fₖ(xₗ))²/P keeps cross-sample terms."""
    net = make_mlp(3)
    params = dict(net.named_parameters())
    out = net(x6)
    wrong = {n: torch.zeros_like(p) for n, p in params.items()}
    for k in range(out.shape[1]):
        grads = torch.autograd.grad(out[:, k].sum(), list(params.values()), retain_graph=True)
        for n, g in zip(params, grads, strict=True):
            wrong[n] += g.pow(2) / x6.shape[0]
    assert rel_err(wrong, loop_output_fisher(net, x6)) > 0.1


def test_unsupported_modules_fall_back_to_vmap(x6):
    """A parameterized module the layer-wise path does not know (LayerNorm) → exact vmap path."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3))
    with pytest.raises(Exception, match="LayerNorm|1"):
        output_fisher(net, x6, method="layers")
    assert rel_err(output_fisher(net, x6), loop_output_fisher(net, x6)) < 1e-5


@pytest.mark.parametrize("method", ["layers", "vmap"])
def test_categorical_fisher_matches_explicit_expectation(x6, method):
    net = make_mlp(5)
    params = dict(net.named_parameters())
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    for xi in x6:
        logp = torch.log_softmax(net(xi.unsqueeze(0)).squeeze(0), -1)
        for k in range(logp.numel()):
            grads = torch.autograd.grad(logp[k], list(params.values()), retain_graph=True)
            for n, g in zip(params, grads, strict=True):
                ref[n] += logp[k].exp().detach() * g.pow(2) / x6.shape[0]
    assert rel_err(categorical_fisher(net, x6, method=method), ref) < 1e-5
