"""Figure builders: each takes DataFrames/dicts and returns a matplotlib Figure (Agg, never shown).

They are plain functions over tables so the CLI, notebooks and tests can reuse them without a result folder.
Every figure colours a policy the same way (see `policy_colors`), so a reader learns the legend once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # the report is rendered headless; never pick an interactive backend

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

from reports.load import ANSWER_KINDS, fmt_value  # noqa: E402

# Well-known policy kinds get fixed colours so figures from different runs compare at a glance.
# Order matters for name matching: "uncoded" contains "coded", and "coded-hedged" is a coded policy.
_PREFERRED = (("uncoded", "#6b6b6b"), ("cod", "#2ca02c"), ("replic", "#1f77b4"), ("hedg", "#ff7f0e"),
              ("backup", "#9467bd"))
_PALETTE = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#2ca02c", "#1f77b4", "#ff7f0e")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
# Policies can coincide (e.g. hedged == replication at high load); dashes keep both lines visible.
_DASHES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
AXIS_LABELS = {
    "straggler_p": "straggler probability",
    "stragglers.probability": "straggler probability",
    "point": "sweep point",
}
_METHOD_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
_MODEL_COLORS = ("#8172b3", "#c44e52", "#937860", "#17becf", "#da8bc3", "#bcbd22")
ANSWER_COLORS = {"direct": "#c7c7c7", "replica": "#1f77b4", "hedge": "#ff7f0e", "decoded": "#2ca02c",
                 "backup": "#9467bd"}


def policy_colors(policies: Sequence[str], kinds: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """One stable colour per policy: known kinds (uncoded/replication/hedged/coded) first, then a palette.

    `kinds` (policy -> simulator kind) wins over guessing from the name, so "coded-hedged" stays coded green.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in policies:
        low = str((kinds or {}).get(name) or name).lower()
        for key, colour in _PREFERRED:
            if key in low and colour not in used:
                out[name] = colour
                used.add(colour)
                break
    for name in policies:
        if name not in out:
            colour = next((c for c in _PALETTE if c not in used), _PALETTE[len(out) % len(_PALETTE)])
            out[name] = colour
            used.add(colour)
    return out


def _marker(policies: Sequence[str], name: str) -> str:
    return _MARKERS[list(policies).index(name) % len(_MARKERS)] if name in policies else "o"


def _dash(policies: Sequence[str], name: str):
    return _DASHES[list(policies).index(name) % len(_DASHES)] if name in policies else "-"


def axis_label(axis: str) -> str:
    return AXIS_LABELS.get(axis, axis.replace("_", " "))


def _new(width: float = 7.0, height: float = 4.0, ncols: int = 1) -> tuple[Figure, list]:
    fig, grid = _grid(1, ncols, width / ncols, height)
    return fig, list(grid[0])


def _grid(nrows: int, ncols: int, panel_width: float, panel_height: float,
          sharey: bool | str = False) -> tuple[Figure, np.ndarray]:
    """A figure of nrows × ncols panels (2-D array of axes), each panel_width × panel_height inches."""
    width = min(panel_width * ncols + 0.4, 22.0)
    fig = Figure(figsize=(width, panel_height * nrows), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    for ax in axes.flat:
        ax.grid(True, which="major", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def facet_groups(sweep: pd.DataFrame, facet_by: Sequence[str] = ()) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per combination of the facet axes' values — one panel each — or one untitled group.

    A grid over two axes drawn against one of them needs one panel per value of the other: joining all its
    points into one line per policy would zig-zag between unrelated settings.
    """
    facet_by = [a for a in facet_by if a in sweep.columns]
    if not facet_by:
        return [("", sweep)]
    out = []
    for key, rows in sweep.groupby(facet_by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        out.append((", ".join(f"{axis_label(a)} = {fmt_value(v)}" for a, v in zip(facet_by, key, strict=True)),
                    rows))
    return out


def _x_values(sweep: pd.DataFrame, axis: str) -> tuple[pd.Series, list[str] | None]:
    """Numeric sweep values plot as numbers; anything else (e.g. policy names) as evenly spaced categories."""
    col = sweep[axis]
    if pd.api.types.is_numeric_dtype(col):
        return col.astype(float), None
    cats = list(dict.fromkeys(col.astype(str)))
    return col.astype(str).map({c: i for i, c in enumerate(cats)}).astype(float), cats


def _finish_sweep_axis(ax, axis: str, cats: list[str] | None) -> None:
    """Label the sweep axis; categories as ticks; a positive numeric axis spanning 16× or more (fleet sizes,
    rates) on a log₂ scale, so that its small values are not crushed together."""
    ax.set_xlabel(axis_label(axis))
    if cats is not None:
        ax.set_xticks(range(len(cats)), cats)
        return
    xs = np.concatenate([np.asarray(line.get_xdata(), float) for line in ax.get_lines()] or [np.empty(0)])
    xs = xs[np.isfinite(xs)]
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() >= 16:
        ax.set_xscale("log", base=2)
        ticks = np.unique(xs)
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])


def _ordered(policies: Sequence[str] | None, frame: pd.DataFrame) -> list[str]:
    names = frame["policy"]  # in order of first appearance, without a string per row
    present = [str(p) for p in (names.unique() if len(names) else [])]
    if policies is None:
        return present
    return [p for p in policies if p in present] + [p for p in present if p not in policies]


def measured(queries: pd.DataFrame, point: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows that count: the chosen sweep point, warm-up discarded (as the simulator's statistics do); `columns`:
    only those (with what the selection needs), so that millions of rows are not copied whole."""
    q = queries
    if columns is not None:
        q = q[[c for c in q.columns if c in {*columns, "point", "warmup"}]]
    if point is not None and "point" in q.columns:
        q = q[q["point"] == point]
    if "warmup" in q.columns:
        q = q[~q["warmup"].astype(bool)]
    return q


CCDF_STEPS = 2000


def ccdf_steps(n: int, steps: int = CCDF_STEPS) -> np.ndarray:
    """Which of n sorted latencies a survival curve draws: all of them up to 3 × `steps`; beyond, the largest
    `steps` (the tail, where each query moves the curve visibly on a log axis), `steps` evenly spaced ranks and
    `steps` ranks at geometric distances from the end — a curve of millions of queries drawn as what a figure
    can show, its every plotted point exact."""
    if n <= 3 * steps:
        return np.arange(n)
    tail = np.arange(n - steps, n)
    even = np.linspace(0, n - 1, steps).astype(np.int64)
    geometric = n - np.unique(np.geomspace(1, n, steps).astype(np.int64))
    return np.unique(np.concatenate([even, geometric, tail]))


def latency_ccdf(queries: pd.DataFrame, policies: Sequence[str] | None = None,
                 colors: Mapping[str, str] | None = None, point: int | None = None, where: str | None = None) -> Figure:
    """P(latency > x) per policy on a log y axis, so the p99/p99.9 region is as visible as the median."""
    q = measured(queries, point, ("policy", "latency_ms"))
    order = _ordered(policies, q)
    colors = colors or policy_colors(order)
    fig, (ax,) = _new()
    lat_all = q["latency_ms"].to_numpy(dtype=float)
    lat_all = lat_all[np.isfinite(lat_all)]
    n_max = 1
    for name in order:
        lat = np.sort(q.loc[q["policy"] == name, "latency_ms"].to_numpy(dtype=float))
        lat = lat[np.isfinite(lat)]
        if not len(lat):
            continue
        n_max = max(n_max, len(lat))
        surv = 1.0 - np.arange(1, len(lat) + 1) / len(lat)
        keep = ccdf_steps(len(lat))
        keep = keep[surv[keep] > 0]  # the last point has P=0, which a log axis cannot show
        ax.step(lat[keep], surv[keep], where="post", color=colors.get(name), lw=1.6, ls=_dash(order, name),
                label=name)
    for level, text in ((1e-2, "p99"), (1e-3, "p99.9")):
        if level >= 1.0 / n_max:
            ax.axhline(level, color="0.4", ls=":", lw=0.9)
            ax.annotate(text, (0.0, level), xycoords=("axes fraction", "data"), xytext=(3, 2),
                        textcoords="offset points", ha="left", va="bottom", fontsize=8, color="0.3")
    ax.set_yscale("log")
    ax.set_ylim(max(0.5 / n_max, 1e-6), 1.0)
    if len(lat_all) and lat_all.min() > 0 and np.divide(*np.percentile(lat_all, [99.9, 50], overwrite_input=True)) > 30:
        ax.set_xscale("log")  # stragglers many times slower than the median squeeze the body otherwise
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("P(latency > x)")
    where = where or (f"point {point}" if point is not None else None)
    ax.set_title("Latency tail per policy" + (f" ({where})" if where else ""))
    if order:
        ax.legend(frameon=False)
    return fig


def _line_with_band(ax, x: pd.Series, y: pd.Series, lo: pd.Series | None, hi: pd.Series | None,
                    colour: str | None, policies: Sequence[str], label: str) -> None:
    order = np.argsort(x.to_numpy())
    xs, ys = x.to_numpy()[order], y.to_numpy(dtype=float)[order]
    ax.plot(xs, ys, color=colour, marker=_marker(policies, label), ls=_dash(policies, label), ms=4, lw=1.6,
            label=label)
    if lo is not None and hi is not None:
        los, his = lo.to_numpy(dtype=float)[order], hi.to_numpy(dtype=float)[order]
        ok = np.isfinite(los) & np.isfinite(his)
        if ok.any():
            ax.fill_between(xs[ok], los[ok], his[ok], color=colour, alpha=0.18, lw=0)


def _per_policy(sweep: pd.DataFrame, axis: str, policies: Sequence[str] | None,
                x_all: pd.Series | None = None, cats: list[str] | None = None):
    """(category labels or None, [(policy, its rows, their x values), ...]).

    Refuses a policy with two rows at one x: that would be drawn as a zig-zag through unrelated settings
    (a grid with another axis needs `facet_by`).
    """
    if x_all is None:
        x_all, cats = _x_values(sweep, axis)
    parts = []
    for name in _ordered(policies, sweep):
        mask = (sweep["policy"] == name).to_numpy()
        x = x_all.loc[sweep.index[mask]]
        if x.duplicated().any():
            raise ValueError(f"policy {name} has several points at one {axis} value; facet by the other sweep "
                             "axes")
        parts.append((name, sweep[mask], x))
    return cats, parts


def tail_vs_sweep(sweep: pd.DataFrame, axis: str, policies: Sequence[str] | None = None,
                  colors: Mapping[str, str] | None = None, facet_by: Sequence[str] = ()) -> Figure:
    """p99 and p99.9 against the sweep axis, with CI bands: where does each policy's tail blow up?

    One column of panels per combination of the `facet_by` axes' values (rows: p99, p99.9).
    """
    order = _ordered(policies, sweep)
    colors = colors or policy_colors(order)
    groups = facet_groups(sweep, facet_by)
    fig, grid = _grid(2 if len(groups) > 1 else 1, len(groups) if len(groups) > 1 else 2, 5.0, 4.0,
                      sharey="row" if len(groups) > 1 else False)
    x_all, cats = _x_values(sweep, axis)
    panels = []
    for col, (facet, rows_f) in enumerate(groups):
        for row, (key, title) in enumerate((("p99_ms", "p99"), ("p999_ms", "p99.9"))):
            ax = grid[row, col] if len(groups) > 1 else grid[0, row]
            panels.append(ax)
            if key not in sweep.columns:
                ax.text(0.5, 0.5, f"no {title} column", ha="center", transform=ax.transAxes)
                continue
            _, parts = _per_policy(rows_f, axis, order, x_all, cats)
            for name, rows, x in parts:
                lo, hi = rows.get(f"{key}_lo"), rows.get(f"{key}_hi")
                _line_with_band(ax, x, rows[key], lo, hi, colors.get(name), order, name)
            vals = sweep[key].to_numpy(dtype=float)
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if len(vals) and vals.max() / vals.min() > 20:
                ax.set_yscale("log")
            _finish_sweep_axis(ax, axis, cats)
            ax.set_ylabel(f"{title} latency (ms)")
            ax.set_title(f"{title} latency (band: CI)" + (f"\n{facet}" if facet else ""), fontsize=10)
    panels[0].legend(frameon=False, fontsize=8)
    return fig


def metric_vs_sweep(sweep: pd.DataFrame, axis: str, column: str, ylabel: str, title: str,
                    policies: Sequence[str] | None = None, colors: Mapping[str, str] | None = None,
                    percent: bool = False, zero_line: bool = False, min_span: float = 0.0,
                    facet_by: Sequence[str] = ()) -> Figure:
    """One metric per policy against the sweep axis (accuracy, extra load, ...), one panel per facet.

    Values are plotted as stored (the result files keep percentages in percent); `percent` caps a zoomed
    axis at 100. `min_span` (in plotted units) stops the y axis from zooming into noise: a 0.01-point
    accuracy wobble should look flat, not like a cliff.
    """
    order = _ordered(policies, sweep)
    colors = colors or policy_colors(order)
    groups = facet_groups(sweep, facet_by)
    fig, grid = _grid(1, len(groups), 7.0 if len(groups) == 1 else 4.6, 4.0, sharey=True)
    x_all, cats = _x_values(sweep, axis)
    for ax, (facet, rows_f) in zip(grid[0], groups, strict=True):
        _, parts = _per_policy(rows_f, axis, order, x_all, cats)
        for name, rows, x in parts:
            if column not in rows.columns:
                continue
            y = pd.to_numeric(rows[column], errors="coerce")
            lo, hi = rows.get(f"{column}_lo"), rows.get(f"{column}_hi")
            _line_with_band(ax, x, y, lo, hi, colors.get(name), order, name)
        if zero_line:
            ax.axhline(0, color="0.4", lw=0.8)
        ax.yaxis.get_major_formatter().set_useOffset(False)
        _finish_sweep_axis(ax, axis, cats)
        ax.set_title(title + (f"\n{facet}" if facet else ""), fontsize=10 if facet else None)
    ax0 = grid[0, 0]
    lo_y, hi_y = ax0.get_ylim()  # shared across panels
    if min_span and hi_y - lo_y < min_span:
        mid = (lo_y + hi_y) / 2
        top = min(mid + min_span / 2, 100.0) if percent else mid + min_span / 2
        ax0.set_ylim(top - min_span, top)
    ax0.set_ylabel(ylabel)
    ax0.legend(frameon=False, fontsize=8 if len(groups) > 1 else None)
    return fig


def wilson_interval(pct: np.ndarray | float, n: np.ndarray | float, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (percent) of a proportion given in percent over n trials; NaN where n < 1.

    Unlike the normal approximation it stays inside [0, 100] and is not zero-width at 100 %.
    """
    phat = np.asarray(pct, dtype=float) / 100.0
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = 1.0 + z * z / n
        centre = (phat + z * z / (2 * n)) / denom
        half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
        lo, hi = np.clip(centre - half, 0, 1) * 100, np.clip(centre + half, 0, 1) * 100
    bad = ~(n >= 1) | ~np.isfinite(phat)
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


# Accuracy of what was answered: (column, its answers' share column or None for all answers, panel label)
ACCURACY_VIEWS = (
    ("accuracy_pct", None, "all answers"),
    ("decoded_accuracy_pct", "decoded_pct", "decoded answers"),
    ("backup_accuracy_pct", "backup_pct", "backup answers"),
    ("agreement_pct", None, "all answers"),
    ("decoded_agreement_pct", "decoded_pct", "decoded answers"),
    ("backup_agreement_pct", "backup_pct", "backup answers"),
)


def answered_counts(rows: pd.DataFrame, share: str | None) -> pd.Series:
    """How many measured queries a per-point accuracy is over: all of them, or the decoded/backup share."""
    n = pd.to_numeric(rows.get("n_measured", pd.Series(np.nan, index=rows.index)), errors="coerce")
    if share is None:
        return n
    return n * pd.to_numeric(rows.get(share, pd.Series(np.nan, index=rows.index)), errors="coerce") / 100.0


def with_accuracy_intervals(sweep: pd.DataFrame) -> pd.DataFrame:
    """The sweep table plus `<column>_lo` / `<column>_hi` (Wilson, percent) for every accuracy column present.

    A policy's decoded (backup) accuracy is over its decoded (backup) answers alone, n = n_measured × share.
    """
    out = sweep.copy()
    for column, share, _ in ACCURACY_VIEWS:
        if column not in out.columns or f"{column}_lo" in out.columns:
            continue
        lo, hi = wilson_interval(pd.to_numeric(out[column], errors="coerce"), answered_counts(out, share))
        out[f"{column}_lo"], out[f"{column}_hi"] = lo, hi
    return out


def accuracy_vs_sweep(sweep: pd.DataFrame, axis: str, policies: Sequence[str] | None = None,
                      colors: Mapping[str, str] | None = None, facet_by: Sequence[str] = ()) -> Figure:
    """Accuracy (%) of the answers actually returned, with 95 % Wilson bands, against the sweep axis.

    Left: all answers (against the labels; below it, agreement with the expert's own answer when known).
    Right: decoded and backup answers alone, where any price of not asking the expert is paid; a policy that
    never decoded (or never used a backup) has no line there. One row per facet of the other sweep axes.
    """
    order = _ordered(policies, sweep)
    colors = colors or policy_colors(order)
    frame = with_accuracy_intervals(sweep)
    has = {c: c in frame.columns and pd.to_numeric(frame[c], errors="coerce").notna().any()
           for c, _, _ in ACCURACY_VIEWS}
    rows_spec = [("accuracy_pct", ("decoded_accuracy_pct", "backup_accuracy_pct"), "accuracy vs labels")]
    if has["agreement_pct"]:
        rows_spec.append(("agreement_pct", ("decoded_agreement_pct", "backup_agreement_pct"),
                          "agreement with the expert"))
    groups = facet_groups(frame, facet_by)
    fig, grid = _grid(len(rows_spec) * len(groups), 2, 5.2, 3.5)
    x_all, cats = _x_values(frame, axis)
    for g, (facet, rows_f) in enumerate(groups):
        _, parts = _per_policy(rows_f, axis, order, x_all, cats)
        for r, (whole, subsets, what) in enumerate(rows_spec):
            ax_all, ax_sub = grid[g * len(rows_spec) + r]
            for name, rows, x in parts:
                if has[whole]:
                    _line_with_band(ax_all, x, pd.to_numeric(rows[whole], errors="coerce"), rows[f"{whole}_lo"],
                                    rows[f"{whole}_hi"], colors.get(name), order, name)
                for column in subsets:
                    if not has[column]:
                        continue
                    y = pd.to_numeric(rows[column], errors="coerce")
                    if y.notna().any():
                        kind = column.split("_")[0]
                        _line_with_band(ax_sub, x[y.notna()], y[y.notna()], rows[f"{column}_lo"][y.notna()],
                                        rows[f"{column}_hi"][y.notna()], colors.get(name), order, name)
                        ax_sub.lines[-1].set_label(f"{name} ({kind})")
                        if kind == "backup":
                            ax_sub.lines[-1].set_linestyle(":")
            suffix = f"\n{facet}" if facet else ""
            ax_all.set_title(f"{what.capitalize()}: all answers (band: 95% CI){suffix}", fontsize=10)
            ax_sub.set_title(f"{what.capitalize()}: decoded / backup answers only{suffix}", fontsize=10)
            ax_all.set_ylabel(f"{what} (%)")
            for ax in (ax_all, ax_sub):
                ax.yaxis.get_major_formatter().set_useOffset(False)
                _finish_sweep_axis(ax, axis, cats)
                lo_y, hi_y = ax.get_ylim()
                if hi_y - lo_y < 1.0:  # a 0.01-point wobble should look flat, not like a cliff
                    top = min((lo_y + hi_y) / 2 + 0.5, 100.0)
                    ax.set_ylim(top - 1.0, top)
                elif hi_y > 100:
                    ax.set_ylim(top=100.0)
            if ax_all.get_legend_handles_labels()[0]:
                ax_all.legend(frameon=False, fontsize=8)
            if ax_sub.get_legend_handles_labels()[0]:
                ax_sub.legend(frameon=False, fontsize=8)
            else:
                ax_sub.text(0.5, 0.5, "no decoded or backup answers", ha="center", va="center",
                            transform=ax_sub.transAxes, color="0.4")
    return fig


FRONTIER_X = {
    "accuracy_pct": ("accuracy of answered queries (%)", "correct"),
    "agreement_pct": ("agreement with the expert's own answer (%)", "agrees_with_expert"),
}


def frontier_data(sweep: pd.DataFrame, x: str = "accuracy_pct") -> pd.DataFrame:
    """One row per (point, policy) with what the frontier plots: `x` (percent) with its Wilson interval
    (`x_lo`, `x_hi`) and p99 / p99.9 latency (ms) with their intervals, read from the sweep table (the
    summary's numbers). Rows without the x value or without p99 are dropped; unknown bounds are NaN."""
    frame = with_accuracy_intervals(sweep)
    keep = [c for c in ("point", "policy") if c in frame.columns]
    out = frame[keep].copy()
    out["x"] = pd.to_numeric(frame.get(x, pd.Series(np.nan, index=frame.index)), errors="coerce")
    out["x_lo"] = pd.to_numeric(frame.get(f"{x}_lo", pd.Series(np.nan, index=frame.index)), errors="coerce")
    out["x_hi"] = pd.to_numeric(frame.get(f"{x}_hi", pd.Series(np.nan, index=frame.index)), errors="coerce")
    for key in ("p99_ms", "p999_ms"):
        for suffix in ("", "_lo", "_hi"):
            col = f"{key}{suffix}"
            values = pd.to_numeric(frame.get(col, pd.Series(np.nan, index=frame.index)), errors="coerce")
            out[col] = values.where(values >= 0) if suffix else values  # a latency bound is never below zero
    for c in frame.columns:  # the sweep axes and labels (kind, n_measured, ...) ride along for labels and facets
        if c not in out.columns and not str(c).endswith(("_ms", "_pct", "_lo", "_hi")):
            out[c] = frame[c]
    return out[out["x"].notna() & out["p99_ms"].notna()].reset_index(drop=True)


def frontier(sweep: pd.DataFrame, axis: str | None, policies: Sequence[str] | None = None,
             colors: Mapping[str, str] | None = None, facet_by: Sequence[str] = (),
             x: str = "accuracy_pct") -> Figure:
    """The latency–accuracy frontier: p99 (left) and p99.9 (right) against accuracy of what was answered,
    one marker per policy per sweep point, joined in sweep order and labelled with the axis value.

    Error bars: the summary's latency confidence intervals (vertical; a bound below zero or unknown is not
    drawn) and a 95 % Wilson interval of the accuracy over the measured queries (horizontal). Down and right
    is better. One row of panels per facet.
    `axis` None (a single point) draws one unlabelled marker per policy.
    """
    data = frontier_data(sweep, x)
    order = _ordered(policies, data) if len(data) else list(policies or [])
    colors = colors or policy_colors(order)
    groups = facet_groups(data, facet_by) if len(data) else [("", data)]
    fig, grid = _grid(len(groups), 2, 5.4, 4.4)
    xlabel = FRONTIER_X.get(x, (x.replace("_", " "), None))[0]
    for g, (facet, rows_f) in enumerate(groups):
        for col, (key, title) in enumerate((("p99_ms", "p99"), ("p999_ms", "p99.9"))):
            ax = grid[g, col]
            labels: list[tuple[float, float, str, str | None]] = []
            for name in order:
                rows = rows_f[rows_f["policy"] == name]
                if axis is not None and axis in rows.columns:
                    if rows[axis].duplicated().any():
                        raise ValueError(f"policy {name} has several points at one {axis} value; facet by the "
                                         "other sweep axes")
                    rows = rows.sort_values(axis, kind="stable")
                rows = rows[rows[key].notna()]
                if not len(rows):
                    continue
                xs, ys = rows["x"].to_numpy(float), rows[key].to_numpy(float)
                xerr = np.vstack([xs - rows["x_lo"].to_numpy(float), rows["x_hi"].to_numpy(float) - xs])
                yerr = np.vstack([ys - rows[f"{key}_lo"].to_numpy(float), rows[f"{key}_hi"].to_numpy(float) - ys])
                xerr, yerr = np.nan_to_num(np.clip(xerr, 0, None)), np.nan_to_num(np.clip(yerr, 0, None))
                bars = ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, color=colors.get(name), marker=_marker(order, name),
                                   ms=6, lw=1.0, ls=_dash(order, name), elinewidth=0.8, capsize=2, alpha=0.9,
                                   label=name)
                bars.lines[0].set_gid(f"frontier:{name}")
                for caps in bars.lines[1][:2]:  # the accuracy interval's caps (x first)
                    caps.set_alpha(0.3)
                if bars.lines[2]:
                    bars.lines[2][0].set_alpha(0.3)  # the accuracy interval: wide, so kept in the background
                if axis is not None and axis in rows.columns and len(rows) > 1:
                    labels += [(xv, yv, fmt_value(v) if axis != "point" else f"#{v}", colors.get(name))
                               for xv, yv, v in zip(xs, ys, rows[axis], strict=True)]
            vals = data[key].to_numpy(float) if key in data.columns else np.array([])
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if len(vals) and vals.max() / vals.min() > 20:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.5, 1, 2, 5 ms rather than 10^0
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.xaxis.get_major_formatter().set_useOffset(False)
            lo_x, hi_x = ax.get_xlim()
            if hi_x - lo_x < 0.1:  # identical values without intervals: a column, not a magnified wobble
                mid = (lo_x + hi_x) / 2
                lo_x, hi_x = mid - 0.05, mid + 0.05
            if hi_x > 100.0:  # nothing is more than 100 % accurate
                lo_x, hi_x = lo_x - (hi_x - 100.0), 100.0 + 0.03 * (hi_x - lo_x)
            ax.set_xlim(lo_x, hi_x)
            ax.set_xlabel(f"{xlabel}, right is better")
            ax.set_ylabel(f"{title} latency (ms), lower is better")
            where = f" (labels: {axis_label(axis)})" if axis not in (None, "point") else ""
            ax.set_title(f"{title} vs {'accuracy' if x == 'accuracy_pct' else 'agreement'}{where}"
                         + (f"\n{facet}" if facet else ""), fontsize=10)
            _place_labels(ax, labels)
    handles, labels = grid[0, 0].get_legend_handles_labels()
    if handles:
        grid[0, 0].legend(handles, labels, frameon=False, fontsize=8, loc="upper left")
    return fig


def _place_labels(ax, labels: Sequence[tuple[float, float, str, str | None]], min_px: float = 9.0) -> None:
    """Write each marker's sweep value beside it, skipping a label that would land on one already written
    (policies that coincide at a point share one label)."""
    placed: list[np.ndarray] = []
    for xv, yv, text, colour in labels:
        pos = ax.transData.transform((xv, yv))
        if any(np.abs(pos - q).max() < min_px for q in placed):
            continue
        placed.append(pos)
        ax.annotate(text, (xv, yv), xytext=(5, 2), textcoords="offset points", fontsize=7, color=colour)


def extra_load_vs_sweep(sweep: pd.DataFrame, axis: str, policies: Sequence[str] | None = None,
                        colors: Mapping[str, str] | None = None, facet_by: Sequence[str] = ()) -> Figure:
    """Server time per query relative to uncoded (%): what each policy pays for its tail. Below zero a policy
    spent less than uncoded — cancelling a straggler's task once another copy answered frees its server."""
    return metric_vs_sweep(sweep, axis, "extra_load_vs_uncoded_pct", "extra server load vs uncoded (%)",
                           "Extra server load", policies, colors, zero_line=True, facet_by=facet_by)


def answer_fractions(queries: pd.DataFrame | None, sweep: pd.DataFrame | None) -> pd.DataFrame:
    """Per (point, policy): percent of measured queries answered direct / replica / hedge / decoded / backup
    (columns `<kind>_pct`).

    From the sweep's `*_pct` columns when it has them (the same shares, for every point), otherwise from
    queries.parquet (of which the report reads only the headline point's rows).
    """
    cols = [f"{k}_pct" for k in ANSWER_KINDS]
    if sweep is not None and (have := [c for c in cols if c in sweep.columns]):
        return sweep[["point", "policy", *have]].reset_index(drop=True)
    if queries is not None and "answered_by" in queries.columns:
        q = measured(queries)
        frac = (q.groupby(["point", "policy"], observed=True)["answered_by"].value_counts(normalize=True)
                .unstack(fill_value=0.0))
        frac.columns = [f"{c}_pct" for c in frac.columns]
        frac = frac.reindex(columns=cols, fill_value=0.0).reset_index()
        frac[cols] = frac[cols] * 100
        return frac
    return pd.DataFrame(columns=["point", "policy"])


def answer_mix_vs_sweep(fractions: pd.DataFrame, sweep: pd.DataFrame, axis: str,
                        policies: Sequence[str] | None = None, colors: Mapping[str, str] | None = None,
                        facet_by: Sequence[str] = ()) -> Figure:
    """Share of queries answered by a replica, a hedge, decoding or a generalist backup, per policy, against the
    sweep axis.

    One row of panels per kind of answer, one column per facet (combination of the other axes' values).
    """
    kinds = [k for k in ("decoded", "replica", "hedge", "backup")
             if f"{k}_pct" in fractions.columns and fractions[f"{k}_pct"].fillna(0).gt(0).any()] or ["decoded"]
    coords = [c for c in dict.fromkeys([axis, *facet_by]) if c in sweep.columns and c != "point"]
    frame = fractions.copy()
    by_point = sweep.drop_duplicates("point").set_index("point")
    for c in coords:
        frame[c] = frame["point"].map(by_point[c])
    frame = frame.dropna(subset=[axis]) if axis in frame.columns else frame
    order = _ordered(policies, frame) if len(frame) else list(policies or [])
    colors = colors or policy_colors(order)
    groups = facet_groups(frame, facet_by) if len(frame) else [("", frame)]
    if len(groups) > 1:
        fig, grid = _grid(len(kinds), len(groups), 4.2, 3.4, sharey="row")
    else:
        fig, grid = _grid(1, len(kinds), 3.6, 3.8)
        grid = grid.T  # kinds down the rows, one facet
    x_all, cats = _x_values(frame, axis) if len(frame) else (None, None)
    for col, (facet, rows_f) in enumerate(groups):
        for row, kind in enumerate(kinds):
            ax = grid[row, col]
            column = f"{kind}_pct"
            if column in rows_f.columns and len(rows_f):
                _, parts = _per_policy(rows_f, axis, order, x_all, cats)
                for name, rows, x in parts:
                    if rows[column].fillna(0).gt(0).any():
                        _line_with_band(ax, x, rows[column], None, None, colors.get(name), order, name)
            _finish_sweep_axis(ax, axis, cats)
            ax.set_ylabel(f"answered by {kind} (%)")
            ax.set_title(f"{kind.capitalize()} answers" + (f"\n{facet}" if facet else ""),
                         fontsize=10 if facet else None)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(frameon=False, fontsize=8)
    for ax in grid.flat:  # after every panel has its data: shared rows autoscale over all of them
        ax.set_ylim(bottom=0)
    return fig


def answer_mix_bars(fractions: pd.DataFrame, policies: Sequence[str] | None = None) -> Figure:
    """Single-point runs: one stacked bar per policy showing how its queries were answered (percent)."""
    order = _ordered(policies, fractions) if len(fractions) else []
    fig, (ax,) = _new(7.0, 1.3 + 0.45 * max(len(order), 2))
    left = np.zeros(len(order))
    for kind in ANSWER_KINDS:
        column = f"{kind}_pct"
        if column not in fractions.columns:
            continue
        vals = np.array([float(fractions.loc[fractions["policy"] == p, column].mean()) for p in order])
        vals = np.nan_to_num(vals)
        if not vals.any():
            continue
        ax.barh(order, vals, left=left, color=ANSWER_COLORS[kind], label=kind, edgecolor="white", lw=0.5)
        left += vals
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of measured queries (%)")
    ax.set_title("How queries were answered")
    fig.legend(frameon=False, ncols=4, loc="outside lower center")
    return fig


NDA_COLUMNS = ("nda_pct", "decoded_acc_pct", "expert_acc_pct", "encode_s")


def nda_table(coding: Mapping[str, Mapping] | None, nda_csv: pd.DataFrame | None) -> pd.DataFrame:
    """Long table method, expert, nda_pct (+ decoded_acc_pct, expert_acc_pct, encode_s when known).

    summary.json's coding section wins; nda.csv (which `coinsim code` writes per seed and sample count) is
    averaged per method and expert when the summary has no coding section. Everything in percent.
    """
    rows = []
    for method, c in (coding or {}).items():
        for expert, v in (c.get("nda_pct") or {}).items():
            rows.append({"method": str(method), "expert": str(expert), "nda_pct": v,
                         "decoded_acc_pct": (c.get("decoded_acc_pct") or {}).get(expert),
                         "expert_acc_pct": (c.get("expert_acc_pct") or {}).get(expert),
                         "encode_s": c.get("encode_s")})
    if rows:
        return pd.DataFrame(rows)
    if nda_csv is None or not len(nda_csv):
        return pd.DataFrame(columns=["method", "expert", *NDA_COLUMNS])
    df = nda_csv.copy()
    df["expert"] = (df["name"] if "name" in df.columns else df["expert"]).astype(str)
    df["method"] = df["method"].astype(str)
    if "samples" in df.columns and df["samples"].nunique() > 1:
        df["method"] = df["method"] + " (P=" + df["samples"].astype(str) + ")"
    cols = [c for c in NDA_COLUMNS if c in df.columns]
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.groupby(["method", "expert"], sort=False)[cols].mean().reset_index()


def nda_axis_floor(values: Sequence[float], ceiling: float = 100.0) -> float:
    """Where the NDA axis starts: 0 when the bars differ a lot, else just below the lowest bar, so that 97 vs
    99 is visible (the axis is then marked as zoomed). Always above 0 and below the lowest finite bar."""
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(vals) or vals.min() <= 0:
        return 0.0
    low, high = float(vals.min()), max(float(vals.max()), ceiling)
    if low < 0.5 * high:  # bars of very different heights already show their differences from zero
        return 0.0
    pad = max(0.3 * (high - low), 0.02)
    step = 10.0 ** np.floor(np.log10(pad))
    floor = np.floor((low - pad) / step) * step  # a round number a little below the lowest bar
    return float(round(min(max(floor, 0.0), low - 0.5 * pad), 6))


def nda_bars(table: pd.DataFrame, nda_avg_pct: Mapping[str, float] | None = None) -> Figure:
    """NDA (%) per expert, one bar per coding method, plus the average: 100 % means decoding loses nothing.

    When every bar is close to 100 the y axis starts just below the lowest bar (marked with a break on the
    axis and a note), and every bar carries its value, so a 97 vs 99 difference is visible and readable.
    """
    methods = list(dict.fromkeys(table["method"]))
    experts = list(dict.fromkeys(table["expert"]))
    groups = [*experts, "average"]
    fig, (ax,) = _new(max(6.5, 1.6 + 0.42 * len(groups) * max(len(methods), 1)), 4.4)
    width = 0.8 / max(len(methods), 1)
    colours = _METHOD_COLORS
    heights: dict[str, list[float]] = {}
    for method in methods:
        rows = table[table["method"] == method].set_index("expert")["nda_pct"]
        vals = [float(rows.get(e, np.nan)) for e in experts]
        avg = (nda_avg_pct or {}).get(method)
        vals.append(float(avg) if avg is not None else float(np.nanmean(vals)) if len(vals) else np.nan)
        heights[method] = vals
    all_vals = [v for vals in heights.values() for v in vals]
    floor = nda_axis_floor(all_vals)
    finite_vals = [v for v in all_vals if np.isfinite(v)]
    top = max([100.0, *finite_vals])
    span = top - floor
    digits = 2 if floor > 0 and span < 10 else 1
    for i, method in enumerate(methods):
        xs = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        vals = np.asarray(heights[method])
        # bars start at the axis floor so a zoomed axis shows each bar's height above it, not a clipped stub
        bars = ax.bar(xs, vals - floor, width * 0.92, bottom=floor, label=method, color=colours[i % len(colours)])
        labels = [f"{v:.{digits}f}" if np.isfinite(v) else "" for v in vals]
        ax.bar_label(bars, labels=labels, fontsize=7 if len(methods) * len(groups) <= 24 else 6, padding=2,
                     rotation=90 if len(methods) * len(groups) > 12 else 0)
    ax.axhline(100.0, color="0.3", ls="--", lw=0.9)
    ax.axvline(len(experts) - 0.5, color="0.7", lw=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel("expert")
    ax.set_ylabel("NDA (%): decoded acc. / expert acc.")
    ax.set_title("Normalized decoding accuracy per coding method")
    headroom = 0.18 * span if floor > 0 else 0.2 * top
    ax.set_ylim(floor, top + headroom)
    ax.yaxis.get_major_formatter().set_useOffset(False)
    if floor > 0:  # a zoomed axis must say so: a break mark on the y axis and the starting value in words
        kw = {"transform": ax.transAxes, "color": "0.2", "clip_on": False, "lw": 1.1}
        for dy in (0.0, 0.025):
            ax.plot((-0.018, 0.018), (0.012 + dy, 0.032 + dy), **kw)
        ax.text(0.01, 0.985, f"zoomed: the y axis starts at {floor:g} %, not 0", transform=ax.transAxes, fontsize=8,
                color="0.25", ha="left", va="top", style="italic")
    fig.legend(*ax.get_legend_handles_labels(), frameon=False, ncols=min(len(methods), 6), loc="outside lower center")
    return fig


def time_average_in_system(arrival: np.ndarray, finish: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean number of queries in system over each bin [edges[k], edges[k+1]) (exact, not sampled at edges).

    The integral of N(t) up to x is sum over arrived queries of (min(x, finish) - arrival); prefix sums over
    the sorted arrival and finish times give it for every edge at once.
    """
    a, f = np.sort(arrival), np.sort(finish)
    ca, cf = np.concatenate([[0.0], np.cumsum(a)]), np.concatenate([[0.0], np.cumsum(f)])
    na, nf = np.searchsorted(a, edges, side="right"), np.searchsorted(f, edges, side="right")
    integral = (na * edges - ca[na]) - (nf * edges - cf[nf])
    return np.diff(integral) / np.diff(edges)


def traffic_over_time(queries: pd.DataFrame, point: int | None = None, policies: Sequence[str] | None = None,
                      colors: Mapping[str, str] | None = None, bins: int = 60) -> Figure:
    """Arrival rate per model and queries in system per policy over time: shows hot-model bursts and backlogs."""
    q = queries if point is None or "point" not in queries.columns else queries[queries["point"] == point]
    order = _ordered(policies, q)
    colors = colors or policy_colors(order)
    fig = Figure(figsize=(8.0, 5.2), dpi=110, layout="constrained")
    ax_rate, ax_queue = fig.subplots(2, 1, sharex=True)
    for ax in (ax_rate, ax_queue):
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    first = q[q["policy"] == order[0]] if order else q  # arrivals are common to every policy (same draws)
    t0, t1 = float(q["arrival_ms"].min()), float(q["finish_ms"].max() if "finish_ms" in q else q["arrival_ms"].max())
    edges = np.linspace(t0, max(t1, t0 + 1e-9), bins + 1)
    width_s = (edges[1] - edges[0]) / 1000.0
    names = first["model_name"] if "model_name" in first.columns else first.get("model", pd.Series(0, first.index))
    for i, name in enumerate(pd.unique(names)):  # in order of first arrival, without a string per row
        counts, _ = np.histogram(first.loc[(names == name).to_numpy(), "arrival_ms"], edges)
        ax_rate.step(edges[:-1], counts / width_s, where="post", lw=1.3, color=_MODEL_COLORS[i % len(_MODEL_COLORS)],
                     label=str(name))
    ax_rate.set_ylabel("arrivals (queries/s)")
    ax_rate.set_title("Traffic per model")
    ax_rate.legend(frameon=False, fontsize=8, ncols=4)
    if "finish_ms" in q.columns:
        for name in order:
            rows = q[q["policy"] == name]
            mean_in_sys = time_average_in_system(rows["arrival_ms"].to_numpy(float), rows["finish_ms"].to_numpy(float),
                                                 edges)
            ax_queue.step(edges[:-1], mean_in_sys, where="post", color=colors.get(name), lw=1.3,
                          ls=_dash(order, name), label=name)
        ax_queue.set_ylabel("mean queries in system")
        ax_queue.set_title("Backlog per policy")
        ax_queue.legend(frameon=False, fontsize=8, ncols=4)
    ax_queue.set_xlabel("simulated time (ms)")
    return fig
