"""Real runs, rendered: every sweep point in summary.json, checked against the measured records; a two-axis
grid drawn as one line per policy and panel; comparisons with replication at every point; no interval below
zero; the CLI table in the same names and units. A screenshot in headless Chromium when one is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import tomli_w
from click.testing import CliRunner

import reports
from reports.render import plan_figures
from scenarios.cli import cli
from scenarios.runner import run_scenario
from scenarios.schema import scenario_from_dict
from tests.conftest import tiny_zoo_table

QUICKSTART_POLICIES = ["uncoded", {"kind": "replication", "replica_of": "spread"},
                       {"kind": "hedged", "delay_ms": "p95"},
                       {"kind": "coded", "dispatch": "hedged", "delay_ms": "p95"}]
TWO_AXIS = {
    "name": "two-axis",
    "seed": 5,
    "sim": {
        "n_experts": 2,
        "r": 1,
        "n_queries": 3000,
        "policies": QUICKSTART_POLICIES,
        "service": {"expert": {"kind": "shifted_exponential", "shift_ms": 2.0, "mean_ms": 1.0}},
        "traffic": {"kind": "poisson", "load": 0.3},
        "stragglers": {"p": 0.0, "slowdown": 10.0},
    },
    "sweep": {"grid": {"stragglers.p": [0.0, 0.05, 0.1], "traffic.load": [0.2, 0.5]}},
}
LATENCY = {"mean_ms": None, "p50_ms": 50, "p95_ms": 95, "p99_ms": 99, "p999_ms": 99.9}


@pytest.fixture(scope="module")
def two_axis(tmp_path_factory):
    folder = run_scenario(scenario_from_dict(TWO_AXIS), TWO_AXIS, tmp_path_factory.mktemp("two") / "out",
                          quiet=True, render=reports.render)
    return folder, json.loads((folder / "summary.json").read_text())


def _negative_bounds(value, where="") -> list[str]:
    """Every *_lo / *_hi below zero anywhere in a JSON-like value."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, int | float) and k.endswith(("_lo", "_hi")) and v < 0:
                found.append(f"{where}.{k}")
            found += _negative_bounds(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _negative_bounds(v, f"{where}[{i}]")
    return found


def _ci_bounds(html: str) -> list[str]:
    return [b.strip() for span in re.findall(r'<span class="ci">\[([^\]]*)\]</span>', html) for b in span.split(",")]


def test_summary_holds_every_point_computed_from_its_own_records(two_axis):
    folder, summary = two_axis
    queries = pd.read_parquet(folder / "queries.parquet")
    assert summary["schema_version"] == 2
    assert summary["sweep_axes"] == ["straggler_p", "load"]
    points = summary["points"]
    assert [(p["straggler_p"], p["load"]) for p in points] == [(p, load) for p in (0.0, 0.05, 0.1)
                                                               for load in (0.2, 0.5)]
    assert [p["point"] for p in points] == list(range(6)) and summary["headline_point"] == 5
    assert summary["policies"] == points[5]["policies"]
    for point in points:
        rows = queries[queries["point"] == point["point"]]
        assert set(rows["straggler_p"]) == {point["straggler_p"]} and set(rows["load"]) == {point["load"]}
        for name, stats in point["policies"].items():
            mine = rows[rows["policy"] == name]
            lat = mine.loc[~mine["warmup"], "latency_ms"].to_numpy()
            assert stats["n_queries"] == len(mine) == TWO_AXIS["sim"]["n_queries"]
            assert stats["n_measured"] == len(lat) < len(mine)
            for key, q in LATENCY.items():
                expected = lat.mean() if q is None else np.percentile(lat, q)
                assert stats[key] == pytest.approx(expected, rel=1e-12), (point["point"], name, key)
                assert lat.min() <= stats[f"{key}_lo"] <= stats[key] <= stats[f"{key}_hi"] <= lat.max()
            answered = mine.loc[~mine["warmup"], "answered_by"].astype(str)
            for how in ("direct", "replica", "hedge", "decoded"):
                assert stats[f"{how}_pct"] == pytest.approx((answered == how).mean() * 100)
            assert 0 < stats["utilization_pct"] <= 100
            for old in ("accuracy", "decoded_fraction", "frac_decoded", "direct_fraction", "utilization",
                        "extra_load_vs_uncoded"):
                assert old not in stats
    # the stragglers make a difference the summary can only show if each point carries its own numbers
    coded = [p["policies"]["coded-hedged"]["p999_ms"] for p in points]
    assert len(set(coded)) == 6


def test_sweep_parquet_repeats_the_points(two_axis):
    folder, summary = two_axis
    sweep = pd.read_parquet(folder / "sweep.parquet")
    assert len(sweep) == 6 * 4
    for point in summary["points"]:
        for name, stats in point["policies"].items():
            row = sweep[(sweep["point"] == point["point"]) & (sweep["policy"] == name)].iloc[0]
            for key in ("p99_ms", "p999_ms_lo", "decoded_pct", "extra_load_vs_uncoded_pct", "n_queries",
                        "n_measured"):
                assert row[key] == pytest.approx(stats[key])
    assert not [c for c in sweep.columns if "fraction" in c or c.startswith("frac_") or c == "accuracy"]
    assert not (sweep.filter(regex=r"_(lo|hi)$") < 0).any().any()


def test_two_axis_grid_is_drawn_as_one_line_per_policy_and_panel(two_axis):
    folder, _ = two_axis
    data = reports.load_result(folder)
    assert data.sweep_axis == "straggler_p" and data.facet_axes == ["load"]
    sweep = data.sweep
    fig = reports.tail_vs_sweep(sweep, data.sweep_axis, data.policy_order, facet_by=data.facet_axes)
    assert len(fig.axes) == 4  # (p99, p99.9) × (load 0.2, load 0.5)
    for ax in fig.axes:
        load = float(re.search(r"load = ([\d.]+)", ax.get_title()).group(1))
        key = "p999_ms" if ax.get_title().startswith("p99.9") else "p99_ms"
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert [ln.get_label() for ln in lines] == data.policy_order
        for line in lines:
            x = np.asarray(line.get_xdata(), float)
            assert x.tolist() == [0.0, 0.05, 0.1]  # three points, left to right: no zig-zag between loads
            rows = sweep[(sweep["policy"] == line.get_label()) & (sweep["load"] == load)].sort_values("straggler_p")
            assert np.asarray(line.get_ydata(), float).tolist() == pytest.approx(rows[key].tolist())
    with pytest.raises(ValueError, match="facet"):
        reports.tail_vs_sweep(sweep, "straggler_p", data.policy_order)  # one line through both loads is refused
    built = {name: build() for name, build, _, _ in plan_figures(data)}
    assert len(built["tail_vs_sweep"].axes) == 4
    assert len(built["answer_mix"].axes) == 3 * 2 and len(built["extra_load_vs_sweep"].axes) == 2


def test_report_compares_with_replication_at_every_point(two_axis):
    folder, summary = two_axis
    html = (folder / "report.html").read_text(encoding="utf-8")
    block = html[html.index("<h2>Against replication at every point</h2>"):html.index("<h2>Headline")]
    rows = re.findall(r"<tr>(.*?)</tr>", block, re.S)[1:]
    assert len(rows) == 6
    for row, point in zip(rows, summary["points"], strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        assert cells[0] == f"{point['straggler_p']:g}" and cells[1] == f"{point['load']:g}"
        pol = point["policies"]
        for cell, name in zip(cells[3:], ["uncoded", "hedged", "coded-hedged"], strict=True):
            change = (pol[name]["p999_ms"] / pol["replication"]["p999_ms"] - 1) * 100
            assert cell.startswith(f"{round(change) + 0.0:+.0f}%"), (cell, name, point["point"])
    assert not any(b.startswith("-") for b in _ci_bounds(html))
    assert html.count("<table") == html.count('<div class="tablewrap"><table') > 0  # every table can scroll


@pytest.fixture(scope="module")
def quick(tmp_path_factory, tiny_cache):
    """A quickstart-shaped run through the CLI: networks, coding, the quickstart's policies over a sweep."""
    tmp_path = tmp_path_factory.mktemp("quick")
    raw = {"name": "quick", "seed": 0, "device": "cpu", "models": tiny_zoo_table(tiny_cache),
           "coding": {"method": "coin", "compare": ["vanilla"], "samples": 50},
           "profile": {"warmup": 2, "samples": 50},
           "sim": {"r": 1, "n_queries": 3000, "policies": QUICKSTART_POLICIES,
                   "traffic": {"kind": "poisson", "load": 0.3}, "stragglers": {"p": 0.0, "slowdown": 10.0}},
           "sweep": {"axis": "stragglers.p", "values": [0.0, 0.05, 0.2]}}
    path = tmp_path / "quick.toml"
    path.write_text(tomli_w.dumps(raw))
    result = CliRunner().invoke(cli, ["--threads", "1", "run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    return next((tmp_path / "out" / "quick").iterdir()), result.output


def test_quickstart_like_run_has_one_unit_and_name_and_no_negative_interval(quick):
    folder, output = quick
    summary = json.loads((folder / "summary.json").read_text())
    sweep = pd.read_parquet(folder / "sweep.parquet")
    queries = pd.read_parquet(folder / "queries.parquet")
    assert len(summary["points"]) == 3 and summary["headline_point"] == 2
    assert _negative_bounds(summary) == []
    assert not (sweep.filter(regex=r"_(lo|hi)$") < 0).any().any()
    for point in summary["points"]:
        rows = queries[(queries["point"] == point["point"]) & ~queries["warmup"]]
        for name, stats in point["policies"].items():
            mine = rows[rows["policy"] == name]
            assert stats["accuracy_pct"] == pytest.approx(mine["correct"].mean() * 100)
            assert stats["p99_ms"] == pytest.approx(np.percentile(mine["latency_ms"], 99), rel=1e-12)
    coin = summary["coding"]["coin"]
    assert set(coin) == {"nda_pct", "nda_avg_pct", "decoded_acc_pct", "expert_acc_pct", "encode_s"}
    assert coin["nda_avg_pct"] == pytest.approx(np.mean(list(coin["nda_pct"].values())))
    assert all(50 < e["accuracy_pct"] <= 100 for e in summary["experts"])
    header = next(line for line in output.splitlines() if line.startswith("straggler_p"))
    assert header.split() == ["straggler_p", "policy", "mean_ms", "p50_ms", "p99_ms", "p999_ms", "accuracy_pct",
                              "decoded_pct", "extra_load_vs_uncoded_pct"]
    assert "nda_avg_pct" in output and "fraction" not in output
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "<h2>Against replication at every point</h2>" in html
    assert not any(b.startswith("-") for b in _ci_bounds(html))
    assert "NDA (%)" in html


def test_report_screenshot_in_headless_chromium(quick, tmp_path):
    report = quick[0] / "report.html"
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome",
                                               "headless_shell") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium installed: the report was checked as HTML only")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                    "--window-size=1280,3000", report.as_uri()], check=True, timeout=120, capture_output=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_frontier_of_a_real_run_matches_its_records(quick):
    """The report's frontier for a real run: each policy's marker at each point sits at the accuracy of its
    measured answers and at np.percentile of its measured latencies (warm-up excluded)."""
    folder, _ = quick
    data = reports.load_result(folder)
    fig = {name: build for name, build, _, _ in plan_figures(data)}["frontier"]()
    queries = pd.read_parquet(folder / "queries.parquet")
    measured = queries[~queries["warmup"]]
    seen = 0
    for ax in fig.axes:
        level = 99.9 if ax.get_title().startswith("p99.9") else 99
        for line in ax.get_lines():
            name = (line.get_gid() or "").removeprefix("frontier:")
            if not name:
                continue
            want = []
            for p in sorted(measured["straggler_p"].unique()):
                mine = measured[(measured["straggler_p"] == p) & (measured["policy"] == name)]
                want.append((mine["correct"].mean() * 100, np.percentile(mine["latency_ms"], level)))
            assert np.asarray(line.get_xydata()) == pytest.approx(np.asarray(want), rel=1e-9), name
            seen += 1
    assert seen == 2 * len(data.policy_order)
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert '<figure id="fig-frontier">' in html and "down and right is better" in html
    assert '<h2 id="accuracy">Accuracy of what was answered, every point</h2>' in html


def test_accuracy_versus_uncoded_is_paired_over_the_same_queries(quick):
    # recomputed from queries.parquet query by query (merge on query_id), and shown in the report's accuracy table
    folder, _ = quick
    summary = json.loads((folder / "summary.json").read_text())
    queries = pd.read_parquet(folder / "queries.parquet")
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "accuracy vs uncoded, same queries" in html
    for point in summary["points"]:
        rows = queries[(queries["point"] == point["point"]) & ~queries["warmup"]]
        uncoded = rows[rows["policy"] == "uncoded"][["query_id", "correct"]]
        for name, stats in point["policies"].items():
            both = rows[rows["policy"] == name][["query_id", "correct"]].merge(uncoded, on="query_id")
            assert len(both) == stats["n_measured"]
            diff = both["correct_x"].astype(float) - both["correct_y"].astype(float)
            half = 1.959964 * diff.std(ddof=1) / np.sqrt(len(diff))
            assert stats["accuracy_vs_uncoded_pct"] == pytest.approx(diff.mean() * 100, abs=1e-9)
            assert stats["accuracy_vs_uncoded_lo_pct"] == pytest.approx((diff.mean() - half) * 100, abs=1e-9)
            assert stats["accuracy_vs_uncoded_hi_pct"] == pytest.approx((diff.mean() + half) * 100, abs=1e-9)
            lo, hi = stats["accuracy_vs_uncoded_lo_pct"], stats["accuracy_vs_uncoded_hi_pct"]
            assert f'<span class="ci diff">[{lo:+.2f}, {hi:+.2f}]</span>' in html
