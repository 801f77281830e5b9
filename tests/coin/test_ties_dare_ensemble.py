"""TIES, DARE and the output-ensemble ceiling, each against a result computed independently of the code."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_mlp, perturbed
from torch import nn

import coin
from coin.methods.dare import drop_and_rescale
from coin.methods.ties import elect_and_merge, trim


def linear_with(weight: list, bias: list) -> nn.Linear:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        lin.bias.copy_(torch.tensor(bias))
    return lin


# Hand-made task vectors for a Linear(3, 2): 6 weights + 2 biases = 8 entries each.
BASE_W, BASE_B = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], [-0.1, 0.1]
TAU1_W, TAU1_B = [[3.0, -1.5, 0.5], [-4.0, 2.0, 0.1]], [1.0, -0.2]
TAU2_W, TAU2_B = [[1.0, 2.5, 0.3], [-0.5, -2.8, 0.2]], [0.7, 4.0]


def hand_experts() -> tuple[nn.Linear, list[nn.Linear]]:
    base = linear_with(BASE_W, BASE_B)
    experts = []
    for tw, tb in ((TAU1_W, TAU1_B), (TAU2_W, TAU2_B)):
        experts.append(linear_with((torch.tensor(BASE_W) + torch.tensor(tw)).tolist(),
                                   (torch.tensor(BASE_B) + torch.tensor(tb)).tolist()))
    return base, experts


def test_ties_trim_keeps_the_largest_half_of_each_task_vector():
    # τ₁ magnitudes 3, 1.5, .5, 4, 2, .1, 1, .2 → top 4: 4, 3, 2, 1.5
    got = trim({"weight": torch.tensor(TAU1_W), "bias": torch.tensor(TAU1_B)}, 0.5)
    torch.testing.assert_close(got["weight"], torch.tensor([[3.0, -1.5, 0.0], [-4.0, 2.0, 0.0]]))
    torch.testing.assert_close(got["bias"], torch.tensor([0.0, 0.0]))
    # τ₂ magnitudes 1, 2.5, .3, .5, 2.8, .2, .7, 4 → top 4: 4, 2.8, 2.5, 1
    got = trim({"weight": torch.tensor(TAU2_W), "bias": torch.tensor(TAU2_B)}, 0.5)
    torch.testing.assert_close(got["weight"], torch.tensor([[1.0, 2.5, 0.0], [0.0, -2.8, 0.0]]))
    torch.testing.assert_close(got["bias"], torch.tensor([0.0, 4.0]))
    # k = 1 keeps everything; a tiny k still keeps one entry (the largest)
    assert torch.equal(trim({"w": torch.tensor(TAU1_W)}, 1.0)["w"], torch.tensor(TAU1_W))
    assert trim({"w": torch.tensor(TAU1_W)}, 0.01)["w"].count_nonzero() == 1


def test_ties_elect_and_disjoint_mean_weight_by_beta():
    """β = (0.6, 0.4) on the trimmed vectors above, worked by hand entry by entry:
    w00: 3 and 1 agree (+)                     → (0.6·3 + 0.4·1)/1 = 2.2   (a plain mean would give 2.0)
    w01: −1.5 vs 2.5, mass −0.9 + 1.0 > 0      → 2.5
    w11: 2 vs −2.8, mass 1.2 − 1.12 > 0        → 2     (an unweighted election would pick −2.8)
    w10: −4 alone → −4; b1: 4 alone → 4; w02, w12, b0 all trimmed → 0."""
    t1 = {"weight": torch.tensor([[3.0, -1.5, 0.0], [-4.0, 2.0, 0.0]]), "bias": torch.tensor([0.0, 0.0])}
    t2 = {"weight": torch.tensor([[1.0, 2.5, 0.0], [0.0, -2.8, 0.0]]), "bias": torch.tensor([0.0, 4.0])}
    merged, counts = elect_and_merge([t1, t2], torch.tensor([0.6, 0.4], dtype=torch.float64))
    torch.testing.assert_close(merged["weight"], torch.tensor([[2.2, 2.5, 0.0], [-4.0, 2.0, 0.0]]))
    torch.testing.assert_close(merged["bias"], torch.tensor([0.0, 4.0]))
    assert counts["conflict"] == pytest.approx(2 / 8)  # w01 and w11
    assert counts["empty"] == pytest.approx(3 / 8)  # w02, w12, b0
    # equal β: the paper's plain election and mean
    merged, _ = elect_and_merge([t1, t2], torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(merged["weight"], torch.tensor([[2.0, 2.5, 0.0], [-4.0, -2.8, 0.0]]))


def test_ties_through_the_registry_matches_the_hand_computation(x6):
    base, experts = hand_experts()
    x = x6[:, :3]
    res = coin.encode("ties", experts, [0.6, 0.4], x, base=base, k=0.5, lam=0.5)
    tau_m_w, tau_m_b = torch.tensor([[2.2, 2.5, 0.0], [-4.0, 2.0, 0.0]]), torch.tensor([0.0, 4.0])
    torch.testing.assert_close(res.model.weight, torch.tensor(BASE_W) + 0.5 * tau_m_w)
    torch.testing.assert_close(res.model.bias, torch.tensor(BASE_B) + 0.5 * tau_m_b)
    assert res.method == "ties" and res.info["k"] == 0.5 and res.info["lam"] == 0.5


def test_ties_without_trim_or_conflict_is_the_beta_average_and_the_grid_finds_it(x6):
    """All task vectors of one sign: k = 1, λ = 1 is Σβθ, exact for linear experts, so the P-sample grid
    (score, then coding loss) must choose exactly that point."""
    torch.manual_seed(4)
    base = nn.Linear(6, 4)
    experts = []
    for s in (1, 2, 3):
        e = perturbed(base, s)
        with torch.no_grad():
            for pe, pb in zip(e.parameters(), base.parameters(), strict=True):
                pe.copy_(pb + (pe - pb).abs() + 0.01)
        experts.append(e)
    beta = [0.2, 0.3, 0.5]
    fixed = coin.encode("ties", experts, beta, x6, base=base, k=1.0, lam=1.0)
    for n, p in fixed.model.named_parameters():
        avg = sum(b * e.get_parameter(n) for b, e in zip(beta, experts, strict=True))
        torch.testing.assert_close(p, avg)
    owner = torch.arange(24) % 3  # labels: each sample's owner's own prediction, so the expert scores 100 %
    y = torch.stack([experts[int(o)](xi).argmax() for o, xi in zip(owner, x6, strict=True)]).detach()
    res = coin.encode("ties", experts, beta, x6, y=y, owner=owner, base=base)
    assert (res.info["k"], res.info["lam"]) == (1.0, 1.0)
    assert len(res.info["grid"]) == 6 * 20


def test_ties_and_dare_need_the_base_and_valid_hyperparameters(mlp_experts, x6):
    for method in ("ties", "dare"):
        with pytest.raises(coin.CodingError, match="base model"):
            coin.encode(method, mlp_experts, [0.5, 0.5], x6)
    base = make_mlp(0)
    with pytest.raises(coin.CodingError, match="0 < k"):
        coin.encode("ties", mlp_experts, [0.5, 0.5], x6, base=base, k=0.0)
    with pytest.raises(coin.CodingError, match="p < 1"):
        coin.encode("dare", mlp_experts, [0.5, 0.5], x6, base=base, p=1.0)
    with pytest.raises(coin.CodingError, match="λ"):
        coin.encode("dare", mlp_experts, [0.5, 0.5], x6, base=base, lam=-1.0)


def test_dare_without_dropping_is_task_arithmetic(x6):
    base = make_mlp(0)
    experts = [perturbed(base, s) for s in (1, 2)]
    ta = coin.encode("task_arithmetic", experts, [0.5, 0.5], x6, base=base, alpha=0.35)
    dare = coin.encode("dare", experts, [0.5, 0.5], x6, base=base, p=0.0, lam=0.7)
    for (n, p), q in zip(dare.model.named_parameters(), ta.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=n)
    # the same through both grids: task arithmetic's α grid is DARE's λ grid halved for two experts
    y = torch.randint(0, 4, (24,), generator=torch.Generator().manual_seed(2))
    owner = torch.arange(24) % 2
    ta = coin.encode("task_arithmetic", experts, [0.5, 0.5], x6, y=y, owner=owner, base=base)
    dare = coin.encode("dare", experts, [0.5, 0.5], x6, y=y, owner=owner, base=base, p_grid=[0.0])
    assert dare.info["lam"] == pytest.approx(2 * ta.info["alpha"])
    for p, q in zip(dare.model.parameters(), ta.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_dare_without_dropping_at_scale_one_is_the_beta_average(x6):
    base = make_mlp(0)
    experts = [perturbed(base, s) for s in (1, 2, 3)]
    beta = [0.2, 0.3, 0.5]
    res = coin.encode("dare", experts, beta, x6, base=base, p=0.0, lam=1.0)
    for n, p in res.model.named_parameters():
        torch.testing.assert_close(p, sum(b * e.get_parameter(n) for b, e in zip(beta, experts, strict=True)))


def test_dare_drops_a_fraction_p_and_rescales_the_survivors():
    n, p = 200_000, 0.7
    tau = torch.randn(n, generator=torch.Generator().manual_seed(0))
    (got,) = drop_and_rescale([{"t": tau}], p, seed=3)
    kept = got["t"] != 0
    torch.testing.assert_close(got["t"][kept], tau[kept] / (1 - p))
    frac = kept.float().mean().item()
    assert abs(frac - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # Σ τ̃ is unbiased for Σ τ: Var Σ τ̃ = Σ τ² p/(1−p)
    sd = math.sqrt((tau.double().pow(2).sum() * p / (1 - p)).item())
    assert abs(got["t"].double().sum().item() - tau.double().sum().item()) < 5 * sd
    # masks are nested across drop rates and reproducible from the seed
    (lower,) = drop_and_rescale([{"t": tau}], 0.3, seed=3)
    assert bool(((lower["t"] == 0) <= (got["t"] == 0)).all())
    assert torch.equal(drop_and_rescale([{"t": tau}], p, seed=3)[0]["t"], got["t"])
    assert not torch.equal(drop_and_rescale([{"t": tau}], p, seed=4)[0]["t"], got["t"])


def test_dare_keeps_the_expected_task_vector_over_seeds(x6):
    """Averaged over S seeds, DARE at λ = 1 is the β-average θ₀ + Σβτ, entry by entry, within the sampling
    error Var = Σ βᵢ² τᵢ² p/(1−p) / S; dropping without the 1/(1−p) rescale would fail the same check."""
    base = make_mlp(0)
    experts = [perturbed(base, s) for s in (1, 2)]
    beta, p, s_count = [0.3, 0.7], 0.5, 300
    total = {n: torch.zeros_like(q, dtype=torch.float64) for n, q in base.named_parameters()}
    for s in range(s_count):
        res = coin.encode("dare", experts, beta, x6, base=base, p=p, lam=1.0, seed=s)
        for n, q in res.model.named_parameters():
            total[n] += q.double()
    worst, worst_unscaled = 0.0, 0.0
    for n, q0 in base.named_parameters():
        taus = [e.get_parameter(n).double() - q0.double() for e in experts]
        target = q0.double() + sum(b * t for b, t in zip(beta, taus, strict=True))
        sd = (sum(b * b * t * t for b, t in zip(beta, taus, strict=True)) * p / (1 - p) / s_count).sqrt()
        mean = total[n] / s_count
        worst = max(worst, ((mean - target).abs() / sd).max().item())
        unscaled = q0.double() + (1 - p) * sum(b * t for b, t in zip(beta, taus, strict=True))
        worst_unscaled = max(worst_unscaled, ((mean - unscaled).abs() / sd).max().item())
    assert worst < 5.0
    assert worst_unscaled > 10.0  # twice the pass threshold: the check tells the two apart


def test_dare_is_seeded_from_the_task_seed(mlp_experts, x6):
    base = make_mlp(0)
    a, b, c = (coin.encode("dare", mlp_experts, [0.5, 0.5], x6, base=base, p=0.5, lam=1.0, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.model.parameters(), c.model.parameters(), strict=True))
    grid = coin.encode("dare", mlp_experts, [0.5, 0.5], x6, base=base)
    assert len(grid.info["grid"]) == 5 * 20 and grid.info["p"] in (0.1, 0.3, 0.5, 0.7, 0.9)


def test_ensemble_outputs_the_target_and_decodes_every_expert_exactly():
    experts = [make_mlp(s) for s in (1, 2, 3)]  # independent nonlinear nets: no parameter merge is exact
    beta = [0.2, 0.3, 0.5]
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(5))
    res = coin.encode("ensemble", experts, beta, x)
    with torch.no_grad():
        outs = [e(x) for e in experts]
        fc = res.model(x)
    torch.testing.assert_close(fc, 0.2 * outs[0] + 0.3 * outs[1] + 0.5 * outs[2])
    for i in range(3):
        dec = coin.decode(fc, outs, torch.tensor(beta), i)
        assert (dec - outs[i]).abs().max().item() < 1e-5
    test = torch.randn(60, 6, generator=torch.Generator().manual_seed(6))
    sets = [(test, coin.outputs(m, test).argmax(-1)) for m in experts]
    rows = coin.evaluate(res.model, experts, torch.tensor(beta), sets)
    assert [r.nda for r in rows] == [100.0, 100.0, 100.0]
    # vanilla averaging of these unrelated nets is far from the target (the ceiling is not trivial)
    van = coin.encode("vanilla", experts, beta, x)
    assert (coin.outputs(van.model, x) - fc).abs().max() > 1e-2
    # the ensemble holds copies: changing it leaves the experts alone
    assert all(m is not e for m, e in zip(res.model.members, experts, strict=True))
    with torch.no_grad():
        next(res.model.parameters()).add_(1.0)
    torch.testing.assert_close(experts[0](x), outs[0])
    assert res.seconds < 1.0 and not res.model.training
