"""The learned coded model: trained on every training query toward Σ βᵢ fᵢ(x). For linear experts the target map
is itself linear, so a linear network started far from it must land on Σ βᵢ Wᵢ (computed here by hand)."""

from __future__ import annotations

import torch
from torch import nn

import coin
from coin.samples import all_samples, coding_samples


def test_learned_recovers_the_combined_linear_map_from_a_far_start():
    torch.manual_seed(0)
    experts = [nn.Linear(6, 3, bias=False) for _ in range(2)]
    base = nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        base.weight.mul_(5.0)  # far from both experts and from their average
    pools = [(torch.randn(300, 6), torch.zeros(300, dtype=torch.long)) for _ in range(2)]
    x, y, owner = coding_samples(coin.get_method("learned"), pools, 20, seed=0)
    assert len(x) == 600 and owner.tolist() == [0] * 300 + [1] * 300  # every training query, not P = 20
    beta = [0.3, 0.7]
    res = coin.encode("learned", experts, beta, x, y=y, owner=owner, base=base, seed=0, init="base", epochs=60,
                      lr=1e-2, weight_decay=0.0)
    want = 0.3 * experts[0].weight + 0.7 * experts[1].weight
    start_gap = (base.weight - want).abs().max().item()
    gap = (res.model.weight - want).abs().max().item()
    assert gap < 0.02 < start_gap / 50, (gap, start_gap)
    assert res.method == "learned" and res.info["train_samples"] == 600 and res.seconds > 0


def test_a_method_of_p_samples_still_gets_p():
    pools = [(torch.randn(50, 4), torch.zeros(50, dtype=torch.long)) for _ in range(2)]
    x, _, owner = coding_samples(coin.get_method("coin"), pools, 20, seed=0)
    assert len(x) == 20 and owner.tolist() == [0] * 10 + [1] * 10
    ax, ay, aowner = all_samples(pools)
    assert torch.equal(ax, torch.cat([pools[0][0], pools[1][0]])) and len(ay) == 100 and aowner.sum() == 50


def test_the_code_table_says_learned_used_every_training_query():
    from scenarios.coding import format_table

    records = [{"seed": 0, "samples": 200, "method": m, "expert": e, "name": f"x{e}", "nda_pct": 99.0 - e,
                "encode_s": 1.0} for m in ("coin", "learned") for e in (0, 1)]
    lines = format_table({"samples": [200], "methods": ["coin", "learned"], "records": records}).splitlines()
    assert lines[2].split()[:2] == ["200", "coin"] and lines[3].split()[:2] == ["all", "learned"]
