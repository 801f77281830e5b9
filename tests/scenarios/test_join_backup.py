"""The join of generalist-backup answers: the generalist's own output, never the expert's nor a decoded one.

The hand-made outputs make the three candidates differ on known rows: the experts are right everywhere except
one row, the coded model is the exact code of the experts (so a decode reproduces the expert), and the
generalist is wrong where the expert is right and right where the expert is wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scenarios.points import AnswerTables, _policy_summary, join_answers, run_point
from sim import SimConfig

K = 3
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])  # rows 0-3: expert 0's test partition, rows 4-7: expert 1's
OFFSETS = np.array([0, 4, 8])
GENERALIST_WRONG = {1, 2, 5}  # rows where the generalist answers (label + 1) % K
EXPERT_WRONG = 3  # expert 0 answers 1 on row 3 (label 0); the generalist is right there


def _tables() -> AnswerTables:
    outs = np.zeros((2, 8, K))
    outs[:, np.arange(8), LABELS] = 5.0
    outs[0, EXPERT_WRONG] = [0.0, 5.0, 0.0]
    coded = outs.sum(0, keepdims=True)  # exact: decoding gives each expert's own output back
    generalist = np.zeros((8, K))
    generalist[np.arange(8), LABELS] = 2.0
    for row in GENERALIST_WRONG:
        generalist[row, (LABELS[row] + 1) % K] = 4.0
    return AnswerTables(LABELS, OFFSETS, outs, coded, np.array([[1.0, 1.0]]), generalist)


def _backup_rows() -> pd.DataFrame:
    """Every row answered by the backup server (server 2): routed queries for both experts, then ensembles."""
    model = [0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1]
    sample = [0, 1, 2, 3, 0, 1, 2, 3, 1, 5, 6]
    return pd.DataFrame({"model": model, "sample_id": sample, "answered_by": pd.Categorical(["backup"] * 11),
                         "answer_mask": 1 << 2, "warmup": False})


def test_a_backup_answer_is_the_generalists_argmax():
    correct, agrees = join_answers(_backup_rows(), _tables(), 2, ["0", "1", "backup"])
    rows = [0, 1, 2, 3, 4, 5, 6, 7, 1, 5, 6]
    # the generalist's verdict; the expert's (or a decode's) would be right everywhere except row 3
    assert correct.tolist() == [r not in GENERALIST_WRONG for r in rows]
    # agreement with the expert's own answer: wrong generalist rows disagree, and so does row 3 (expert wrong,
    # generalist right); an ensemble's own answer is the experts' softmax average (right on rows 1, 5 and 6)
    assert agrees.tolist() == [r not in GENERALIST_WRONG and not (r == EXPERT_WRONG and m == 0)
                               for r, m in zip(rows, _backup_rows()["model"], strict=True)]


def test_backup_accuracy_and_agreement_are_reported_over_backup_answers_alone():
    tables = _tables()
    backup = _backup_rows().iloc[:8]
    direct = backup.assign(answered_by=pd.Categorical(["direct"] * 8), answer_mask=[1, 1, 1, 1, 2, 2, 2, 2])
    records = pd.concat([backup, direct], ignore_index=True)
    records["answered_by"] = pd.Categorical(records["answered_by"].astype(str))
    hosts = ["0", "1", "backup"]
    records["correct"], records["agrees_with_expert"] = join_answers(records, tables, 2, hosts)
    assert records["correct"].iloc[8:].tolist() == [r != EXPERT_WRONG for r in range(8)]  # direct: the expert's
    s = _policy_summary(records, {"backup_pct": 50.0})
    assert s["backup_accuracy_pct"] == pytest.approx(100 * 5 / 8)
    assert s["backup_agreement_pct"] == pytest.approx(100 * 4 / 8)  # rows 1, 2, 5 wrong and row 3 disagree
    assert s["accuracy_pct"] == pytest.approx(100 * (5 + 7) / 16)
    assert s["decoded_accuracy_pct"] is None and s["decoded_agreement_pct"] is None
    assert s["backup_pct"] == 50.0  # the simulator's own name and unit pass through untouched


def test_without_generalist_outputs_a_backup_answer_cannot_be_joined():
    tables = _tables()
    tables.backup_outs = None
    with pytest.raises(ValueError, match="backup_outs"):
        join_answers(_backup_rows(), tables, 2, ["0", "1", "backup"])
    with pytest.raises(ValueError, match="backup_outs has shape"):
        AnswerTables(LABELS, OFFSETS, tables.expert_outs, tables.coded_outs, tables.matrix, np.zeros((8, K + 1)))


def test_run_point_joins_each_simulated_backup_answer_with_the_generalist():
    """A simulated sweep point: every query the backup answered is judged by the generalist's output on that
    query's own row, every other one by the expert's."""
    tables = _tables()
    config = SimConfig(**{
        "n_experts": 2, "r": 1, "n_queries": 3_000, "warmup_fraction": 0.0,
        "traffic": {"rate_per_ms": 0.5, "sample_pool": [4, 4], "ensemble_rate_per_ms": 0.1,
                    "ensemble_sample_pool": 8},
        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0},
                    "backup": {"kind": "exponential", "mean_ms": 0.5}},
        "stragglers": {"p": 0.2, "slowdown": 10.0},
        "policies": ["uncoded", {"kind": "backup", "dispatch": "redundant"}],
    })
    records, summary = run_point(config, 1, tables)
    mine = records[records["policy"] == "backup-redundant"]
    model, sample = mine["model"].to_numpy(), mine["sample_id"].to_numpy()
    rows = np.where(model >= 0, OFFSETS[np.maximum(model, 0)] + sample, sample)
    by_backup = (mine["answered_by"] == "backup").to_numpy()
    assert 0.2 < by_backup.mean() < 0.9 and (by_backup & (model < 0)).any()
    generalist_right = tables.backup_outs[rows].argmax(-1) == LABELS[rows]
    assert (mine["correct"].to_numpy()[by_backup] == generalist_right[by_backup]).all()
    s = summary["backup-redundant"]
    assert s["backup_pct"] == pytest.approx(by_backup.mean() * 100)
    assert s["backup_accuracy_pct"] == pytest.approx(generalist_right[by_backup].mean() * 100)
    assert s["accuracy_pct"] < summary["uncoded"]["accuracy_pct"]  # the generalist is the weaker answerer here
    assert summary["uncoded"]["backup_pct"] == 0 and summary["uncoded"]["backup_accuracy_pct"] is None


def test_a_routed_backup_answer_is_restricted_to_the_experts_task_and_an_ensemble_answer_is_not():
    # expert 0's task is classes {0, 1}, expert 1's {1, 2}; the generalist's global favourite on row 2 (label 2) is
    # class 0: outside expert 1's task, so with the task mask a query routed to expert 1 gets class 2 (right),
    # without it class 0 (wrong); an ensemble query on the same row is never restricted
    tables = _tables()
    generalist = np.zeros((8, K))
    generalist[np.arange(8), LABELS] = 2.0
    generalist[2, 0] = 4.0
    generalist[0, 2] = 3.0  # row 0 (label 0, expert 0's task {0, 1}): class 2 is outside, so the mask keeps 0
    tasks = np.array([[True, True, False], [False, True, True]])
    # offsets [0, 0, 8]: routed sample s of either expert and ensemble sample s all read row s
    records = pd.DataFrame({"model": [1, 0, -1], "sample_id": [2, 0, 5],
                            "answered_by": pd.Categorical(["backup"] * 3), "answer_mask": 1 << 2, "warmup": False})
    masked = AnswerTables(LABELS, np.array([0, 0, 8]), tables.expert_outs, tables.coded_outs, tables.matrix,
                          generalist, tasks)
    correct, _ = join_answers(records, masked, 2, ["0", "1", "backup"])
    # the ensemble query (row 5, label 2) gets the generalist's favourite over every class, 2
    assert masked.backup_answers(np.array([1, 0, -1]), np.array([2, 0, 5])).tolist() == [2, 0, 2]
    unmasked = AnswerTables(LABELS, np.array([0, 0, 8]), tables.expert_outs, tables.coded_outs, tables.matrix,
                            generalist)
    assert unmasked.backup_answers(np.array([1, 0, -1]), np.array([2, 0, 5])).tolist() == [0, 2, 2]
    assert correct.tolist() == [True, True, True]
    with pytest.raises(ValueError, match="task_classes"):
        AnswerTables(LABELS, OFFSETS, tables.expert_outs, tables.coded_outs, tables.matrix, generalist,
                     np.array([[True, True, False], [False, False, False]]))
