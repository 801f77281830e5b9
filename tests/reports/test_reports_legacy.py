"""Folders written before summary.json had a schema_version: read by name into today's names and units.

tests/reports/data/legacy-v1 was written by `coinsim run` at commit ac7bbbc (a tiny zoo, two straggler
points): accuracy and NDA in percent under bare names, fractions in [0, 1], `n_queries` the measured count,
only the last point in summary.json, and one latency interval below zero. Its sweep table is kept as text
(sweep.csv, exactly the old sweep.parquet's rows) and written back to parquet in each test's copy; its
queries.parquet is not kept (the migration is about names and units; a folder without it still renders).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import reports

LEGACY = Path(__file__).parent / "data" / "legacy-v1"


@pytest.fixture
def legacy(tmp_path):
    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder)
    pd.read_csv(folder / "sweep.csv").to_parquet(folder / "sweep.parquet", index=False)
    (folder / "sweep.csv").unlink()
    raw = json.loads((folder / "summary.json").read_text())
    return folder, raw, pd.read_parquet(folder / "sweep.parquet")


def test_legacy_names_and_units_are_converted_by_name(legacy):
    folder, raw, sweep = legacy
    assert "schema_version" not in raw
    data = reports.load_result(folder)
    assert data.summary["schema_version"] == 2 and data.summary["migrated_from"] == 1
    for name, old in raw["policies"].items():
        new = data.policies[name]
        assert new["accuracy_pct"] == old["accuracy"]  # was already percent
        assert new["decoded_pct"] == pytest.approx(old["decoded_fraction"] * 100)
        assert new["replica_pct"] == pytest.approx(old["replica_fraction"] * 100)
        assert new["utilization_pct"] == pytest.approx(old["utilization"] * 100)
        assert new["extra_load_vs_uncoded_pct"] == pytest.approx(old["extra_load_vs_uncoded"] * 100)
        assert new["n_measured"] == old["n_measured"] and "n_queries" not in new  # v1's n_queries was measured
        assert new["p99_ms"] == old["p99_ms"]
        for gone in ("accuracy", "decoded_fraction", "frac_decoded", "utilization", "extra_load_vs_uncoded"):
            assert gone not in new
    coin = data.summary["coding"]["coin"]
    assert coin["nda_pct"] == raw["coding"]["coin"]["nda"] and coin["nda_avg_pct"] == raw["coding"]["coin"]["nda_avg"]
    assert [e["accuracy_pct"] for e in data.summary["experts"]] == [e["accuracy"] for e in raw["experts"]]
    old_nda = pd.read_csv(folder / "nda.csv")
    assert {"nda", "decoded_acc", "expert_acc", "encode_seconds"} <= set(old_nda.columns)  # the old names
    for old, new in (("nda", "nda_pct"), ("decoded_acc", "decoded_acc_pct"), ("expert_acc", "expert_acc_pct"),
                     ("encode_seconds", "encode_s")):  # same units (percent, seconds): renamed, not rescaled
        assert data.nda[new].tolist() == old_nda[old].tolist()
    assert coin["encode_s"] == raw["coding"]["coin"]["encode_seconds"] and "encode_seconds" not in coin
    assert "decoded_pct" in data.sweep.columns and "decoded_fraction" not in data.sweep.columns
    assert data.sweep["decoded_pct"].tolist() == pytest.approx((sweep["decoded_fraction"] * 100).tolist())


def test_legacy_points_are_rebuilt_from_the_sweep_table(legacy):
    folder, raw, sweep = legacy
    data = reports.load_result(folder)
    assert [p["point"] for p in data.points] == sorted(sweep["point"].unique().tolist()) == [0, 1]
    assert data.headline_point == 1  # version 1's summary held the last point
    for point in data.points:
        rows = sweep[sweep["point"] == point["point"]].set_index("policy")
        assert point["straggler_p"] == rows["straggler_p"].iloc[0]
        for name, stats in point["policies"].items():
            assert stats["p999_ms"] == rows.at[name, "p999_ms"]
            assert stats["accuracy_pct"] == rows.at[name, "accuracy"]
    assert data.points[1]["policies"]["coded"]["p99_ms"] == raw["policies"]["coded"]["p99_ms"]


def test_legacy_negative_interval_bounds_are_not_shown(legacy):
    folder, raw, sweep = legacy
    negatives = [(n, k) for n, p in raw["policies"].items() for k, v in p.items() if k.endswith("_lo") and v < 0]
    assert negatives  # the fixture has one: the old linear interval of a p50
    data = reports.load_result(folder)
    for n, k in negatives:
        assert data.policies[n][k] is None
    assert not (data.sweep.filter(like="_ms_lo") < 0).any().any()
    assert any("lower bound(s) below zero are not shown" in note for note in data.notes)
    html = reports.render(folder).read_text(encoding="utf-8")
    assert "<h2>Against replication at every point</h2>" in html
    assert "older coinsim" in html
    # the new figures work from the migrated names: the frontier of the old points, NDA bars zoomed
    assert (folder / "figures" / "frontier.png").is_file() and '<figure id="fig-frontier">' in html
    assert '<h2 id="accuracy">' in html
    assert not any(b.startswith("-") for b in _ci_bounds(html))


def _ci_bounds(html: str) -> list[str]:
    import re

    return [b.strip() for span in re.findall(r'<span class="ci">\[([^\]]*)\]</span>', html) for b in span.split(",")]
