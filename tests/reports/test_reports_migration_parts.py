"""Reading version-1 result folders, rule by rule on small hand-made inputs (the legacy folder test covers one real
folder; these pin the branches it does not reach): which of two old names wins, units scaled by name, the measured
count, values that are not numbers, old sweep tables, points rebuilt from a sweep, and negative bounds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reports.load import (
    ResultData,
    _drop_negative_latency_bounds,
    _migrate_policy_v1,
    _migrate_sweep_v1,
    _migrate_v1,
    _points_from_sweep,
)


def test_a_v1_policy_is_renamed_and_rescaled_by_name():
    old = {"decoded_fraction": 0.2, "frac_decoded": 0.9, "utilization": None, "accuracy": 97.0, "p99_ms": 3.0,
           "extra_load_vs_uncoded": "n/a", "n_queries": 100, "n_measured": 90, "note": "kept"}
    new = _migrate_policy_v1(old)
    assert new == {"decoded_pct": 20.0, "utilization_pct": None, "accuracy_pct": 97.0, "p99_ms": 3.0,
                   "extra_load_vs_uncoded_pct": "n/a", "n_measured": 90, "note": "kept"}  # the first old name wins
    assert _migrate_policy_v1({"n_queries": 80})["n_measured"] == 80  # v1's n_queries was the measured count
    assert "n_measured" not in _migrate_policy_v1({"p50_ms": 1.0})


def test_a_v1_summary_is_renamed_throughout_and_marked():
    out = {"policies": {"coded": {"frac_hedge": 0.5}, "odd": 3}, "coding": {"coin": {"nda": 99.0, "extra": 1},
                                                                         "bad": 2},
           "experts": [{"accuracy": 98.0, "name": "a"}, "x"], "multi_decode": [{"nda": 95.0}]}
    _migrate_v1(out)
    assert out["policies"] == {"coded": {"hedge_pct": 50.0}, "odd": 3}
    assert out["coding"] == {"coin": {"nda_pct": 99.0, "extra": 1}, "bad": 2}
    assert out["experts"] == [{"accuracy_pct": 98.0, "name": "a"}, "x"] and out["multi_decode"] == [{"nda_pct": 95.0}]
    assert out["schema_version"] == 2 and out["migrated_from"] == 1


def test_a_v1_sweep_table_is_renamed_and_rescaled_and_keeps_one_measured_count():
    old = pd.DataFrame({"point": [0, 1], "policy": ["a", "a"], "decoded_fraction": [0.1, 0.2],
                        "frac_decoded": [0.7, 0.8], "utilization": [0.5, 0.25], "accuracy": [97.0, 96.0],
                        "n_queries": [100, 100], "n_measured": [90, 90]})
    new = _migrate_sweep_v1(old)
    assert sorted(new.columns) == sorted(["point", "policy", "decoded_pct", "utilization_pct", "accuracy_pct",
                                          "n_measured"])
    assert new["decoded_pct"].tolist() == [10.0, 20.0] and new["utilization_pct"].tolist() == [50.0, 25.0]
    assert new["accuracy_pct"].tolist() == [97.0, 96.0] and new["n_measured"].tolist() == [90, 90]
    only_queries = _migrate_sweep_v1(old.drop(columns=["n_measured"]))
    assert only_queries["n_measured"].tolist() == [100, 100] and "n_queries" not in only_queries
    assert old.columns.tolist()[2] == "decoded_fraction"  # the caller's table is left alone


def test_points_are_rebuilt_from_a_sweep_table_with_plain_values():
    sweep = pd.DataFrame({"point": [1, 0, 0], "policy": ["a", "a", "b"], "straggler_p": [0.1, 0.0, 0.0],
                          "p99_ms": [np.float64(3.5), 2.0, np.nan], "n_measured": np.array([5, 6, 7], np.int64)})
    points = _points_from_sweep(sweep, ["straggler_p", "load"])  # 'load' is not a column: skipped
    assert [p["point"] for p in points] == [0, 1]
    assert points[0] == {"point": 0, "straggler_p": 0.0,
                         "policies": {"a": {"p99_ms": 2.0, "n_measured": 6}, "b": {"p99_ms": None, "n_measured": 7}}}
    assert type(points[1]["policies"]["a"]["n_measured"]) is int and type(points[1]["straggler_p"]) is float


def test_negative_lower_bounds_are_dropped_and_counted_over_the_points_only():
    def policies() -> dict:
        return {"a": {"p50_ms_lo": -0.5, "p99_ms_lo": 1.0, "p99_ms": 2.0, "p95_ms_lo": 0.0},
                "b": {"p50_ms_lo": float("nan")}}

    summary = {"points": [{"policies": policies()}, {"policies": policies()}],
               "policies": policies()}  # the headline point repeats one of them: not counted twice
    sweep = pd.DataFrame({"p50_ms_lo": [-0.5, 0.3], "p50_ms": [1.0, 1.0], "policy": ["a", "b"]})
    data = ResultData(path=None, summary=summary, sweep=sweep)  # type: ignore[arg-type]
    assert _drop_negative_latency_bounds(data) == 2
    for p in [*(q["policies"] for q in data.points), data.policies]:
        assert p["a"]["p50_ms_lo"] is None and p["a"]["p99_ms_lo"] == 1.0 and math.isnan(p["b"]["p50_ms_lo"])
        assert p["a"]["p95_ms_lo"] == 0.0  # a bound of zero is a bound
    assert data.sweep["p50_ms_lo"].isna().tolist() == [True, False] and data.sweep["p50_ms"].tolist() == [1.0, 1.0]
