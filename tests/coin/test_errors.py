"""Bad input → one CodingError (a ValueError) with a one-line message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import coin


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    assert isinstance(exc.value, ValueError)
    return msg


def test_different_architectures(x6):
    with pytest.raises(coin.CodingError) as e:
        coin.encode("coin", [nn.Linear(6, 4), nn.Linear(6, 3)], [0.5, 0.5], x6)
    assert "architecture" in one_line(e)
    with pytest.raises(coin.CodingError) as e:
        coin.encode("vanilla", [nn.Linear(6, 4), nn.Sequential(nn.Linear(6, 4))], [0.5, 0.5], x6)
    assert "architecture" in one_line(e)


@pytest.mark.parametrize("beta,word", [([0.5, -0.5, 1.0], "positive"), ([0.5, 0.6, 0.1], None),
                                       ([0.2, 0.2, 0.2], "sum to 1"), ([0.5, 0.5], "entries"),
                                       ([float("nan"), 0.5, 0.5], "positive")])
def test_bad_beta(x6, beta, word):
    experts = [nn.Linear(6, 4) for _ in range(3)]
    if word is None:
        with pytest.raises(coin.CodingError) as e:
            coin.encode("vanilla", experts, beta, x6)
        assert "sum to 1" in one_line(e)
        return
    with pytest.raises(coin.CodingError) as e:
        coin.encode("vanilla", experts, beta, x6)
    assert word in one_line(e)


def test_p_larger_than_data():
    pools = [(torch.zeros(5, 2), torch.zeros(5)), (torch.zeros(300, 2), torch.zeros(300))]
    with pytest.raises(coin.CodingError) as e:
        coin.draw_coding_samples(pools, 400, seed=0)
    assert "exceeds" in one_line(e)
    with pytest.raises(coin.CodingError) as e:
        coin.draw_coding_samples(pools, 100, seed=0)
    assert "pool 0" in one_line(e)
    x, y, owner = coin.draw_coding_samples(pools, 9, seed=0)
    assert x.shape == (9, 2) and owner.tolist() == [0] * 5 + [1] * 4


def test_unknown_method(x6):
    with pytest.raises(coin.CodingError) as e:
        coin.encode("magic", [nn.Linear(6, 4), nn.Linear(6, 4)], [0.5, 0.5], x6)
    msg = one_line(e)
    assert "magic" in msg and "coin" in msg and "regmean" in msg


def test_single_expert_and_bad_lambda(x6):
    with pytest.raises(coin.CodingError) as e:
        coin.encode("coin", [nn.Linear(6, 4)], [1.0], x6)
    one_line(e)
    with pytest.raises(coin.CodingError) as e:
        coin.encode("coin", [nn.Linear(6, 4), nn.Linear(6, 4)], [0.5, 0.5], x6, lam=-1.0)
    one_line(e)


def test_a_method_of_ones_own_is_chosen_by_name(x6):
    # the first expert as the "coded model": encode runs it by name and times it, and it is listed after the
    # built-in table (whose order is the table's)
    from coin.registry import _ADDED

    @coin.register("first-expert")
    def first(task):
        return coin.EncodeResult(method="", model=task.experts[0])

    try:
        experts = [nn.Linear(6, 4), nn.Linear(6, 4)]
        res = coin.encode("first-expert", experts, [0.5, 0.5], x6)
        assert res.model is experts[0] and res.method == "first-expert" and res.seconds >= 0
        names = coin.available()
        assert names[0] == "coin" and names[-1] == "first-expert" and "vanilla" in names
    finally:
        _ADDED.pop("first-expert")
    assert "first-expert" not in coin.available()
