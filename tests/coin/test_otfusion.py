"""OT fusion and aligned COIN: permuted copies are recovered exactly, alignment preserves function, shared-base
experts are left alone, and bad input raises CodingError.

Permuted copies are built here by hand (explicit lists of which tensor dims each hidden permutation touches),
independently of the graph analysis in coin.otfusion, so a wrong grouping there shows up as a failure.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import coin
from coin.otfusion import align, align_all, fuse, plan_alignment
from models.networks import NetworkSpec, build_network
from tests.coin.conftest import perturbed


class Residual(nn.Module):
    """stem conv+BN, one identity block, one projection block (1×1 conv + BN shortcut), pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.a1, self.abn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.a2, self.abn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.b1, self.bbn1 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b2, self.bbn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.sc = nn.Sequential(nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.abn2(self.a2(torch.relu(self.abn1(self.a1(x))))) + x)
        x = torch.relu(self.bbn2(self.b2(torch.relu(self.bbn1(self.b1(x))))) + self.sc(x))
        return self.head(x)


def _bn(prefix: str, dim: int = 0) -> list[tuple[str, int]]:
    return [(f"{prefix}.{s}", dim) for s in ("weight", "bias", "running_mean", "running_var")]


# architecture → (builder, input shape, hidden permutations: width and the (tensor, dim[, block]) it moves)
def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 4))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(),
        nn.Linear(5 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 3),
    )


ARCHS = {
    "mlp": (_mlp, (6,), [
        (8, [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)]),
        (7, [("2.weight", 0), ("2.bias", 0), ("4.weight", 1)]),
    ]),
    "cnn_bn": (_cnn, (1, 6, 6), [
        (4, [("0.weight", 0), ("0.bias", 0), *_bn("1"), ("4.weight", 1)]),
        (5, [("4.weight", 0), ("4.bias", 0), *_bn("5"), ("8.weight", 1, 9)]),
        (6, [("8.weight", 0), ("8.bias", 0), ("10.weight", 1)]),
    ]),
    "residual": (Residual, (1, 6, 6), [
        (4, [("stem.weight", 0), *_bn("bn0"), ("a1.weight", 1), ("a2.weight", 0), *_bn("abn2"),
             ("b1.weight", 1), ("sc.0.weight", 1)]),
        (4, [("a1.weight", 0), *_bn("abn1"), ("a2.weight", 1)]),
        (6, [("b1.weight", 0), *_bn("bbn1"), ("b2.weight", 1)]),
        (6, [("b2.weight", 0), *_bn("bbn2"), ("sc.0.weight", 0), *_bn("sc.1"), ("head.2.weight", 1)]),
    ]),
}


def build(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = ARCHS[arch][0]()
    with torch.no_grad():  # non-trivial BatchNorm parameters and statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def inputs(arch: str, n: int = 64, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, *ARCHS[arch][1], generator=torch.Generator().manual_seed(seed))


def permuted(net: nn.Module, arch: str, seed: int) -> nn.Module:
    """A copy of ``net`` with every hidden layer's neurons shuffled: the same function, other parameters."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for width, targets in ARCHS[arch][2]:
        perm = torch.randperm(width, generator=gen)
        if torch.equal(perm, torch.arange(width)):
            perm = perm.roll(1)  # a real shuffle every time
        for key, dim, *block in targets:
            t = state[key]
            b = block[0] if block else 1
            shape = t.shape
            v = t.reshape(*shape[:dim], width, b, *shape[dim + 1:])
            state[key] = v.index_select(dim, perm).reshape(shape)
    out = copy.deepcopy(net)
    out.load_state_dict(state)
    return out


def assert_same_state(a: nn.Module, b: nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].double(), sb[k].double(), rtol=0, atol=atol), k


@pytest.mark.parametrize("metric", ["weight", "activation"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_permuted_copy_is_recovered_and_fuses_to_itself(arch: str, metric: str) -> None:
    net = build(arch, 0)
    shuffled = permuted(net, arch, 1)
    x = inputs(arch)
    assert not torch.equal(shuffled.state_dict()[next(iter(net.state_dict()))], net.state_dict()[
        next(iter(net.state_dict()))])
    assert torch.allclose(shuffled(x), net(x), atol=1e-5)  # the hand-made permutation is function preserving
    al = align(net, shuffled, metric=metric, x=x)
    assert al.is_permutation
    assert_same_state(al.model, net)  # exact: index re-ordering, no arithmetic
    fused = fuse([net, shuffled], [0.3, 0.7], metric=metric, x=x).model
    assert_same_state(fused, net, atol=1e-6)
    assert torch.allclose(fused(x), net(x), atol=1e-5)
    # without alignment the two do not average to the network
    vanilla = coin.encode("vanilla", [net, shuffled], [0.3, 0.7], x).model
    assert (vanilla(x) - net(x)).abs().max() > 1e-2


@pytest.mark.parametrize("metric", ["weight", "activation"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_aligned_copy_of_independent_network_computes_the_same_function(arch: str, metric: str) -> None:
    a, b = build(arch, 0), build(arch, 1)
    x = inputs(arch)
    al = align(a, b, metric=metric, x=x)
    assert al.is_permutation and al.identity_fraction < 1.0  # something was actually moved
    assert torch.allclose(al.model(x), b(x), atol=1e-5)
    assert not al.model.training
    # the aligned copy is closer to the reference in parameter space than B was (that is what OT minimizes)
    dist = lambda m: sum((p - q).pow(2).sum() for p, q in zip(m.parameters(), a.parameters(), strict=True))  # noqa: E731
    if metric == "weight":
        assert dist(al.model) < dist(b)


def test_repo_networks_align_function_preserving() -> None:
    """The repo's SmallCNN (with BatchNorm) and CifarResNet (identity and projection shortcuts)."""
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for spec in (NetworkSpec(arch="cnn", width=4, batchnorm=True), NetworkSpec(arch="resnet_cifar", width=4)):
        torch.manual_seed(0)
        a = build_network(spec).eval()
        torch.manual_seed(1)
        b = build_network(spec).eval()
        for metric in ("weight", "activation"):
            al = align(a, b, metric=metric, x=x)
            assert al.is_permutation
            assert torch.allclose(al.model(x), b(x), atol=1e-5)
    plan = plan_alignment(a)
    stream = plan.spaces[0]  # the resnet's first residual stream: stem and both blocks' second convs
    assert stream.producers == ["stem.0", "stages.0.conv2", "stages.1.conv2"]
    assert all(s.producers[-1] != "head.2" for s in plan.spaces)  # output layer never permuted


def test_sinkhorn_small_reg_is_close_to_exact_large_reg_is_soft() -> None:
    a, b = build("cnn_bn", 0), build("cnn_bn", 1)
    exact = align(a, b, solver="emd")
    near = align(a, b, solver="sinkhorn", reg=1e-4)
    for m_e, m_s in zip(exact.maps, near.maps, strict=True):
        assert (m_e.rows - m_s.rows).abs().max() < 5e-3
    assert_same_state(near.model, exact.model, atol=1e-3)
    soft = align(a, b, solver="sinkhorn", reg=10.0)
    assert not soft.is_permutation
    assert soft.maps[0].rows.max() < 0.5  # every neuron spread over several of B's
    assert torch.allclose(soft.maps[0].rows.sum(1), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("metric", ["weight", "activation"])
@pytest.mark.parametrize("arch", ["mlp", "residual"])
def test_shared_base_experts_are_left_unchanged(arch: str, metric: str) -> None:
    base = build(arch, 0)
    experts = [perturbed(base, 1, scale=0.01), perturbed(base, 2, scale=0.01)]
    x = inputs(arch)
    al = align(experts[0], experts[1], metric=metric, x=x)
    assert al.identity_fraction == 1.0
    assert_same_state(al.model, experts[1])
    # and so aligned COIN is COIN
    res_a = coin.encode("aligned_coin", experts, [0.4, 0.6], x, metric=metric, lam=1e-3)
    res_c = coin.encode("coin", experts, [0.4, 0.6], x, lam=1e-3)
    assert_same_state(res_a.model, res_c.model, atol=1e-6)
    assert res_a.info["identity_fraction"] == [1.0]


def test_three_models_aligned_to_one_reference() -> None:
    net = build("residual", 0)
    copies = [net, permuted(net, "residual", 1), permuted(net, "residual", 2)]
    x = inputs("residual")
    alignments = align_all(copies)
    assert alignments[0].model is net and alignments[0].maps == []
    for al in alignments[1:]:
        assert_same_state(al.model, net)
    fused = coin.encode("ot_fusion", copies, [0.2, 0.3, 0.5], x).model
    assert_same_state(fused, net, atol=1e-6)
    # three independent networks: each aligned copy keeps its function
    nets = [build("residual", s) for s in (0, 1, 2)]
    fusion = fuse(nets, [0.2, 0.3, 0.5], metric="activation", x=x)
    for orig, al in zip(nets, fusion.aligned, strict=True):
        assert torch.allclose(al(x), orig(x), atol=1e-5)


def test_aligned_coin_recovers_network_from_permuted_copies_where_coin_cannot() -> None:
    net = build("cnn_bn", 0)
    experts = [net, permuted(net, "cnn_bn", 3)]
    x = inputs("cnn_bn")
    aligned = coin.encode("aligned_coin", experts, [0.5, 0.5], x, lam=1e-3)
    plain = coin.encode("coin", experts, [0.5, 0.5], x, lam=1e-3)
    assert aligned.method == "aligned_coin" and aligned.info["permutation"] == [True]
    assert torch.allclose(aligned.model(x), net(x), atol=1e-5)
    assert (plain.model(x) - net(x)).abs().max() > 1e-2
    # λ selection path: target and scores still those of the original experts
    y = net(x).argmax(-1)
    sel = coin.encode("aligned_coin", experts, [0.5, 0.5], x, y=y, grid=(1e-3, 1.0))
    assert len(sel.info["grid"]) == 2 and sel.info["grid"][0]["nda"] == pytest.approx(100.0)


def test_opaque_ops_are_fixed_and_function_kept() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(5, 4), nn.Linear(5, 4), nn.Linear(8, 3)
            self.d = nn.Linear(5, 6)
            self.e = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.cat([self.a(x), self.b(x)], dim=1)) + self.e(torch.relu(self.d(x)))

    torch.manual_seed(0)
    a = Cat()
    torch.manual_seed(1)
    b = Cat()
    plan = plan_alignment(a)
    assert [s.producers for s in plan.spaces] == [["d"]]  # cat inputs are fixed; d's outputs are free
    x = torch.randn(10, 5)
    al = align(a, b)
    assert torch.allclose(al.model(x), b(x), atol=1e-5)
    assert torch.equal(al.model.a.weight, b.a.weight)


def test_bad_input_raises_coding_error() -> None:
    mlp, cnn = build("mlp", 0), build("cnn_bn", 0)
    x = inputs("mlp")
    with pytest.raises(coin.CodingError, match="architecture"):
        align(mlp, cnn)
    with pytest.raises(coin.CodingError, match="architecture"):
        fuse([mlp, build("mlp", 1), cnn], [0.3, 0.3, 0.4])
    with pytest.raises(coin.CodingError, match="architecture"):
        coin.encode("ot_fusion", [mlp, cnn], [0.5, 0.5], x)
    with pytest.raises(coin.CodingError, match="inputs x"):
        align(mlp, build("mlp", 1), metric="activation")
    with pytest.raises(coin.CodingError, match="solver"):
        align(mlp, build("mlp", 1), solver="hungarian")  # type: ignore[arg-type]
    with pytest.raises(coin.CodingError, match="metric"):
        align(mlp, build("mlp", 1), metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(coin.CodingError, match="reg"):
        align(mlp, build("mlp", 1), solver="sinkhorn", reg=0.0)
    ln = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(coin.CodingError, match="LayerNorm"):
        plan_alignment(ln)
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(coin.CodingError, match="grouped"):
        plan_alignment(grouped)

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.f(torch.relu(self.f(x)))

    with pytest.raises(coin.CodingError, match="weight sharing"):
        plan_alignment(Shared())


def test_torchvision_resnet18_alignment_keeps_function() -> None:
    """In-place residual sums (``out += identity``), ``torch.flatten`` and downsample shortcuts."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    a = resnet18(num_classes=5).eval()
    torch.manual_seed(1)
    b = resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    al = align(a, b)
    assert al.is_permutation and al.identity_fraction < 0.1
    assert torch.allclose(al.model(x), b(x), atol=1e-4)
    assert len(plan_alignment(a).spaces) == 12  # 4 residual streams + 8 block-internal spaces
