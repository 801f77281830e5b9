"""The latency–accuracy frontier, accuracy two ways and the zoomed NDA bars, checked against independent
computations from the records (queries.parquet), not against the numbers the figures were built from."""

from __future__ import annotations

import base64
import json
import re
from html import unescape

import numpy as np
import pandas as pd
import pytest
from reports_testutil import AXIS, POLICIES, write_result

import reports
from reports.figures import frontier, nda_axis_floor, wilson_interval
from reports.html import fmt_pct

WITH_BACKUP = (*POLICIES, "backup")


@pytest.fixture(scope="module")
def backup_run(tmp_path_factory):
    """Five straggler points, the four usual policies and a generalist backup (whose keys the others lack)."""
    folder, summary = write_result(tmp_path_factory.mktemp("frontier") / "run", policies=WITH_BACKUP, n=1200)
    html = reports.render(folder).read_text(encoding="utf-8")
    return folder, summary, html


def _measured(folder):
    q = pd.read_parquet(folder / "queries.parquet")
    return q[~q["warmup"]]


def plotted(fig) -> dict[tuple[str, str], np.ndarray]:
    """(panel, policy) -> the (x, y) pairs of its markers, read back from the matplotlib artists."""
    out = {}
    for ax in fig.axes:
        panel = "p999_ms" if ax.get_title().startswith("p99.9") else "p99_ms"
        for line in ax.get_lines():
            gid = line.get_gid() or ""
            if gid.startswith("frontier:"):
                out[(panel, gid.removeprefix("frontier:"))] = np.asarray(line.get_xydata(), float)
    return out


def independent(folder, x_column: str = "correct") -> dict[tuple[str, str], np.ndarray]:
    """The same pairs from the records alone: np.percentile of measured latencies, mean of `correct`,
    one per sweep point in the axis' order."""
    q = _measured(folder)
    axis = pd.read_parquet(folder / "sweep.parquet").drop_duplicates("point").set_index("point")[AXIS]
    points = sorted(q["point"].unique(), key=lambda p: axis[p])
    out = {}
    for policy, rows in q.groupby("policy", observed=True):
        for panel, level in (("p99_ms", 99), ("p999_ms", 99.9)):
            pairs = []
            for point in points:
                mine = rows[rows["point"] == point]
                pairs.append((mine[x_column].mean() * 100, np.percentile(mine["latency_ms"], level)))
            out[(panel, str(policy))] = np.asarray(pairs)
    return out


@pytest.mark.parametrize("x, column", [("accuracy_pct", "correct"), ("agreement_pct", "agrees_with_expert")])
def test_frontier_plots_each_policy_at_each_point_where_the_records_put_it(backup_run, x, column):
    folder, _, _ = backup_run
    data = reports.load_result(folder)
    fig = frontier(data.sweep, data.sweep_axis, data.policy_order, x=x)
    got, want = plotted(fig), independent(folder, column)
    assert set(got) == set(want) and {p for _, p in got} == set(WITH_BACKUP)
    for key, pairs in want.items():
        assert got[key] == pytest.approx(pairs, rel=1e-9, abs=1e-9), key
    # the labels name the axis value of each marker (policies that coincide may share one label)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {f"{v:g}" for v in data.sweep[AXIS].unique()} <= texts


def test_frontier_error_bars_are_the_intervals_and_never_below_zero(backup_run):
    folder, _, _ = backup_run
    sweep = reports.load_result(folder).sweep.copy()
    name = sweep.loc[0, "policy"]
    sweep.loc[0, "p99_ms_lo"] = -1.0  # a bound no latency can have: must not be drawn
    rows = sweep[sweep["policy"] == name].sort_values(AXIS)
    ax = next(a for a in frontier(rows, AXIS).axes if a.get_title().startswith("p99 "))
    segments = [seg for c in ax.collections for seg in c.get_segments()]
    assert min(seg[:, 1].min() for seg in segments) >= 0
    # the vertical bars span exactly the summary's interval (from the marker itself where the bound is unknown)
    spans = sorted((seg[:, 1].min(), seg[:, 1].max()) for seg in segments if seg[0, 0] == seg[1, 0])
    want = sorted(zip(rows["p99_ms_lo"].where(rows["p99_ms_lo"] >= 0, rows["p99_ms"]), rows["p99_ms_hi"],
                      strict=True))
    assert np.asarray(spans) == pytest.approx(np.asarray(want, float))
    # and the horizontal bars are the Wilson interval of the accuracy over the measured queries
    widths = sorted((seg[:, 0].min(), seg[:, 0].max()) for seg in segments if seg[0, 1] == seg[1, 1])
    lo, hi = wilson_interval(rows["accuracy_pct"].to_numpy(float), rows["n_measured"].to_numpy(float))
    assert np.asarray(widths) == pytest.approx(np.asarray(sorted(zip(lo, hi, strict=True))))


def test_frontier_handles_missing_columns_and_a_single_point(tmp_path):
    folder, _ = write_result(tmp_path / "one", points=(0.05,), n=400)
    data = reports.load_result(folder)
    sweep = data.sweep.drop(columns=[c for c in data.sweep.columns if c.startswith("p999_ms")])
    fig = frontier(sweep, None, data.policy_order)  # one point: one unlabelled marker per policy, no p99.9
    got = plotted(fig)
    assert {k for k in got if k[0] == "p99_ms"} == {("p99_ms", p) for p in POLICIES}
    assert not [k for k in got if k[0] == "p999_ms"]
    assert all(len(v) == 1 for v in got.values())


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(50.0, 100)
    assert (float(lo), float(hi)) == pytest.approx((40.383, 59.617), abs=1e-3)  # textbook 50/100
    lo, hi = wilson_interval(100.0, 18000)
    assert float(hi) == pytest.approx(100.0) and float(lo) == pytest.approx(100 * 18000 / (18000 + 1.96 ** 2))
    assert np.isnan(wilson_interval(90.0, 0)[0])


def test_html_has_the_frontier_and_the_accuracy_columns_from_the_records(backup_run):
    folder, summary, html = backup_run
    for name in ("frontier", "frontier_agreement"):
        png = (folder / "figures" / f"{name}.png").read_bytes()
        figure = re.search(rf'<figure id="fig-{name}"><img[^>]*src="data:image/png;base64,([^"]+)"', html)
        assert figure and base64.b64decode(figure.group(1)) == png
    assert "down and right is better" in html
    block = html[html.index('<h2 id="accuracy">'):]
    block = block[:block.index("</table>")]
    head = [unescape(h) for h in re.findall(r"<th(?: [^>]*)?>(.*?)</th>", block)]
    assert head == [AXIS, "policy", "measured queries", "all: accuracy", "all: agreement", "decoded: share",
                    "decoded: accuracy", "decoded: agreement", "backup: share", "backup: accuracy",
                    "backup: agreement"]
    q = _measured(folder)
    rows = re.findall(r"<tr>(.*?)</tr>", block, re.S)[1:]
    assert len(rows) == len(summary["points"]) * len(WITH_BACKUP)
    for row in rows:
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        cell = dict(zip(head, cells, strict=True))
        point = next(p["point"] for p in summary["points"] if f"{p[AXIS]:g}" == cell[AXIS])
        mine = q[(q["point"] == point) & (q["policy"] == cell["policy"])]
        assert cell["measured queries"] == f"{len(mine):,}"
        assert cell["all: accuracy"].startswith(fmt_pct(mine["correct"].mean() * 100, digits=2) + " [")
        assert cell["all: agreement"] == fmt_pct(mine["agrees_with_expert"].mean() * 100, digits=2)
        for kind in ("decoded", "backup"):
            sub = mine[mine["answered_by"] == kind]
            if len(sub):
                assert cell[f"{kind}: accuracy"].startswith(fmt_pct(sub["correct"].mean() * 100, digits=2))
                assert cell[f"{kind}: agreement"] == fmt_pct(sub["agrees_with_expert"].mean() * 100, digits=2)
            elif cell["policy"] != kind and not (kind == "decoded" and cell["policy"] == "coded"):
                assert cell[f"{kind}: accuracy"] == "—"  # keys absent for this policy: a dash, not a zero


def test_accuracy_figure_draws_decoded_and_backup_answers_with_their_own_intervals(backup_run):
    folder, _, _ = backup_run
    data = reports.load_result(folder)
    fig = reports.accuracy_vs_sweep(data.sweep, AXIS, data.policy_order)
    subset = fig.axes[1]  # accuracy vs labels, decoded / backup answers only
    labels = {ln.get_label(): ln for ln in subset.get_lines() if not ln.get_label().startswith("_")}
    assert set(labels) == {"coded (decoded)", "backup (backup)"}
    q = _measured(folder)
    points = data.sweep.drop_duplicates("point").sort_values(AXIS)
    for label, policy, kind in (("coded (decoded)", "coded", "decoded"), ("backup (backup)", "backup", "backup")):
        want = [q[(q["point"] == p) & (q["policy"] == policy) & (q["answered_by"] == kind)]["correct"].mean() * 100
                for p in points["point"]]
        assert np.asarray(labels[label].get_ydata(), float) == pytest.approx(np.asarray(want))
    # each band is the Wilson interval over that policy's decoded (backup) answers, not over all its answers
    colour = reports.policy_colors(data.policy_order, data.policy_kinds)["backup"]
    band = next(c for c in subset.collections if np.allclose(c.get_facecolor()[0][:3], _rgb(colour)))
    verts = band.get_paths()[0].vertices
    for p in points["point"]:
        sub = q[(q["point"] == p) & (q["policy"] == "backup") & (q["answered_by"] == "backup")]
        lo, hi = wilson_interval(sub["correct"].mean() * 100, len(sub))
        x = points.set_index("point").at[p, AXIS]
        ys = verts[np.isclose(verts[:, 0], x), 1]
        assert (ys.min(), ys.max()) == pytest.approx((float(lo), float(hi)))


def _rgb(colour: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


@pytest.mark.parametrize("values", [[97.0, 99.0, 99.5, 100.0], [99.19, 99.8, 100.0, 100.0], [99.9, 99.95]])
def test_nda_axis_is_zoomed_to_the_bars_when_they_are_close(values):
    table = pd.DataFrame({"method": [f"m{i}" for i in range(len(values))], "expert": "a", "nda_pct": values})
    fig = reports.nda_bars(table)
    ax = fig.axes[0]
    bottom, top = ax.get_ylim()
    assert 0 < bottom < min(values) and top >= 100
    assert min(values) - bottom < 0.5 * (100 - bottom)  # the differences fill most of the axis
    tops = sorted(round(b.get_y() + b.get_height(), 9) for b in ax.patches)
    assert tops == sorted(round(v, 9) for v in [*values, *values])  # the bar and the average, at their values
    texts = [t.get_text() for t in ax.texts]
    assert any("zoomed" in t for t in texts) and f"{min(values):.2f}" in texts  # marked, and values printed


def test_nda_axis_starts_at_zero_when_bars_differ_a_lot():
    assert nda_axis_floor([93.0, 91.0, 41.0, 37.0]) == 0.0
    assert nda_axis_floor([]) == 0.0
    table = pd.DataFrame({"method": ["coin", "vanilla"], "expert": "a", "nda_pct": [93.0, 41.0]})
    ax = reports.nda_bars(table).axes[0]
    assert ax.get_ylim()[0] == 0 and not any("zoomed" in t.get_text() for t in ax.texts)


def test_summary_only_frontier_uses_the_summary_points(tmp_path):
    folder, summary = write_result(tmp_path / "run", files=())
    data = reports.load_result(folder)
    from reports.render import points_frame

    frame = points_frame(data)
    fig = frontier(frame, data.sweep_axis, data.policy_order)
    got = plotted(fig)
    for point_index, point in enumerate(summary["points"]):
        for name, stats in point["policies"].items():
            assert got[("p99_ms", name)][point_index] == pytest.approx([stats["accuracy_pct"], stats["p99_ms"]])
    assert json.loads((folder / "summary.json").read_text()) == summary  # rendering never rewrites the summary


def test_report_plans_the_frontier_against_accuracy_and_agreement(backup_run):
    """The figures the report embeds (not only the builder called by hand) put accuracy on the x axis of
    `frontier` and agreement on that of `frontier_agreement`."""
    from reports.render import plan_figures

    folder, _, _ = backup_run
    built = {name: build for name, build, _, _ in plan_figures(reports.load_result(folder))}
    for name, column in (("frontier", "correct"), ("frontier_agreement", "agrees_with_expert")):
        got, want = plotted(built[name]()), independent(folder, column)
        for key, pairs in want.items():
            assert got[key] == pytest.approx(pairs, rel=1e-9, abs=1e-9), (name, key)


def test_decoded_and_backup_intervals_are_over_those_answers_alone(backup_run):
    folder, summary, html = backup_run
    block = html[html.index('<h2 id="accuracy">'):]
    block = block[:block.index("</table>")]
    head = [unescape(h) for h in re.findall(r"<th(?: [^>]*)?>(.*?)</th>", block)]
    q = _measured(folder)
    checked = 0
    for row in re.findall(r"<tr>(.*?)</tr>", block, re.S)[1:]:
        cells = dict(zip(head, [re.sub(r"<[^>]+>", "", c).strip() for c in
                                re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)], strict=True))
        point = next(p["point"] for p in summary["points"] if f"{p[AXIS]:g}" == cells[AXIS])
        mine = q[(q["point"] == point) & (q["policy"] == cells["policy"])]
        for kind in ("decoded", "backup"):
            sub = mine[mine["answered_by"] == kind]
            if cells["policy"] not in ("coded", "backup") or not len(sub):
                continue
            k, n = int(sub["correct"].sum()), len(sub)
            lo, hi = wilson_interval(100 * k / n, n)
            assert cells[f"{kind}: accuracy"].endswith(f"[{float(lo):.2f}, {float(hi):.2f}]"), (kind, cells)
            checked += 1
    assert checked >= 2 * len(summary["points"])  # every point: coded's decoded and backup's backup answers


def test_frontier_of_a_grid_draws_one_row_of_panels_per_value_of_the_other_axis(backup_run):
    folder, _, _ = backup_run
    one = reports.load_result(folder).sweep
    other = one.assign(point=one["point"] + one["point"].max() + 1, p99_ms=one["p99_ms"] * 3,
                       p999_ms=one["p999_ms"] * 3, accuracy_pct=one["accuracy_pct"] - 1)
    grid = pd.concat([one.assign(load=0.2), other.assign(load=0.5)], ignore_index=True)
    with pytest.raises(ValueError, match="facet"):
        frontier(grid, AXIS, facet_by=())  # one line through both loads would zig-zag: refused
    fig = frontier(grid, AXIS, facet_by=["load"])
    assert len(fig.axes) == 4
    for ax in fig.axes:
        load = float(re.search(r"load = ([\d.]+)", ax.get_title()).group(1))
        key = "p999_ms" if ax.get_title().startswith("p99.9") else "p99_ms"
        for line in ax.get_lines():
            if not (line.get_gid() or "").startswith("frontier:"):
                continue
            rows = grid[(grid["load"] == load) & (grid["policy"] == line.get_gid()[9:])].sort_values(AXIS)
            assert np.asarray(line.get_xydata()) == pytest.approx(rows[["accuracy_pct", key]].to_numpy(float))
