"""Accuracy two ways: against the label, and against what the expert itself would have answered."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scenarios.points import AnswerTables, _policy_summary, join_answers


def _tables() -> AnswerTables:
    # two experts, 3 classes, 4 rows each (rows 0-3 expert 0's, 4-7 expert 1's); coded = f0 + f1 exactly, except
    # row 1, where the coded output is off so that decoding expert 0 there yields class 2 instead of its own 0
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    outs = np.full((2, 8, 3), 0.0)
    outs[:, np.arange(8), labels] = 5.0
    outs[0, 1] = [5.0, 0.0, 0.0]  # expert 0 is wrong on row 1 (label 1, says 0)
    coded = outs.sum(0, keepdims=True)
    coded[0, 1] += np.array([0.0, 0.0, 9.0])
    return AnswerTables(labels, np.array([0, 4, 8]), outs, coded, np.array([[1.0, 1.0]]))


def test_decoded_answers_can_disagree_with_the_expert_and_direct_ones_cannot():
    answers = _tables()
    records = pd.DataFrame({
        "model": [0, 0, 0, 1],
        "sample_id": [1, 1, 2, 0],
        "answered_by": pd.Categorical(["direct", "decoded", "decoded", "decoded"]),
        "answer_mask": [0b001, 0b110, 0b110, 0b101],  # direct from server 0; decoded from expert 1 + coded, ...
        "warmup": False,
    })
    correct, agrees = join_answers(records, answers, 2, ["0", "1", "coded"])
    # row 1: the expert says 0 (wrong, label 1); decoding says 2 (wrong, and not what the expert says)
    assert correct.tolist() == [False, False, True, True]
    assert agrees.tolist() == [True, False, True, True]
    records["correct"], records["agrees_with_expert"] = correct, agrees
    s = _policy_summary(records, {})
    assert s["accuracy_pct"] == 50.0 and s["agreement_pct"] == 75.0
    assert s["decoded_accuracy_pct"] == pytest.approx(200 / 3) and s["decoded_agreement_pct"] == pytest.approx(200 / 3)


def test_answer_masks_beyond_63_servers_join_as_the_same_outputs_do():
    # the first test's queries on 70 servers: the experts' instances take turns on servers 0-68 and the coded
    # server is server 69, so the masks are Python ints wider than int64
    hosts = ["0", "1"] * 34 + ["0", "coded"]
    assert hosts[67] == "1" and hosts[68] == "0" and len(hosts) == 70
    records = pd.DataFrame({
        "model": [0, 0, 0, 1],
        "sample_id": [1, 1, 2, 0],
        "answered_by": pd.Categorical(["direct", "decoded", "decoded", "decoded"]),
        "answer_mask": pd.Series([1 << 2, 1 << 67 | 1 << 69, 1 << 1 | 1 << 69, 1 << 68 | 1 << 69], dtype=object),
        "warmup": False,
    })
    correct, agrees = join_answers(records, _tables(), 2, hosts)
    assert correct.tolist() == [False, False, True, True]
    assert agrees.tolist() == [True, False, True, True]


def test_paired_accuracy_difference_against_a_paired_t_interval() -> None:
    # 1,000 measured queries served by both policies: 'b' is wrong on 30 that 'a' got right and right on 10 that
    # 'a' got wrong, so it is 2.0 points worse; 50 warm-up queries where 'b' is always wrong must not count
    from scipy import stats

    from scenarios.points import paired_accuracy_difference

    rng = np.random.default_rng(3)
    n, warm = 1000, 50
    a = rng.random(n + warm) < 0.9
    b = a.copy()
    right, wrong = np.flatnonzero(a[warm:]) + warm, np.flatnonzero(~a[warm:]) + warm
    b[rng.choice(right, 30, replace=False)] = False
    b[rng.choice(wrong, 10, replace=False)] = True
    b[:warm] = False
    ids = rng.permutation(n + warm)  # query ids need not be in row order, nor in the same order per policy
    frames = []
    for k, (name, c) in enumerate((("a", a), ("b", b))):
        order = np.random.default_rng(10 + k).permutation(n + warm)
        frames.append(pd.DataFrame({"policy": name, "query_id": ids[order], "correct": c[order],
                                    "warmup": (np.arange(n + warm) < warm)[order]}))
    records = pd.concat(frames, ignore_index=True)
    out = paired_accuracy_difference(records, "a")
    assert out["a"] == {"accuracy_vs_uncoded_pct": 0.0, "accuracy_vs_uncoded_lo_pct": 0.0,
                        "accuracy_vs_uncoded_hi_pct": 0.0}
    assert out["b"]["accuracy_vs_uncoded_pct"] == pytest.approx(-2.0)
    ci = stats.ttest_rel(b[warm:].astype(float), a[warm:].astype(float)).confidence_interval(0.95)
    # a paired t interval (scipy) and the normal one differ by 0.12 % of the half-width at n = 1,000: 0.0015 points
    assert out["b"]["accuracy_vs_uncoded_lo_pct"] == pytest.approx(ci.low * 100, abs=0.003)
    assert out["b"]["accuracy_vs_uncoded_hi_pct"] == pytest.approx(ci.high * 100, abs=0.003)
    # and exactly, by hand: 30 differences of -1 and 10 of +1 among 1,000
    mean = -0.02
    sd = np.sqrt((30 * (-1 - mean) ** 2 + 10 * (1 - mean) ** 2 + 960 * mean**2) / 999)
    half = 1.959964 * sd / np.sqrt(1000)
    assert out["b"]["accuracy_vs_uncoded_lo_pct"] == pytest.approx((mean - half) * 100, abs=1e-9)
    assert out["b"]["accuracy_vs_uncoded_hi_pct"] == pytest.approx((mean + half) * 100, abs=1e-9)
    assert paired_accuracy_difference(records, None) == {}
