"""coin.decode against hand-computed values: eq. (2) on outputs with a known answer, eq. (18) on counted hits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import coin
from coin.decode import decode, nda_from_outputs


def _onehot(classes: list[int], k: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), k).float()


def test_decode_solves_for_the_missing_output_and_never_reads_it():
    f = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([[0.5, 0.5]])]
    beta = torch.tensor([0.2, 0.5, 0.3])
    coded = 0.2 * f[0] + 0.5 * f[1] + 0.3 * f[2]
    for i in range(3):
        outs = [torch.full_like(x, math.nan) if j == i else x for j, x in enumerate(f)]
        torch.testing.assert_close(decode(coded, outs, beta, i), f[i])
    # β as a plain list and outputs stacked in one tensor work the same
    torch.testing.assert_close(decode(coded, torch.stack(f), [0.2, 0.5, 0.3], 1), f[1])


def test_nda_is_decoded_over_own_accuracy_in_percent():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    own = _onehot([0, 1, 2, 0, 1, 2, 1, 2])  # 6 of 8 right
    dec = _onehot([0, 1, 0, 0, 2, 2, 1, 2])  # 4 of 8 right
    row = nda_from_outputs(dec, own, labels, expert=3)
    assert (row.expert, row.n) == (3, 8)
    assert row.expert_acc == pytest.approx(75.0) and row.decoded_acc == pytest.approx(50.0)
    assert row.nda == pytest.approx(100 * 50 / 75)
    assert row.as_dict() == {"expert": 3, "nda": row.nda, "decoded_acc": row.decoded_acc,
                             "expert_acc": row.expert_acc, "n": 8}


def test_nda_is_nan_only_when_the_expert_gets_nothing_right():
    labels = torch.zeros(200, dtype=torch.long)
    wrong = _onehot([1] * 200)
    assert math.isnan(nda_from_outputs(wrong, wrong, labels).nda)
    one_right = _onehot([0] + [1] * 199)  # 0.5% right: small, but an accuracy
    row = nda_from_outputs(one_right, one_right, labels)
    assert row.expert_acc == pytest.approx(0.5) and row.nda == pytest.approx(100.0)


def test_evaluate_reports_each_expert_on_its_own_test_set_with_its_index():
    """Linear experts and their exact β-average: every decode is exact, so NDA is 100; each row names its expert
    and counts that expert's test set."""
    torch.manual_seed(0)
    experts = [nn.Linear(4, 3) for _ in range(3)]
    beta = torch.tensor([0.5, 0.3, 0.2])
    coded = nn.Linear(4, 3)
    with torch.no_grad():
        coded.weight.copy_(sum(b * e.weight for b, e in zip(beta, experts, strict=True)))
        coded.bias.copy_(sum(b * e.bias for b, e in zip(beta, experts, strict=True)))
    gen = torch.Generator().manual_seed(1)
    sets = []
    for i, n in enumerate((5, 7, 9)):
        x = torch.randn(n, 4, generator=gen)
        sets.append((x, coin.outputs(experts[i], x).argmax(-1)))
    rows = coin.evaluate(coded, experts, beta, sets, batch_size=2)
    assert [(r.expert, r.n) for r in rows] == [(0, 5), (1, 7), (2, 9)]
    assert all(r.nda == pytest.approx(100.0) and r.expert_acc == 100.0 for r in rows)
