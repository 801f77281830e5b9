"""The testbed report's numbers, each against a value worked out by hand: the ranking line (from ranking.csv, or
summary.json), the verdict counts of the headline variant, the marks of each error, the layout of old
fidelity files and the dashes for missing figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.testbed import _headline_counts, _marked, _normalised, _number, _ranking, headline_service


def _write_ranking(folder: Path) -> None:
    pd.DataFrame([
        {"service": "predicted", "point": 0, "metric": "p99", "n_agree": 3, "n_pairs_distinguishable": 4,
         "disagreeing": "coded < hedged; backup < uncoded"},
        {"service": "predicted", "point": 1, "metric": "p99", "n_agree": 2, "n_pairs_distinguishable": 2,
         "disagreeing": np.nan},
        {"service": "model", "point": 0, "metric": "p99", "n_agree": 1, "n_pairs_distinguishable": 4,
         "disagreeing": "x < y"},
    ]).to_csv(folder / "ranking.csv", index=False)


def test_the_ranking_line_sums_the_headline_variant_and_lists_its_disagreements(tmp_path):
    _write_ranking(tmp_path)
    got = _ranking(tmp_path, {}, "predicted")
    assert got == {"metric": "p99", "agree": 5, "distinguishable": 6,
                   "disagree": [{"point": 0, "text": "coded < hedged"}, {"point": 0, "text": "backup < uncoded"}]}
    assert _ranking(tmp_path, {}, "model")["agree"] == 1
    assert _ranking(tmp_path, {}, None) is None


def test_the_ranking_line_falls_back_to_the_summary_without_a_usable_file(tmp_path):
    summary = {"ranking": {"predicted": {"metric": "p99", "agree": 7, "distinguishable": 8}}}
    assert _ranking(tmp_path, summary, "predicted") == {"metric": "p99", "agree": 7, "distinguishable": 8,
                                                        "disagree": []}
    (tmp_path / "ranking.csv").write_bytes(b"\xff\xfe\x00not,a\ncsv")  # unreadable: the summary still answers
    assert _ranking(tmp_path, summary, "predicted")["agree"] == 7
    _write_ranking(tmp_path)
    assert _ranking(tmp_path, summary, "isolated") is None  # neither the file nor the summary has it


def test_verdict_counts_are_per_metric_for_the_headline_variant_only():
    rows = []
    for service, verdicts in (("predicted", ["within the limit", "off", "off", "inside the measured interval"]),
                              ("model", ["off", "off", "off", "off"])):
        for metric, verdict in zip(["p99", "p99", "p99", "mean"], verdicts, strict=True):
            rows.append({"service": service, "metric": metric, "verdict": verdict,
                         "limit_pct": 25.0 if metric == "p99" else 15.0})
    rows.append({"service": "predicted", "metric": "p99", "verdict": None, "limit_pct": 25.0})  # not judged
    counts = _headline_counts(pd.DataFrame(rows), "predicted", ["mean", "p50", "p99"])
    assert counts == [{"metric": "mean", "limit": "15 %", "counts": [0, 1, 0]},
                      {"metric": "p99", "limit": "25 %", "counts": [1, 0, 2]}]  # p50: no rows, no line
    older = _headline_counts(pd.DataFrame(rows).drop(columns=["limit_pct"]), "predicted", ["p99"])
    assert older == [{"metric": "p99", "limit": "—", "counts": [1, 0, 2]}]  # a file without limits: a dash


def test_each_error_gets_its_verdicts_mark_and_missing_figures_a_dash():
    assert _marked(-12.345, "within the limit")[0] == "-12.3 % ✓"
    assert _marked(30.0, "off")[0] == "+30.0 % ✗"
    assert _marked(3.0, "inside the measured interval")[0] == "+3.0 % ~"
    assert _marked(3.0, None) == ("+3.0 %", "")
    assert [_marked(1.0, v)[1] for v in ("within the limit", "off")] != ["", ""]  # the cells are coloured
    assert _number(0.12345) == "0.123" and _number(2, digits=1) == "2.0"
    assert _number(None) == _number(float("nan")) == _number(float("inf")) == "—"


def test_an_old_fidelity_file_gets_the_current_layout():
    old = pd.DataFrame({"service": ["model"], "policy": [1], "metric": ["p99"], "measured_ms": [4.5],
                        "simulated_ms": [5.0]})
    frame, pooled = _normalised(old)
    assert not pooled and frame["measured_pooled_ms"].tolist() == [4.5] and frame["policy"].tolist() == ["1"]
    assert frame[["measured_lo_ms", "measured_hi_ms", "half_width_pct"]].isna().all().all()
    assert frame["verdict"].isna().all()
    new = old.assign(measured_pooled_ms=[4.0])
    frame, pooled = _normalised(new)
    assert pooled and frame["measured_pooled_ms"].tolist() == [4.0]
    assert "measured_lo_ms" not in frame  # nothing invented for a current file
    assert old["policy"].tolist() == [1]  # the caller's frame is left alone


@pytest.mark.parametrize("services, head", [(["isolated", "model", "predicted"], "predicted"),
                                            (["isolated", "model"], "model"), (["isolated"], None)])
def test_the_headline_variant_is_predicted_else_model(services, head):
    assert headline_service(services) == head
