"""`coinsim testbed --compare FOLDER OTHER`: another served run judged as the simulator is, on synthetic run folders
(no servers started). Expected errors, verdicts and orderings are computed here from the arrays themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from resultschema import OTHER_RUN
from scenarios.cli import cli
from scenarios.schema import ScenarioError
from scenarios.testbed_compare import arrival_rate_per_ms, compare_runs, comparison_text
from scenarios.testbed_run import LIMITS_PCT

N, REPEATS = 3000, 2
SCALE = {"uncoded": 1.0, "replication": 2.0, "coded-hedged": 4.0}  # p99s far apart: every pair distinguishable
STRAGGLER_P = (0.0, 0.05)


def _records(seed: int = 0) -> pd.DataFrame:
    """A testbed.parquet of two points (straggler_p 0 and 0.05) x three policies x two repeats; arrivals at
    1 query/ms, a tenth of each run warm-up."""
    rng = np.random.default_rng(seed)
    models = rng.integers(0, 2, N)
    parts = []
    for point, p in enumerate(STRAGGLER_P):
        for repeat in range(REPEATS):
            for policy, scale in SCALE.items():
                parts.append(pd.DataFrame({
                    "point": point, "straggler_p": p, "repeat": repeat, "policy": policy,
                    "query_id": np.arange(N), "model": models, "arrival_ms": np.arange(N, dtype=float),
                    "latency_ms": scale * (1 + 3 * p) * rng.lognormal(0.0, 0.6, N),
                    "warmup": np.arange(N) < N // 10}))
    return pd.concat(parts, ignore_index=True)


def _folder(path: Path, records: pd.DataFrame, summary: dict | None = None) -> Path:
    path.mkdir(parents=True)
    records.to_parquet(path / "testbed.parquet")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


OTHER_SCALE = {"uncoded": 1.1, "replication": 1.3, "coded-hedged": 0.3}  # the last one falls below replication


def _other(records: pd.DataFrame) -> pd.DataFrame:
    other = records.copy()
    other["latency_ms"] = other["latency_ms"] * other["policy"].map(OTHER_SCALE)
    other["arrival_ms"] = other["arrival_ms"] / 1.02  # served 2 % faster
    return other


REFERENCE_SUMMARY = {"scenario": "synthetic", "seed": 3, "headline_service": "predicted",
                     "fidelity_summary": {"predicted": {"verdicts": {
                         m: {"within the limit": 5, "inside the measured interval": 0, "off": 1}
                         for m in ("mean", "p50", "p95", "p99", "p999")}}},
                     "ranking": {"predicted": {"metric": "p99", "agree": 4, "distinguishable": 6}}}


def test_the_other_run_is_judged_like_the_simulator(tmp_path):
    records = _records()
    ref = _folder(tmp_path / "a", records, REFERENCE_SUMMARY)
    oth = _folder(tmp_path / "b", _other(records))
    out = compare_runs(ref, oth)
    assert out.parent == ref and out.name.startswith("compared-")
    table = pd.read_csv(out / "fidelity.csv")
    assert set(table["service"]) == {OTHER_RUN} and len(table) == 2 * 3 * 5
    live = records[~records["warmup"]]
    for _, row in table.iterrows():  # the error against the pooled measured metric, recomputed from the arrays
        mine = live[(live["point"] == row["point"]) & (live["policy"] == row["policy"])]["latency_ms"].to_numpy()
        q = {"mean": None, "p50": 50, "p95": 95, "p99": 99, "p999": 99.9}[row["metric"]]
        measured = mine.mean() if q is None else np.percentile(mine, q)
        assert row["measured_pooled_ms"] == pytest.approx(measured, rel=1e-5)
        assert row["rel_error_pct"] == pytest.approx(100 * (OTHER_SCALE[row["policy"]] - 1), abs=1e-3)
        expected = "within the limit" if abs(100 * (OTHER_SCALE[row["policy"]] - 1)) <= LIMITS_PCT[row["metric"]] \
            else "off"  # +30 % and -70 % lie far outside intervals of 5,400 queries
        assert row["verdict"] == expected, (row["policy"], row["metric"])
    ranking = pd.read_csv(out / "ranking.csv")
    # measured uncoded < replication < coded-hedged; the other run keeps the first two pairs, reverses the third
    assert list(ranking["n_pairs_distinguishable"]) == [3, 3] and list(ranking["n_agree"]) == [2, 2]
    assert all("replication < coded-hedged" in text for text in ranking["disagreeing"])
    summary = json.loads((out / "summary.json").read_text())
    assert [p["straggler_p"] for p in summary["points"]] == list(STRAGGLER_P)
    assert all(p["same_draws"] for p in summary["points"])
    assert all(p["rate_diff_pct"] == pytest.approx(2.0, abs=1e-6) for p in summary["points"])
    assert summary["ranking"][OTHER_RUN] == {"metric": "p99", "agree": 4, "distinguishable": 6}
    text = comparison_text(out)
    # mean and p50: uncoded only; p95 (20 %) and p99 (25 %) too; p99.9 (40 %) also replication's +30 %
    assert "the other run 2 / 2 / 2 / 2 / 4 of 6, ranking 4 of 6" in text
    assert "this run's predicted variant 5 / 5 / 5 / 5 / 5 of 6, ranking 4 of 6" in text


def test_points_are_matched_by_their_coordinates_not_their_index(tmp_path):
    records = _records()
    other = _other(records)
    other["point"] = 1 - other["point"]  # served in the other order
    first = compare_runs(_folder(tmp_path / "a", records), _folder(tmp_path / "b", _other(records)))
    swapped = compare_runs(tmp_path / "a", _folder(tmp_path / "c", other))
    a, b = (pd.read_csv(f / "fidelity.csv") for f in (first, swapped))
    pd.testing.assert_frame_equal(a, b)
    assert [p["other_point"] for p in json.loads((swapped / "summary.json").read_text())["points"]] == [1, 0]


def test_other_draws_are_said(tmp_path):
    records = _records()
    other = _other(records)
    other["model"] = 1 - other["model"]
    out = compare_runs(_folder(tmp_path / "a", records), _folder(tmp_path / "b", other))
    assert "other draws (another seed)" in comparison_text(out)


def test_arrival_rate_is_queries_over_the_span():
    records = pd.DataFrame({"policy": "uncoded", "repeat": 0, "arrival_ms": [0.0, 4.0, 1.0, 10.0]})
    assert arrival_rate_per_ms(records) == pytest.approx(3 / 10)


@pytest.mark.parametrize("case, message", [
    ("same", "not with itself"),
    ("no point", "did not serve straggler_p=0.05"),
    ("no policy", "did not serve replication at straggler_p=0.0"),
    ("other sweep", "not runs of the same points"),
    ("no records", "not a served testbed run"),
    ("no column", "no column latency_ms"),
])
def test_runs_that_cannot_be_compared_are_refused_before_anything_is_written(tmp_path, case, message):
    records = _records()
    ref = _folder(tmp_path / "a", records)
    other = _other(records)
    if case == "no point":
        other = other[other["point"] == 0]
    elif case == "no policy":
        other = other[~((other["point"] == 0) & (other["policy"] == "replication"))]
    elif case == "other sweep":
        other = other.rename(columns={"straggler_p": "load"})
    elif case == "no column":
        other = other.drop(columns="latency_ms")
    oth = ref if case == "same" else tmp_path / "b"
    if case == "no records":
        oth.mkdir()
    elif case != "same":
        _folder(oth, other)
    with pytest.raises(ScenarioError, match=message):
        compare_runs(ref, oth)
    result = CliRunner().invoke(cli, ["testbed", "--compare", str(ref), str(oth)])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not list(ref.glob("compared-*")) and not list(ref.glob(".compared-*"))


def test_cli_compares_and_refuses_bad_folders(tmp_path):
    records = _records()
    ref = _folder(tmp_path / "a", records, REFERENCE_SUMMARY)
    oth = _folder(tmp_path / "b", _other(records))
    result = CliRunner().invoke(cli, ["--quiet", "testbed", "--compare", str(ref), str(oth)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "relative error of the other run" in result.output and "headline variant: other run" in result.output
    assert "in-sample" not in result.output  # no simulator variant in this table
    assert "served at 1 queries/ms, the other run at 1.02 (+2.0 %)" in result.output
    (out,) = ref.glob("compared-*")
    assert f"results: {out}" in result.output
    afile = tmp_path / "file"
    afile.write_text("x")
    for args in (["--compare", str(afile), str(oth)], ["--compare", str(ref), str(tmp_path / "missing")],
                 ["--compare", str(ref), str(oth), "--resimulate", str(ref)]):
        bad = CliRunner().invoke(cli, ["testbed", *args])
        assert bad.exit_code == 2 and bad.output.startswith("error:"), (args, bad.output)
        assert len(bad.output.strip().splitlines()) == 1
    assert len(list(ref.glob("compared-*"))) == 1


def test_report_of_a_comparison_names_the_runs_to_render(tmp_path):
    records = _records()
    out = compare_runs(_folder(tmp_path / "a", records), _folder(tmp_path / "b", _other(records)))
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "a comparison of two testbed runs" in result.output and str(tmp_path / "b") in result.output


def test_the_run_report_sets_each_comparison_beside_its_headline(tmp_path):
    """A testbed folder compared with another run: its report's first screen has the other run's cells not off per
    metric and ranking (counted here from the comparison's fidelity.csv) beside the headline's own."""
    from reports.testbed import render_testbed
    from tests.testbed.test_fidelity_stats import _testbed_folder

    folder = _testbed_folder(tmp_path / "bed", {"isolated": 0.5, "predicted": 1.05})
    measured = pd.read_parquet(folder / "testbed.parquet")
    measured["model"] = measured["query_id"] % 2  # what a served run's records also hold
    measured["arrival_ms"] = measured["query_id"].astype(float)
    measured.to_parquet(folder / "testbed.parquet")
    other = measured.copy()
    other["latency_ms"] *= np.where(other["policy"] == "hedged", 1.6, 1.02)  # hedged far off in the other run
    twin = _folder(tmp_path / "twin", other)
    compared = compare_runs(folder, twin)
    html = " ".join(render_testbed(folder).read_text().split())
    first = html[: html.index("<h2>")]
    assert "Against the machine itself" in first and "run twin (its arrival rate +0.0 % against this run's)" in first
    table = pd.read_csv(compared / "fidelity.csv")
    cells = table[table["metric"] == "mean"]
    not_off = int((cells["verdict"] != "off").sum())
    assert 0 < not_off < len(cells)  # the hedged cells are off, the others not
    ranking = pd.read_csv(compared / "ranking.csv")
    row = first[first.index("run twin"):]
    assert f"<td>{not_off} of {len(cells)}</td>" in row
    assert f"{ranking['n_agree'].sum()} of {ranking['n_pairs_distinguishable'].sum()}" in row
    mine = pd.read_csv(folder / "fidelity.csv")
    head = mine[(mine["service"] == "predicted") & (mine["metric"] == "mean")]
    assert f"<td>predicted (this run's headline)</td> <td>{int((head['verdict'] != 'off').sum())} of {len(head)}" \
        in first
    # a folder of another kind beside it is left out, not fatal
    (folder / "compared-junk").mkdir()
    (folder / "compared-junk" / "summary.json").write_text("{not json")
    assert "run twin" in render_testbed(folder).read_text()
