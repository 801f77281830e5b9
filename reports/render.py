"""render(result_dir): figures/*.png and report.html from the files of one result folder.

Writes are atomic (temp file + os.replace) and the figures are complete before the HTML is replaced, so a
crash never leaves a report pointing at half-written output. Output depends only on the folder's files (no
render timestamp), so rendering twice gives identical bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import atomic
from reports import figures as F
from reports.html import FigureEntry, build_html
from reports.load import ResultData, load_result, main_point
from resultschema import QUERIES, SCENARIO, SWEEP

FIGURE_NAMES = ("frontier", "frontier_agreement", "latency_ccdf", "tail_vs_sweep", "accuracy_vs_sweep",
                "answer_mix", "extra_load_vs_sweep", "traffic_over_time", "nda_bars")


def png_bytes(fig: Figure) -> bytes:
    """PNG without the varying metadata, so identical input gives identical bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _has_values(df: pd.DataFrame | None, column: str) -> bool:
    return df is not None and column in df.columns and pd.to_numeric(df[column], errors="coerce").notna().any()


def _bursty(queries: pd.DataFrame, point: int | None) -> bool:
    """Traffic worth a time plot: per-model arrival counts far more variable than Poisson (dispersion > 2)."""
    q = F.measured(queries, point)
    if not {"arrival_ms", "finish_ms"} <= set(q.columns) or not len(q):
        return False
    q = q[q["policy"] == q["policy"].iloc[0]]
    key = "model_name" if "model_name" in q.columns else "model" if "model" in q.columns else None
    groups = q.groupby(key, observed=True)["arrival_ms"] if key else [("all", q["arrival_ms"])]
    edges = np.linspace(q["arrival_ms"].min(), q["arrival_ms"].max() + 1e-9, 41)
    for _, arr in groups:
        counts, _ = np.histogram(arr, edges)
        if counts.mean() >= 2 and counts.var() / counts.mean() > 2.0:
            return True
    return False


def points_frame(data: ResultData) -> pd.DataFrame | None:
    """One row per (point, policy) with the summary's statistics: sweep.parquet, or summary.json's points
    when the folder has no sweep table."""
    if data.sweep is not None and len(data.sweep):
        return data.sweep
    rows = [{"point": p["point"], **{a: p.get(a) for a in data.axes}, "policy": name, **stats}
            for p in data.points for name, stats in p["policies"].items()]
    return pd.DataFrame(rows) if rows else None


def _agreement_adds_something(frame: pd.DataFrame) -> bool:
    """Agreement with the expert is worth its own frontier when some policy answered differently from the
    expert (decoding or a backup): then it isolates that price from the experts' own errors."""
    return _has_values(frame, "agreement_pct") and bool(
        (pd.to_numeric(frame["agreement_pct"], errors="coerce") < 100.0).any())


def plan_figures(data: ResultData) -> list[tuple[str, Callable[[], Figure], str, str]]:
    """(name, builder, caption, alt) for every figure the folder's files support, in report order."""
    order = data.policy_order
    colors = F.policy_colors(order, data.policy_kinds)
    axis = data.sweep_axis
    facets = data.facet_axes
    point = main_point(data)
    sw = data.sweep
    plans: list[tuple[str, Callable[[], Figure], str, str]] = []
    q = data.queries
    where = data.point_label(point) if axis is not None else None
    per_facet = (f" One panel per {', '.join(F.axis_label(a) for a in facets)}." if facets else "")
    frame = points_frame(data)
    if frame is not None and _has_values(frame, "accuracy_pct") and _has_values(frame, "p99_ms"):
        # without sweep.parquet the summary's points still name their one varying axis
        label_axis = axis if axis is not None or len(data.axes) != 1 else data.axes[0]
        labelled = f", labelled with the {F.axis_label(label_axis)}" if label_axis not in (None, "point") else ""
        plans.append(("frontier", lambda: F.frontier(frame, label_axis, order, colors, facets),
                      "Tail latency against the accuracy of what was answered, one marker per policy per sweep "
                      f"point{labelled}: down and right is better (shorter tail, more accurate answers). Vertical "
                      "bars: the run's latency confidence intervals; horizontal: 95 % Wilson intervals of the "
                      "accuracy." + per_facet, "Latency-accuracy frontier"))
        if _agreement_adds_something(frame):
            plans.append(("frontier_agreement",
                          lambda: F.frontier(frame, label_axis, order, colors, facets, x="agreement_pct"),
                          "The same frontier against agreement with the expert's own answer: direct, replica and "
                          "hedged answers agree by construction (100 %), so any distance from 100 % is the price "
                          "of decoding or of a backup, without the experts' own errors; down and right is better."
                          + per_facet, "Latency-agreement frontier"))
    if q is not None and len(q):
        plans.append(("latency_ccdf", lambda: F.latency_ccdf(q, order, colors, point, where),
                      "Share of queries slower than x (log scale): the lower and further left a curve ends, the "
                      "shorter the tail; read p99 and p99.9 where it crosses the dotted lines.",
                      "Latency CCDF per policy"))
    if axis is not None and sw is not None:
        plans.append(("tail_vs_sweep", lambda: F.tail_vs_sweep(sw, axis, order, colors, facets),
                      f"Tail latency as {F.axis_label(axis)} grows; shaded bands are confidence intervals — "
                      f"look for where the curves separate and whether the bands overlap.{per_facet}",
                      "p99 and p99.9 latency vs sweep axis"))
        if _has_values(sw, "accuracy_pct"):
            plans.append(("accuracy_vs_sweep", lambda: F.accuracy_vs_sweep(sw, axis, order, colors, facets),
                          "Accuracy of what the system answered (bands: 95 % Wilson intervals), over all answers "
                          "(left) and over decoded or backup answers alone (right), against the labels and, "
                          "below, against the expert's own answer: a coded policy pays its price only on the "
                          f"queries it decodes.{per_facet}", "Accuracy vs sweep axis"))
    fractions = F.answer_fractions(q, sw)
    mix = fractions.drop(columns=["point", "policy"], errors="ignore")
    if len(fractions) and axis is not None and sw is not None:
        plans.append(("answer_mix", lambda: F.answer_mix_vs_sweep(fractions, sw, axis, order, colors, facets),
                      "How often a query was answered by something other than its own server (decoding, a "
                      f"replica or a hedged copy) — the mechanism behind each tail.{per_facet}",
                      "Answer mix vs sweep axis"))
    elif len(fractions) and mix.to_numpy(dtype=float).sum() > 0:
        plans.append(("answer_mix", lambda: F.answer_mix_bars(fractions, order),
                      "How each policy's queries were answered; anything but grey is a query rescued from a "
                      "slow or failed server.", "Answer mix per policy"))
    if axis is not None and _has_values(sw, "extra_load_vs_uncoded_pct"):
        negative = bool((pd.to_numeric(sw["extra_load_vs_uncoded_pct"], errors="coerce") < 0).any())
        plans.append(("extra_load_vs_sweep", lambda: F.extra_load_vs_sweep(sw, axis, order, colors, facets),
                      "Server time spent per query relative to uncoded: the price each policy pays for its "
                      "tail (cancelled and lost work included)."
                      + (" Below zero a policy did less work than uncoded: when another copy or the decoder "
                         "answers first, the straggling task is cancelled and its server freed early, which "
                         "can save more time than the redundant copies cost." if negative else "") + per_facet,
                      "Extra load vs sweep axis"))
    if q is not None and len(q) and ("correlat" in data.summary["scenario"].lower() or _bursty(q, point)):
        plans.append(("traffic_over_time", lambda: F.traffic_over_time(q, point, order, colors),
                      "Arrivals per model and backlog per policy over simulated time: bursts of a hot model "
                      "should show up as backlog under replication but not under coding.",
                      "Traffic and queue length over time"))
    table = F.nda_table(data.summary.get("coding"), data.nda)
    if len(table):
        avg = {m: c.get("nda_avg_pct") for m, c in (data.summary.get("coding") or {}).items()}
        plans.append(("nda_bars", lambda: F.nda_bars(table, avg),
                      "Normalized decoding accuracy per expert and method (values on the bars; the y axis starts "
                      "near the lowest bar when all are close, as marked): bars near the dashed line at 100 % "
                      "mean a decoded answer is as good as the expert's own.", "NDA per coding method"))
    return plans


def render(result_dir: Path | str) -> Path:
    """Render figures/*.png and report.html into `result_dir`; return the HTML path.

    Raises ReportError (a ValueError with a one-line message) when the folder cannot be read.
    """
    data = load_result(result_dir)
    path = data.path
    fig_dir = path / "figures"
    fig_dir.mkdir(exist_ok=True)
    entries: list[FigureEntry] = []
    for name, build, caption, alt in plan_figures(data):
        try:
            fig = build()
        except Exception as exc:  # one odd table must not cost the user the rest of the report
            data.notes.append(f"figure {name} could not be drawn: {type(exc).__name__}: {exc}")
            continue
        png = png_bytes(fig)
        atomic.write_bytes(fig_dir / f"{name}.png", png)
        entries.append(FigureEntry(name, png, caption, alt))
    drawn = {e.name for e in entries}
    for stale in FIGURE_NAMES:  # a figure from an earlier render that this folder no longer supports
        if stale not in drawn:
            (fig_dir / f"{stale}.png").unlink(missing_ok=True)
    for fname, what in ((QUERIES, "latency distribution"), (SWEEP, "sweep figures"),
                        (SCENARIO, "scenario listing")):
        if not (path / fname).exists():
            data.notes.append(f"no {fname} in this folder: {what} skipped.")
    colors = F.policy_colors(data.policy_order, data.policy_kinds)
    html = build_html(data, entries, colors, F.nda_table(data.summary.get("coding"), data.nda))
    out = path / "report.html"
    atomic.write_bytes(out, html.encode("utf-8"))
    return out
