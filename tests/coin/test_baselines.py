"""Each baseline on a toy case whose answer can be checked independently."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import make_cnn, make_mlp, perturbed
from torch import nn

import coin
from coin.methods.regmean import layer_grams, regmean_layers


def test_vanilla_is_beta_weighted_average(mlp_experts, x6):
    res = coin.encode("vanilla", mlp_experts, [0.25, 0.75], x6)
    for n, p in res.model.named_parameters():
        ref = 0.25 * mlp_experts[0].get_parameter(n) + 0.75 * mlp_experts[1].get_parameter(n)
        torch.testing.assert_close(p, ref)


def test_task_arithmetic_picks_the_exact_alpha_for_linear_experts(x6):
    """Linear experts θ₀+τᵢ with β = ½: α = ½ reproduces Σβf exactly, so the grid must pick it."""
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    experts = [perturbed(base, 1), perturbed(base, 2)]
    res = coin.encode("task_arithmetic", experts, [0.5, 0.5], x6, base=base)
    assert res.info["alpha"] == 0.5
    assert len(res.info["grid"]) == 20
    for n, p in res.model.named_parameters():
        t = [e.get_parameter(n) - base.get_parameter(n) for e in experts]
        torch.testing.assert_close(p, base.get_parameter(n) + 0.5 * (t[0] + t[1]))


def test_task_arithmetic_needs_base(mlp_experts, x6):
    try:
        coin.encode("task_arithmetic", mlp_experts, [0.5, 0.5], x6)
    except coin.CodingError as e:
        assert "base model" in str(e)
    else:
        raise AssertionError("no error")


def test_regmean_solves_the_layer_regression(x6):
    """With no off-diagonal shrinkage and no ridge, layer 2's merged weight satisfies the normal equations
    Σᵢ βᵢ Hᵢᵀ(Hᵢ W − Hᵢ Wᵢ) = 0, Hᵢ being expert i's own hidden activations."""
    base = make_mlp(0)
    experts = [perturbed(base, 1), perturbed(base, 2)]
    beta = [0.4, 0.6]
    res = coin.encode("regmean", experts, beta, x6, nondiag=1.0, ridge=0.0)
    def normal_eq(w: torch.Tensor) -> float:
        grad, scale = torch.zeros_like(w), torch.zeros_like(w)
        for b, e in zip(beta, experts, strict=True):
            h = torch.tanh(e[0](x6)).double().detach()
            target = (h @ e[2].weight.double().T).detach()
            grad += b * (h @ w.T - target).T @ h
            scale += b * target.T @ h
        return (grad.abs().max() / scale.abs().max()).item()

    assert normal_eq(res.model[2].weight.double()) < 1e-5
    avg = 0.4 * experts[0][2].weight + 0.6 * experts[1][2].weight
    assert normal_eq(avg.double()) > 1e-2
    # the first layer sees the same inputs in both experts, so its solution is the β-average
    torch.testing.assert_close(res.model[0].weight, 0.4 * experts[0][0].weight + 0.6 * experts[1][0].weight)
    # biases are averaged
    torch.testing.assert_close(res.model[2].bias, 0.4 * experts[0][2].bias + 0.6 * experts[1][2].bias)


def test_regmean_conv_gram_is_the_gram_of_unfolded_patches(img):
    net = make_cnn(3)
    assert regmean_layers(net) == ["0", "5"]
    g = layer_grams(net, img, ["0"])["0"]
    padded = F.pad(img, (1, 1, 1, 1)).double()
    rows = [padded[n, :, i:i + 3, j:j + 3].reshape(-1)
            for n in range(len(img)) for i in range(6) for j in range(6)]
    r = torch.stack(rows)
    torch.testing.assert_close(g, r.T @ r / len(rows))


def test_regmean_offdiagonal_scaling_and_ridge_pull_to_average(mlp_experts, x6):
    res = coin.encode("regmean", mlp_experts, [0.5, 0.5], x6, nondiag=0.0, ridge=1e9)
    avg = 0.5 * (mlp_experts[0][2].weight + mlp_experts[1][2].weight)
    torch.testing.assert_close(res.model[2].weight, avg, atol=1e-6, rtol=1e-5)


def test_distill_reduces_coding_loss_logs_every_epoch_and_is_deterministic(mlp_experts, x6):
    y = torch.randint(0, 4, (24,), generator=torch.Generator().manual_seed(3))
    van = coin.encode("vanilla", mlp_experts, [0.5, 0.5], x6)
    task = coin.CodingTask(mlp_experts, torch.tensor([0.5, 0.5], dtype=torch.float64), x6)
    before = task.score(van.model)["loss"]
    calls = []

    def eval_fn(m):
        calls.append(1)
        return {"test_nda_pct": 42.0}

    runs = [coin.encode("distill", mlp_experts, [0.5, 0.5], x6, y=y, lr=1e-2, epochs=6, seed=5,
                        eval_fn=eval_fn) for _ in range(2)]
    hist = runs[0].info["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 7)) and len(calls) == 12
    assert all(h["test_nda_pct"] == 42.0 and "train_nda_pct" in h for h in hist)
    assert task.score(runs[0].model)["loss"] < 0.5 * before
    for p, q in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fisher_merging_weights_by_categorical_fisher(mlp_experts, x6):
    res = coin.encode("fisher", mlp_experts, [0.3, 0.7], x6, floor=0.0)
    fs = [coin.categorical_fisher(m, x6) for m in mlp_experts]
    for n, p in res.model.named_parameters():
        w = [0.3 * fs[0][n], 0.7 * fs[1][n]]
        e0, e1 = mlp_experts[0].get_parameter(n), mlp_experts[1].get_parameter(n)
        ref = (w[0] * e0 + w[1] * e1) / (w[0] + w[1])
        torch.testing.assert_close(p, ref)
    # and it is not the output Fisher COIN uses
    fo = coin.output_fisher(mlp_experts[0], x6)
    assert (fo["2.weight"] - fs[0]["2.weight"]).abs().max() > 1e-3
