"""render(): files, embedded figures, numbers from summary.json, missing files, idempotence, bad folders."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import pandas as pd
import pytest
from reports_testutil import POLICIES, write_result

import reports
from reports.html import fmt_ms, fmt_pct

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FIGURES = {"frontier", "frontier_agreement", "latency_ccdf", "tail_vs_sweep", "accuracy_vs_sweep",
                 "answer_mix", "extra_load_vs_sweep", "nda_bars"}
FRONTIERS = {"frontier", "frontier_agreement"}  # drawn from summary.json's points alone when need be


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    folder, summary = write_result(tmp_path_factory.mktemp("full") / "run")
    html_path = reports.render(folder)
    pngs = {p.name: p.read_bytes() for p in (folder / "figures").glob("*.png")}
    return folder, summary, html_path, html_path.read_text(encoding="utf-8"), pngs


def _figures(folder: Path) -> set[str]:
    return {p.stem for p in (folder / "figures").glob("*.png")}


def test_full_folder_writes_every_figure_and_the_report(full):
    folder, _, html_path, html, _ = full
    assert html_path == folder / "report.html"
    assert _figures(folder) == SWEEP_FIGURES
    for png in (folder / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count("data:image/png;base64,") == len(SWEEP_FIGURES)
    assert not list(folder.glob(".*.tmp")) and not list((folder / "figures").glob(".*.tmp"))


def test_html_is_self_contained(full):
    html = full[3]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "<style>" in html


def test_html_shows_policies_and_summary_numbers(full):
    _, summary, _, html, _ = full
    for name, p in summary["policies"].items():
        assert f"{escape(name)}</td>" in html
        for key in ("mean_ms", "p50_ms", "p99_ms", "p999_ms", "p99_ms_lo", "p999_ms_hi"):
            assert fmt_ms(p[key]) in html, (name, key)
        assert fmt_pct(p["accuracy_pct"], digits=2) in html
        assert fmt_pct(p["decoded_pct"]) in html
        assert fmt_pct(p["extra_load_vs_uncoded_pct"], signed=True) in html
    for method, c in summary["coding"].items():
        assert f"<td>{method}</td>" in html
        assert f'<td class="strong">{c["nda_avg_pct"]:.2f}</td>' in html
        assert f"<td>{c['nda_pct']['low']:.2f}<span" in html
    assert fmt_ms(summary["live_check"]["live_p99_ms"]) in html
    assert fmt_ms(summary["profile"]["coded"]["p99_ms"]) in html


def test_best_tail_is_highlighted(full):
    _, summary, _, html, _ = full
    best = min(summary["policies"], key=lambda n: summary["policies"][n]["p999_ms"])
    row = re.search(rf"{best}</td>(.*?)</tr>", html, re.S).group(1)
    assert f'<td class="best">{fmt_ms(summary["policies"][best]["p999_ms"])}' in row
    assert html.count('class="best"') == 1


def test_takeaway_names_the_best_tail_and_compares_with_replication(full):
    _, summary, _, html, _ = full
    pol = summary["policies"]
    best = min(pol, key=lambda n: pol[n]["p999_ms"])
    headline = html[html.index("<h2>Headline"):]
    para = re.search(r'<p class="takeaway">(.*?)</p>', headline, re.S).group(1)
    assert para.startswith(f"<strong>{best}</strong> has the shortest p99.9 tail ({fmt_ms(pol[best]['p999_ms'])} ms")
    change = pol[best]["p999_ms"] / pol["replication"]["p999_ms"] - 1
    assert f"{change * 100:+.0f}% vs replication" in para


def test_full_sweep_table_lists_every_point_and_policy(full):
    _, _, _, html, _ = full
    block = re.search(r"<summary>All sweep points \(5 points × 4 policies\)</summary>(.*?)</details>", html, re.S)
    assert block is not None
    assert block.group(1).count("<tr>") == 1 + 5 * 4


def test_scenario_toml_is_escaped_inside_details(full):
    html = full[3]
    block = re.search(r"<summary>scenario.toml \(resolved\)</summary>(.*?)</details>", html, re.S).group(1)
    assert "&lt;angle&gt; &amp; ampersand" in block
    assert "<angle>" not in html


def test_rendering_twice_is_byte_identical(full):
    folder, _, _, html, pngs = full
    assert reports.render(folder).read_text(encoding="utf-8") == html
    assert pngs == {p.name: p.read_bytes() for p in (folder / "figures").glob("*.png")}


def test_stale_figures_are_removed_when_a_file_disappears(tmp_path):
    folder, _ = write_result(tmp_path / "run", points=(0.05,), n=300, files=("queries.parquet",))
    reports.render(folder)
    assert _figures(folder) == {"latency_ccdf", "answer_mix", "nda_bars", *FRONTIERS}
    (folder / "queries.parquet").unlink()
    (folder / "figures" / "my_notes.png").write_bytes(b"not ours")
    html = reports.render(folder).read_text(encoding="utf-8")
    assert _figures(folder) == {"nda_bars", "my_notes", *FRONTIERS}  # only files the renderer owns are removed
    assert "no queries.parquet" in html


def test_summary_only_folder_renders(tmp_path):
    folder, summary = write_result(tmp_path / "run", files=())
    html = reports.render(folder).read_text(encoding="utf-8")
    assert _figures(folder) == {"nda_bars", *FRONTIERS}  # the coding section and the points give figures
    for name in POLICIES:
        assert fmt_ms(summary["policies"][name]["p99_ms"]) in html
    assert "<details>" not in html
    assert "no queries.parquet" in html


def test_sim_only_single_point_run(tmp_path):
    """No nda.csv, no coding, no `correct` column, one sweep point: no sweep figures, answer mix as bars."""
    folder, summary = write_result(tmp_path / "run", points=(0.05,), with_correct=False,
                                   files=("queries.parquet", "sweep.parquet"))
    summary.pop("coding")
    for p in summary["policies"].values():
        p["accuracy_pct"] = None
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    html = reports.render(folder).read_text(encoding="utf-8")
    assert _figures(folder) == {"latency_ccdf", "answer_mix"}
    assert "<h2>Coding</h2>" not in html
    assert "Headline" in html
    assert "<th>accuracy</th>" not in html  # no policy has one: the column is dropped, not filled with dashes
    assert "<th>decoded</th>" in html
    assert "All sweep points" not in html


@pytest.mark.parametrize("names", ["current", "before issue 11"])
def test_coding_only_run_uses_nda_csv(tmp_path, names):
    """A `coinsim code`-style nda.csv (per seed, experts as index + name) without a coding section; the
    column names of today (nda_pct, ..., encode_s) and of before the rename (nda, ..., encode_seconds) alike."""
    folder, summary = write_result(tmp_path / "run", files=())
    summary.pop("coding")
    summary["policies"] = {}
    summary.pop("points")
    summary.pop("headline_point")
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    rows = [{"scenario": "s", "seed": seed, "samples": 100, "method": m, "expert": i, "name": name,
             "nda_pct": base - 1 * i + 2 * seed, "decoded_acc_pct": 90.0, "expert_acc_pct": 98.0, "n": 500,
             "encode_s": 0.5}
            for seed in (0, 1) for m, base in (("coin", 90.0), ("regmean", 60.0)) for i, name in enumerate(("a", "b"))]
    frame = pd.DataFrame(rows)
    if names != "current":  # the same numbers (percent, seconds) under the old names
        frame = frame.rename(columns={"nda_pct": "nda", "decoded_acc_pct": "decoded_acc",
                                      "expert_acc_pct": "expert_acc", "encode_s": "encode_seconds"})
    frame.to_csv(folder / "nda.csv", index=False)
    html = reports.render(folder).read_text(encoding="utf-8")
    assert _figures(folder) == {"nda_bars"}
    assert "<td>regmean</td>" in html and "<th>a NDA (%)</th>" in html
    assert "<td>91.00<span" in html  # coin, expert a: mean over seeds of 90 and 92
    assert "<td>0.50</td>" in html  # the encode time, in seconds under either name
    assert "Headline" not in html


def test_nested_latency_summary_is_accepted(tmp_path):
    """The issue's `policies.<name>.latency_ms.{p99,...}` shape renders like the flat contract."""
    folder, summary = write_result(tmp_path / "run", n=300, files=())
    for p in summary["policies"].values():
        p["latency_ms"] = {"p99": p.pop("p99_ms"), "p999": p.pop("p999_ms")}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    html = reports.render(folder).read_text(encoding="utf-8")
    p = summary["policies"]["coded"]
    assert fmt_ms(p["latency_ms"]["p999"]) in html


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level must be a JSON object"),
        ('{"policies": {}}', "'scenario'"),
        ('{"scenario": "s", "policies": {"coded": {"p99_ms": "fast"}}}', "policies.coded.p99_ms"),
        ('{"scenario": "s", "policies": [1]}', "'policies' must be an object"),
        ('{"scenario": "s", "coding": {"coin": {"nda": {"a": "x"}}}}', "coding.coin.nda"),
    ],
)
def test_malformed_summary_raises_one_line_report_error(tmp_path, content, fragment):
    (tmp_path / "summary.json").write_text(content, encoding="utf-8")
    with pytest.raises(reports.ReportError) as info:
        reports.render(tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert fragment in msg and "summary.json" in msg and "\n" not in msg
    assert not (tmp_path / "report.html").exists()


def test_missing_folder_and_unreadable_table_raise_report_error(tmp_path):
    with pytest.raises(reports.ReportError, match="no such directory"):
        reports.render(tmp_path / "nope")
    with pytest.raises(reports.ReportError, match="no summary.json"):
        reports.render(tmp_path)
    folder, _ = write_result(tmp_path / "run", n=200, files=())
    (folder / "sweep.parquet").write_bytes(b"garbage")
    with pytest.raises(reports.ReportError, match=r"sweep\.parquet: cannot be read") as info:
        reports.render(folder)
    assert "\n" not in str(info.value)


def test_reports_imports_neither_torch_nor_simpy():
    code = ("import reports, sys; bad = [m for m in ('torch', 'simpy', 'sim', 'models', 'coin', 'scenarios') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_units_come_from_the_schema_not_from_the_size_of_a_number(tmp_path):
    """A version-2 accuracy of 0.98 is 0.98 %, however unlikely; nothing is rescaled by guessing."""
    folder, summary = write_result(tmp_path / "run", n=300, files=("sweep.parquet",))
    summary["policies"]["coded"]["accuracy_pct"] = 0.98
    summary["coding"]["coin"]["nda_pct"]["low"] = 1.5
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    data = reports.load_result(folder)
    assert data.policies["coded"]["accuracy_pct"] == 0.98
    assert data.summary["coding"]["coin"]["nda_pct"]["low"] == 1.5
    sweep = pd.read_parquet(folder / "sweep.parquet")
    pd.testing.assert_series_equal(data.sweep["accuracy_pct"], sweep["accuracy_pct"])
    html = reports.render(folder).read_text(encoding="utf-8")
    assert "0.98%" in html and "<td>1.50<span" in html
    assert not re.search(r"\d{4}\.\d+%", html)  # no percent-of-percent such as 9808.33%


def test_a_newer_schema_is_refused_in_one_line(tmp_path):
    folder, summary = write_result(tmp_path / "run", n=200, files=())
    (folder / "summary.json").write_text(json.dumps({**summary, "schema_version": 3}), encoding="utf-8")
    with pytest.raises(reports.ReportError, match="schema_version 3 is newer"):
        reports.load_result(folder)


def test_names_from_the_folder_are_escaped(tmp_path):
    folder, summary = write_result(tmp_path / "run", files=())
    summary["scenario"] = "demo <script>"
    summary["policies"]["<b>odd</b>"] = summary["policies"].pop("hedged")
    summary.pop("coding")
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    html = reports.render(folder).read_text(encoding="utf-8")
    assert "&lt;b&gt;odd&lt;/b&gt;</td>" in html and "<b>odd</b>" not in html
    assert "<title>coinsim report: demo &lt;script&gt;</title>" in html and "<script" not in html


def _versus_rows(html: str) -> list[list[tuple[str, str]]]:
    block = re.search(r'<table class="versus">(.*?)</table>', html, re.S).group(1)
    return [re.findall(r"<td([^>]*)>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", block, re.S)[1:]]


def test_versus_replication_marks_exactly_the_separated_intervals(full):
    _, summary, _, html, _ = full
    rows = _versus_rows(html)
    assert len(rows) == len(summary["points"]) == 5
    others = ["uncoded", "hedged", "coded"]
    for row, point in zip(rows, summary["points"], strict=True):
        pol, base = point["policies"], point["policies"]["replication"]
        assert row[0][1] == f"{point['straggler_p']:g}"
        for (attrs, text), name in zip(row[2:], others, strict=True):
            p = pol[name]
            apart_below = p["p999_ms_hi"] < base["p999_ms_lo"]
            apart_above = p["p999_ms_lo"] > base["p999_ms_hi"]
            assert ('class="good"' in attrs) == apart_below and ('class="bad"' in attrs) == apart_above
            assert ("<sup>*</sup>" in text) == (apart_below or apart_above)
            change = (p["p999_ms"] / base["p999_ms"] - 1) * 100
            assert text.startswith(f"{round(change) + 0.0:+.0f}%")
            assert f"accuracy {p['accuracy_pct'] - base['accuracy_pct']:+.2f} pt" in text


def test_without_replication_the_baseline_is_uncoded_and_says_so(tmp_path):
    folder, summary = write_result(tmp_path / "run", n=400, files=("sweep.parquet",))
    summary["policies"].pop("replication")
    for point in summary["points"]:
        point["policies"].pop("replication", None)  # the last point shares its dict with `policies`
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    sweep = pd.read_parquet(folder / "sweep.parquet")
    sweep[sweep["policy"] != "replication"].to_parquet(folder / "sweep.parquet", index=False)
    html = reports.render(folder).read_text(encoding="utf-8")
    assert "<h2>Against uncoded at every point</h2>" in html
    assert "Compared with uncoded (this run has no replication policy)" in html
    assert [len(r) for r in _versus_rows(html)] == [4] * 5  # axis, baseline, hedged, coded


def test_negative_extra_load_is_explained_where_it_appears(tmp_path):
    folder, summary = write_result(tmp_path / "run", n=400, files=("sweep.parquet",))
    summary["policies"]["hedged"]["extra_load_vs_uncoded_pct"] = -3.5
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    html = reports.render(folder).read_text(encoding="utf-8")
    headline = html[html.index("<h2>Headline"):html.index("<h2>Figures")]
    assert "-3.5%<sup>†</sup>" in headline and "† Negative extra load" in headline
    assert "Negative extra load" not in html[html.index("<details><summary>All sweep"):]  # none in the sweep
    sweep = pd.read_parquet(folder / "sweep.parquet")
    sweep.loc[sweep["policy"] == "hedged", "extra_load_vs_uncoded_pct"] = -2.0
    sweep.to_parquet(folder / "sweep.parquet", index=False)
    html = reports.render(folder).read_text(encoding="utf-8")
    assert "† Negative extra load" in html[html.index("<details><summary>All sweep"):]
    assert "Below zero a policy did less work than uncoded" in html  # the extra-load figure's caption


def test_parity_networks_table_shows_each_networks_cost_and_worth(tmp_path):
    folder, summary = write_result(tmp_path / "run", points=(0.0,), n=300)
    summary["parity"] = [
        {"k": 2, "expert": "digits-0-4", "encoder": "sum", "init": "base", "epochs": 20, "train_samples": 2517,
         "train_s": 5.93, "degraded_accuracy_pct": 93.41, "agreement_pct": 94.77, "expert_accuracy_pct": 97.8},
        {"k": 3, "expert": "any", "encoder": "concat", "init": "scratch", "epochs": 5, "train_samples": 5012,
         "train_s": 12.06, "degraded_accuracy_pct": 41.26, "agreement_pct": 42.5, "expert_accuracy_pct": 97.1}]
    (folder / "summary.json").write_text(json.dumps(summary))
    html = reports.render(folder).read_text(encoding="utf-8")
    section = html[html.index("<h2>Parity networks</h2>"):]
    section = section[: section.index("</table>")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    assert cells == ["2", "digits-0-4", "sum", "base", "20", "2517", "5.9", "93.4%", "94.8%", "97.8%",
                     "3", "any", "concat", "scratch", "5", "5012", "12.1", "41.3%", "42.5%", "97.1%"]
    del summary["parity"]
    (folder / "summary.json").write_text(json.dumps(summary))
    assert "Parity networks" not in reports.render(folder).read_text(encoding="utf-8")


@pytest.mark.parametrize("model, says", [("served", "does not use them as service times"),
                                         ("compute", "these samples are the simulator"),
                                         (None, "these samples are the simulator")])
def test_the_profile_note_says_what_the_isolated_passes_are_for_under_each_latency_model(tmp_path, model, says):
    folder, summary = write_result(tmp_path / "run", points=(0.0,), n=300)
    summary["profile"] = {"digits-0-4": {"mean_ms": 0.18, "p50_ms": 0.17, "p99_ms": 0.3, "batch_size": 1,
                                         "device": "cpu", "n_samples": 2000}}
    summary.pop("latency_model", None)
    if model is not None:
        summary["latency_model"] = {"name": model, "meaning": "m"}
    (folder / "summary.json").write_text(json.dumps(summary))
    html = reports.render(folder).read_text(encoding="utf-8")
    section = html[html.index("<h2>Latency profile</h2>"):]
    assert says in section[: section.index("</table>") + 2000]
