"""COIN: exact on networks that are linear, and its two limits in λ."""

from __future__ import annotations

import torch
from conftest import make_cnn, perturbed
from torch import nn

import coin
from coin.methods.coin import coin_merge
from coin.methods.fisher import fisher_merge


def linear_experts(n: int) -> list[nn.Module]:
    torch.manual_seed(11)
    return [nn.Linear(6, 5) for _ in range(n)]


def test_linear_networks_decode_exactly(x6):
    experts = linear_experts(3)
    beta = [0.2, 0.3, 0.5]
    res = coin.encode("coin", experts, beta, x6)
    outs = [coin.outputs(m, x6) for m in experts]
    fc = coin.outputs(res.model, x6)
    b = torch.tensor(beta)
    for i in range(3):
        torch.testing.assert_close(coin.decode(fc, outs, b, i), outs[i], atol=1e-5, rtol=1e-5)
    test = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    sets = [(test, coin.outputs(m, test).argmax(-1)) for m in experts]
    rows = coin.evaluate(res.model, experts, b, sets)
    assert [r.nda for r in rows] == [100.0, 100.0, 100.0]


def test_single_conv_layer_is_linear_and_decodes_exactly(img):
    torch.manual_seed(2)
    experts = [nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()) for _ in range(2)]
    res = coin.encode("coin", experts, [0.4, 0.6], img)
    outs = [coin.outputs(m, img) for m in experts]
    dec = coin.decode(coin.outputs(res.model, img), outs, torch.tensor([0.4, 0.6]), 0)
    torch.testing.assert_close(dec, outs[0], atol=1e-5, rtol=1e-5)


def test_nonlinear_network_is_not_exact(mlp_experts, x6):
    """Guards the exactness test against passing trivially."""
    res = coin.encode("coin", mlp_experts, [0.5, 0.5], x6, lam=1e-3)
    outs = [coin.outputs(m, x6) for m in mlp_experts]
    dec = coin.decode(coin.outputs(res.model, x6), outs, torch.tensor([0.5, 0.5]), 0)
    assert (dec - outs[0]).abs().max() > 1e-3


def test_coin_tends_to_beta_average_as_lambda_grows(mlp_experts, x6):
    beta = torch.tensor([0.3, 0.7], dtype=torch.float64)
    thetas = [coin.params_of(m) for m in mlp_experts]
    fishers = [coin.output_fisher(m, x6) for m in mlp_experts]
    avg = coin.weighted_average(thetas, beta)
    far = coin_merge(thetas, fishers, beta, 1e9)
    near = coin_merge(thetas, fishers, beta, 1e-3)
    for n in avg:
        torch.testing.assert_close(far[n], avg[n], atol=1e-6, rtol=1e-6)
    assert max((near[n] - avg[n]).abs().max().item() for n in avg) > 1e-2


def test_coin_tends_to_fisher_merging_as_lambda_vanishes(mlp_experts, x6):
    beta = torch.tensor([0.3, 0.7], dtype=torch.float64)
    thetas = [coin.params_of(m) for m in mlp_experts]
    fishers = [coin.output_fisher(m, x6) for m in mlp_experts]
    plain = {}
    for n in thetas[0]:
        num = sum(b * f[n] * t[n] for b, f, t in zip([0.3, 0.7], fishers, thetas, strict=True))
        den = sum(b * f[n] for b, f in zip([0.3, 0.7], fishers, strict=True))
        plain[n] = num / den
    tiny = coin_merge(thetas, fishers, beta, 1e-12)
    exact = fisher_merge(thetas, fishers, beta)
    for n in plain:
        torch.testing.assert_close(tiny[n], plain[n], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(exact[n], plain[n], atol=1e-6, rtol=1e-6)


def test_lambda_selection_reports_grid_and_relative_lambda(mlp_experts, x6):
    y = torch.randint(0, 4, (24,), generator=torch.Generator().manual_seed(3))
    owner = torch.arange(24) % 2
    res = coin.encode("coin", mlp_experts, [0.5, 0.5], x6, y=y, owner=owner)
    grid = res.info["grid"]
    assert [r["lam"] for r in grid] == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert res.info["lam"] in [r["lam"] for r in grid]
    assert abs(res.info["lam_rel"] * res.info["mean_fisher"] - res.info["lam"]) < 1e-12
    rel = coin.encode("coin", mlp_experts, [0.5, 0.5], x6, relative=True, grid=[1e-2, 1.0])
    assert abs(rel.info["lam_rel"] - 1e-2) < 1e-12 or abs(rel.info["lam_rel"] - 1.0) < 1e-12
    assert res.seconds > 0


def test_batchnorm_buffers_shared_kept_differing_averaged(img):
    base = make_cnn(1)
    a, b = perturbed(base, 1), perturbed(base, 2)
    res = coin.encode("coin", [a, b], [0.5, 0.5], img, lam=1e-3)
    torch.testing.assert_close(res.model[1].running_mean, base[1].running_mean)
    with torch.no_grad():
        b[1].running_var.mul_(3.0)
        b[1].num_batches_tracked.fill_(7)
    res = coin.encode("coin", [a, b], [0.25, 0.75], img, lam=1e-3)
    torch.testing.assert_close(res.model[1].running_var, 0.25 * a[1].running_var + 0.75 * b[1].running_var)
    assert res.model[1].num_batches_tracked.dtype == torch.long
    assert int(res.model[1].num_batches_tracked) == 7
