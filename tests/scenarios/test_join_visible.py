"""The per-query join with outputs built so that every wrong choice changes the answer.

The join's tests in test_runner.py use coded outputs that are all exact or all garbage, so decoding from the
wrong coded server gives the same verdict as decoding from the right one. Here each coded model is exact for
one table and decodes to a wrong class for the other, ensembles get logits whose softmax average disagrees
with a logit sum and with unnormalised exponentials, and run_point is checked against what each expert itself
answers on the drawn sample.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

import sim
from coin.multicode import cauchy_coding_matrix
from scenarios.points import AnswerTables, join_correctness, run_point, solve_missing
from sim import SimConfig

N, K, ROWS_PER_EXPERT = 3, 4, 4
S = N * ROWS_PER_EXPERT
OFFSETS = np.arange(0, S + 1, ROWS_PER_EXPERT)


def _outputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every expert right on every row with margin 3; labels uniform over the K classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, size=S)
    outs = rng.normal(scale=0.3, size=(N, S, K))
    outs[:, np.arange(S), labels] += 3.0
    return labels, outs


def _wrong(outs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The same outputs with each row's winning logit moved to another class."""
    bad = outs.copy()
    bad[:, np.arange(S), (labels + 1) % K] += 6.0
    return bad


def _tables(good: list[bool]) -> AnswerTables:
    """r = len(good) coded models; coded model k is the exact code of the experts' outputs when good[k], and
    otherwise the exact code of outputs that are wrong everywhere (so a decode from it is a wrong answer)."""
    labels, outs = _outputs()
    matrix = cauchy_coding_matrix(N, len(good))
    exact = np.einsum("kj,jsc->ksc", matrix, outs)
    wrong = np.einsum("kj,jsc->ksc", matrix, _wrong(outs, labels))
    coded = np.stack([exact[k] if ok else wrong[k] for k, ok in enumerate(good)])
    return AnswerTables(labels, OFFSETS, outs, coded, matrix)


def _decoded_queries(coded_server_bits: list[int]) -> pd.DataFrame:
    """For every expert m and each given coded server: expert m decoded from the other experts + that server."""
    rows = []
    for m in range(N):
        others = sum(1 << j for j in range(N) if j != m)
        for bit in coded_server_bits:
            for sample in range(ROWS_PER_EXPERT):
                rows.append({"model": m, "sample_id": sample, "answered_by": "decoded", "answer_mask": others | bit,
                             "coded_server": bit})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("good", [[True, False], [False, True]])
def test_a_decode_is_right_exactly_when_it_used_the_coded_server_that_answered(good):
    tables = _tables(good)
    queries = _decoded_queries([1 << N, 1 << (N + 1)])  # coded server N hosts coded model 0, N + 1 model 1
    got = join_correctness(queries.drop(columns="coded_server"), tables, N)
    expected = [good[0] if bit == 1 << N else good[1] for bit in queries["coded_server"]]
    assert got.tolist() == expected


def test_coded_models_are_ranked_by_their_position_among_the_coded_servers():
    """A layout with the coded servers elsewhere than at the end: the k-th 'coded' host runs coded model k,
    whatever its server index; spare servers never contribute."""
    tables = _tables([False, True])
    hosts = ["coded", "0", "spare", "1", "coded", "2"]
    expert_bit = {0: 1 << 1, 1: 1 << 3, 2: 1 << 5}
    rows = []
    for m in range(N):
        others = sum(expert_bit[j] for j in range(N) if j != m)
        for server, ok in ((0, False), (4, True)):
            rows.append({"model": m, "sample_id": 2, "answered_by": "decoded", "answer_mask": others | (1 << server),
                         "ok": ok})
    queries = pd.DataFrame(rows)
    got = join_correctness(queries.drop(columns="ok"), tables, N, hosts)
    assert got.tolist() == queries["ok"].tolist()


def test_two_missing_experts_need_both_coded_outputs_and_get_them():
    """Experts 0 and 2 both missing, both coded servers back: exact recovery. With one of the two coded models
    wrong the recovered outputs are wrong too, so the join must have used both."""
    tables = _tables([True, True])
    queries = pd.DataFrame({"model": [0] * ROWS_PER_EXPERT + [2] * ROWS_PER_EXPERT,
                            "sample_id": list(range(ROWS_PER_EXPERT)) * 2, "answered_by": "decoded",
                            "answer_mask": (1 << 1) | (1 << N) | (1 << (N + 1))})
    assert join_correctness(queries, tables, N).all()
    assert np.allclose(tables.decoded([0, 2], [0, 1], np.arange(S)), tables.expert_outs[[0, 2]])
    for good in ([True, False], [False, True]):
        assert not join_correctness(queries, _tables(good), N).all()


def test_an_ensemble_is_the_argmax_of_the_summed_softmax_of_what_came_back():
    """Labels are the answers of an independent softmax average (scipy); a logit sum, unnormalised exponentials
    or a majority vote disagree with it on many rows, and logits of very different scales (up to 1e3) must not
    overflow. Many rows share one answer mask, so the argmax must be taken per row."""
    rng = np.random.default_rng(3)
    rows = 400
    temperature = rng.choice([0.3, 3.0, 30.0, 1000.0], size=(N, rows, 1))
    outs = rng.normal(size=(N, rows, K)) * temperature
    labels = softmax(outs, axis=-1).sum(0).argmax(-1)
    assert (outs.sum(0).argmax(-1) != labels).mean() > 0.05  # logit sum
    unnormalised = np.exp(np.clip(outs - outs.max(-1, keepdims=True), -700, None)).sum(0)
    assert (unnormalised.argmax(-1) != labels).mean() > 0.02
    matrix = cauchy_coding_matrix(N, 1)
    tables = AnswerTables(labels, np.array([0, rows, rows, rows]), outs, np.einsum("kj,jsc->ksc", matrix, outs),
                          matrix)
    all_back = pd.DataFrame({"model": -1, "sample_id": np.arange(rows), "answered_by": "direct",
                             "answer_mask": 0b0111})
    assert join_correctness(all_back, tables, N).all()
    # expert 1 missing, decoded from the coded server: the same answers up to rounding of the decode
    decoded = all_back.assign(answered_by="decoded", answer_mask=0b1101)
    assert join_correctness(decoded, tables, N).mean() > 0.98


def test_solve_missing_refuses_too_few_coded_outputs():
    tables = _tables([True])
    with pytest.raises(ValueError, match="2 missing outputs but only 1 coded"):
        solve_missing(tables.expert_outs, tables.coded_outs, tables.matrix, [0, 1], [0])


def test_run_point_joins_every_policy_with_what_the_answering_networks_say():
    """Exact coded models: whichever way a routed query is answered (direct, replica, hedge or decoded), it is
    right exactly when its own expert is right on the drawn sample; each expert is wrong on some rows. An
    ensemble query is right when the softmax average of all N experts is. Summaries count measured queries."""
    labels, outs = _outputs(1)
    flip = np.random.default_rng(2).random((N, S)) < 0.3  # each expert wrong on ~30% of the rows
    for j in range(N):
        outs[j, flip[j], (labels[flip[j]] + 1) % K] += 6.0
    matrix = cauchy_coding_matrix(N, 2)
    tables = AnswerTables(labels, OFFSETS, outs, np.einsum("kj,jsc->ksc", matrix, outs), matrix)
    config = SimConfig.model_validate({
        "n_experts": N, "r": 2, "n_queries": 3000,
        "traffic": {"rate_per_ms": 0.9, "ensemble_rate_per_ms": 0.1, "sample_pool": [ROWS_PER_EXPERT] * N,
                    "ensemble_sample_pool": S},
        "stragglers": {"p": 0.15, "slowdown": 10.0},
        "policies": ["uncoded", "replication", {"kind": "hedged", "delay_ms": "p95"}, "coded"],
    })
    records, summary = run_point(config, 4, tables)
    routed = records["model"].to_numpy() >= 0
    rows = np.where(routed, OFFSETS[np.maximum(records["model"], 0)] + records["sample_id"], records["sample_id"])
    own = outs[np.maximum(records["model"], 0), rows].argmax(-1) == labels[rows]
    ensemble = softmax(outs[:, rows], axis=-1).sum(0).argmax(-1) == labels[rows]
    expected = np.where(routed, own, ensemble)
    for policy, ways in (("uncoded", {"direct"}), ("replication", {"direct", "replica"}),
                         ("hedged", {"direct", "hedge"}), ("coded", {"direct", "decoded"})):
        mine = (records["policy"] == policy).to_numpy()
        assert set(records.loc[mine & routed, "answered_by"]) == ways, policy
        assert (records.loc[mine, "correct"].to_numpy() == expected[mine]).all(), policy
        measured = records[mine & ~records["warmup"].to_numpy()]
        s = summary[policy]
        assert s["n_measured"] == len(measured) == 3000 - 300 and s["n_queries"] == 3000  # simulated vs measured
        assert s["accuracy_pct"] == pytest.approx(100 * measured["correct"].mean())
        shares = measured["answered_by"].value_counts() / len(measured)
        for how in ("direct", "replica", "hedge", "decoded"):
            assert s[f"{how}_pct"] == pytest.approx(100 * shares.get(how, 0.0)), (policy, how)
    assert 0 < summary["coded"]["accuracy_pct"] < 100
    # the summary is a row of sweep.parquet: scalars only
    assert all(isinstance(v, int | float | str | bool) or v is None for s in summary.values() for v in s.values())
    # the seed is the simulation's: another seed, other queries; the same seed, the simulator's own records
    again, _ = run_point(config, 5, tables)
    assert not again["latency_ms"].equals(records["latency_ms"])
    plain = sim.simulate(config, 4).records
    pd.testing.assert_frame_equal(records.drop(columns=["correct", "agrees_with_expert"]), plain)


def test_run_point_reads_replicas_as_experts_whatever_the_coded_models_say():
    """Replication has no coded server: an ensemble query that a replica answered uses the replica's expert
    output, never a decode from the coded outputs (garbage here)."""
    labels, outs = _outputs(4)
    matrix = cauchy_coding_matrix(N, 2)
    garbage = np.random.default_rng(5).normal(scale=50.0, size=(2, S, K))
    tables = AnswerTables(labels, OFFSETS, outs, garbage, matrix)
    config = SimConfig.model_validate({
        "n_experts": N, "r": 2, "n_queries": 1500,
        "traffic": {"rate_per_ms": 0.0, "ensemble_rate_per_ms": 0.2, "sample_pool": [ROWS_PER_EXPERT] * N,
                    "ensemble_sample_pool": S},
        "stragglers": {"p": 0.3, "slowdown": 10.0},
        "policies": ["replication"],
    })
    records, _ = run_point(config, 1, tables)
    masks = records["answer_mask"].to_numpy()
    assert ((masks >> N) & 0b11).any(), "no ensemble query was answered by a replica; the test would be vacuous"
    assert records["correct"].all()
