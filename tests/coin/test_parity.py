"""Learned parity models (coding over queries): encoders, the decoding rule, exact decoding for linear experts,
training that finds the exact parity, and bad input before any training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coin.errors import CodingError
from coin.parity import concat_encoder, decode, degraded_accuracy, groups, sum_encoder, train_parity


def _linear_expert(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(6, 4)


def _data(n: int = 600, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, torch.randint(0, 4, (n,), generator=g)


def test_sum_encoder_and_decoding_rule_by_hand() -> None:
    xs = torch.tensor([[[1.0, 2.0]], [[10.0, 20.0]], [[100.0, 200.0]]])  # k = 3 queries of batch 1
    assert sum_encoder(xs).tolist() == [[111.0, 222.0]]
    parity_out = torch.tensor([[7.0, 1.0]])
    others = torch.tensor([[[2.0, 0.5]], [[4.0, -1.0]]])  # the k - 1 outputs that came back
    assert decode(parity_out, others).tolist() == [[1.0, 1.5]]


def test_concat_encoder_tiles_shrunk_queries_by_hand() -> None:
    # k = 2: a 2 x 1 grid; each 2 x 4 image averaged over its two rows into one row of the output
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]])
    b = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 0.0, 0.0]])
    out = concat_encoder(torch.stack([a, b]).reshape(2, 1, 1, 2, 4))
    assert out.reshape(2, 4).tolist() == [[2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 4.0, 4.0]]
    # k = 3: a 2 x 2 grid of 2 x 2 tiles from 4 x 4 images; the fourth tile stays empty
    imgs = torch.arange(3 * 16, dtype=torch.float32).reshape(3, 1, 1, 4, 4)
    tiled = concat_encoder(imgs)[0, 0]
    for j, (r, c) in enumerate([(0, 0), (0, 1), (1, 0)]):
        want = imgs[j, 0, 0].reshape(2, 2, 2, 2).mean(dim=(1, 3))  # 2 x 2 block means
        assert torch.allclose(tiled[2 * r:2 * r + 2, 2 * c:2 * c + 2], want)
    assert tiled[2:, 2:].abs().sum() == 0


def test_groups_partition_the_queries() -> None:
    idx = groups(10, 3, torch.Generator().manual_seed(0))
    assert idx.shape == (3, 3) and len(set(idx.flatten().tolist())) == 9 and idx.max() < 10


def test_the_exact_parity_of_a_linear_expert_decodes_exactly() -> None:
    # f(x) = Wx + b: the parity network g(z) = Wz + k b gives g(x1 + ... + xk) = f(x1) + ... + f(xk) exactly
    expert, k = _linear_expert(), 3
    parity = nn.Linear(6, 4)
    with torch.no_grad():
        parity.weight.copy_(expert.weight)
        parity.bias.copy_(k * expert.bias)
    x, y = _data()
    got = degraded_accuracy(parity, expert, x, y, k)
    assert got["agreement_pct"] == 100.0 and got["n"] == 600
    assert got["degraded_accuracy_pct"] == pytest.approx(got["expert_accuracy_pct"])
    # and the expert's accuracy on those queries, computed here without the module
    assert got["expert_accuracy_pct"] == pytest.approx(float((expert(x).argmax(1) == y).float().mean() * 100))
    # a parity network that ignores the bias term decodes worse: the test can tell
    with torch.no_grad():
        parity.bias.zero_()
    assert degraded_accuracy(parity, expert, x, y, k)["agreement_pct"] < 100.0


def test_training_finds_the_linear_parity() -> None:
    expert, k = _linear_expert(), 2
    x, y = _data(800)
    result = train_parity(expert, x, k, epochs=80, lr=0.01, batch_size=32, seed=0)
    assert result.k == k and result.samples == 800 and result.epochs == 80 and result.seconds > 0
    assert result.history[-1]["train_loss"] < 0.05 * result.history[0]["train_loss"]
    assert torch.allclose(result.model.weight, expert.weight, atol=1e-2)
    assert torch.allclose(result.model.bias, k * expert.bias, atol=1e-2)
    assert degraded_accuracy(result.model, expert, *_data(400, seed=5), k)["agreement_pct"] > 98.0


@pytest.mark.parametrize("k, encoder, parity, match", [
    (1, "sum", nn.Linear(6, 4), "k ≥ 2"),
    (2, "xor", nn.Linear(6, 4), "unknown parity encoder"),
    (2, "concat", nn.Linear(6, 4), "image queries"),
    (2, "sum", nn.Linear(6, 5), "answers"),
])
def test_bad_parity_codes_are_refused_before_training(k, encoder, parity, match) -> None:
    x, _ = _data(20)
    with pytest.raises(CodingError, match=match) as info:
        train_parity(_linear_expert(), x, k, encoder, init=parity, epochs=1)
    assert "\n" not in str(info.value)


def test_concat_that_does_not_tile_is_refused() -> None:
    expert = nn.Sequential(nn.Flatten(), nn.Linear(15, 4))
    x = torch.randn(10, 1, 3, 5)
    with pytest.raises(CodingError, match="cannot tile"):
        train_parity(expert, x, 2, "concat", epochs=1)


def test_scratch_starts_fresh_and_lr_zero_trains_nothing() -> None:
    # lr 0: the parity network stays where it started, and each epoch's loss is the plain MSE of that start,
    # recomputed here from the groups the same seed draws
    expert, k = _linear_expert(), 2
    x, _ = _data(40)
    result = train_parity(expert, x, k, epochs=2, lr=0.0, batch_size=8, seed=3)
    start = result.model
    assert not torch.allclose(start.weight, expert.weight)  # 'scratch' is freshly initialised, not the expert
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for epoch in result.history:
            idx = groups(len(x), k, g)
            want = (start(x[idx].sum(1)) - expert(x)[idx].sum(1)).pow(2).sum(-1).mean()
            assert epoch["train_loss"] == pytest.approx(float(want), rel=1e-5)


def test_exactly_k_queries_are_enough_and_k_minus_one_are_not() -> None:
    x, _ = _data(3)
    assert train_parity(_linear_expert(), x, 3, epochs=1).samples == 3
    with pytest.raises(CodingError, match="at least 3"):
        train_parity(_linear_expert(), x[:2], 3, epochs=1)


def test_degraded_mode_is_the_same_for_the_same_seed() -> None:
    expert, k = _linear_expert(), 2
    parity = nn.Linear(6, 4)  # a poor parity network: which queries share a group changes the answers
    x, y = _data(300)
    first = degraded_accuracy(parity, expert, x, y, k, seed=7)
    assert degraded_accuracy(parity, expert, x, y, k, seed=7) == first
    others = {degraded_accuracy(parity, expert, x, y, k, seed=s)["agreement_pct"] for s in range(8, 14)}
    assert others != {first["agreement_pct"]}


def test_training_leaves_its_start_alone_and_reports_what_it_did() -> None:
    import time

    expert, base = _linear_expert(0), _linear_expert(9)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    x, _ = _data(64)
    t0 = time.perf_counter()
    result = train_parity(expert, x, 2, "sum", init=base, init_name="base", epochs=3, lr=0.05)
    wall = time.perf_counter() - t0
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the base model is untouched
    assert not torch.equal(result.model.weight, base.weight)  # ... and the parity network moved from it
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and result.epochs == 3
    assert (result.k, result.encoder, result.init) == (2, "sum", "base") and 0 < result.seconds <= wall
    assert not any(p.requires_grad for p in result.model.parameters())


def test_concat_keeps_batches_and_channels_apart() -> None:
    # k = 2 queries, a batch of 2, 3 channels: every (query, item, channel) keeps its own tile
    xs = torch.arange(2 * 2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 2, 3, 2, 2)
    out = concat_encoder(xs)
    assert out.shape == (2, 3, 2, 2)
    for j in range(2):  # query j -> row j (a 2 x 1 grid), its two rows averaged
        assert torch.allclose(out[:, :, j, :], xs[j].mean(dim=2))
