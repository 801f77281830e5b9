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

from reports.load import ANSWER_KINDS  # noqa: E402

# Well-known policy kinds get fixed colours so figures from different runs compare at a glance.
# Order matters for name matching: "uncoded" contains "coded", and "coded-hedged" is a coded policy.
_PREFERRED = (("uncoded", "#6b6b6b"), ("cod", "#2ca02c"), ("replic", "#1f77b4"), ("hedg", "#ff7f0e"))
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
ANSWER_COLORS = {"direct": "#c7c7c7", "replica": "#1f77b4", "hedge": "#ff7f0e", "decoded": "#2ca02c"}


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
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes)


def _x_values(sweep: pd.DataFrame, axis: str) -> tuple[pd.Series, list[str] | None]:
    """Numeric sweep values plot as numbers; anything else (e.g. policy names) as evenly spaced categories."""
    col = sweep[axis]
    if pd.api.types.is_numeric_dtype(col):
        return col.astype(float), None
    cats = list(dict.fromkeys(col.astype(str)))
    return col.astype(str).map({c: i for i, c in enumerate(cats)}).astype(float), cats


def _finish_sweep_axis(ax, axis: str, cats: list[str] | None) -> None:
    ax.set_xlabel(axis_label(axis))
    if cats is not None:
        ax.set_xticks(range(len(cats)), cats)


def _ordered(policies: Sequence[str] | None, frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["policy"].astype(str)))
    if policies is None:
        return present
    return [p for p in policies if p in present] + [p for p in present if p not in policies]


def measured(queries: pd.DataFrame, point: int | None = None) -> pd.DataFrame:
    """Rows that count: the chosen sweep point, warm-up discarded (as the simulator's statistics do)."""
    q = queries
    if point is not None and "point" in q.columns:
        q = q[q["point"] == point]
    if "warmup" in q.columns:
        q = q[~q["warmup"].astype(bool)]
    return q


def latency_ccdf(queries: pd.DataFrame, policies: Sequence[str] | None = None,
                 colors: Mapping[str, str] | None = None, point: int | None = None, where: str | None = None) -> Figure:
    """P(latency > x) per policy on a log y axis, so the p99/p99.9 region is as visible as the median."""
    q = measured(queries, point)
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
        keep = surv > 0  # the last point has P=0, which a log axis cannot show
        ax.step(lat[keep], surv[keep], where="post", color=colors.get(name), lw=1.6, ls=_dash(order, name),
                label=name)
    for level, text in ((1e-2, "p99"), (1e-3, "p99.9")):
        if level >= 1.0 / n_max:
            ax.axhline(level, color="0.4", ls=":", lw=0.9)
            ax.annotate(text, (0.0, level), xycoords=("axes fraction", "data"), xytext=(3, 2),
                        textcoords="offset points", ha="left", va="bottom", fontsize=8, color="0.3")
    ax.set_yscale("log")
    ax.set_ylim(max(0.5 / n_max, 1e-6), 1.0)
    if len(lat_all) and lat_all.min() > 0 and np.percentile(lat_all, 99.9) / np.median(lat_all) > 30:
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


def _per_policy(sweep: pd.DataFrame, axis: str, policies: Sequence[str] | None):
    """(category labels or None, [(policy, its rows, their x values), ...])."""
    x_all, cats = _x_values(sweep, axis)
    parts = []
    for name in _ordered(policies, sweep):
        mask = (sweep["policy"] == name).to_numpy()
        parts.append((name, sweep[mask], x_all[mask]))
    return cats, parts


def tail_vs_sweep(sweep: pd.DataFrame, axis: str, policies: Sequence[str] | None = None,
                  colors: Mapping[str, str] | None = None) -> Figure:
    """p99 and p99.9 against the sweep axis, with CI bands: where does each policy's tail blow up?"""
    order = _ordered(policies, sweep)
    colors = colors or policy_colors(order)
    fig, axes = _new(10.0, 4.0, ncols=2)
    cats, parts = _per_policy(sweep, axis, order)
    for ax, key, title in zip(axes, ("p99_ms", "p999_ms"), ("p99", "p99.9"), strict=True):
        if key not in sweep.columns:
            ax.text(0.5, 0.5, f"no {title} column", ha="center", transform=ax.transAxes)
            continue
        for name, rows, x in parts:
            lo, hi = rows.get(f"{key}_lo"), rows.get(f"{key}_hi")
            _line_with_band(ax, x, rows[key], lo, hi, colors.get(name), order, name)
        vals = sweep[key].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if len(vals) and vals.max() / vals.min() > 20:
            ax.set_yscale("log")
        _finish_sweep_axis(ax, axis, cats)
        ax.set_ylabel(f"{title} latency (ms)")
        ax.set_title(f"{title} latency (band: CI)")
    axes[0].legend(frameon=False)
    return fig


def metric_vs_sweep(sweep: pd.DataFrame, axis: str, column: str, ylabel: str, title: str,
                    policies: Sequence[str] | None = None, colors: Mapping[str, str] | None = None,
                    percent: bool = False, zero_line: bool = False, min_span: float = 0.0) -> Figure:
    """One metric per policy against the sweep axis (accuracy, extra load, ...).

    `min_span` (in plotted units) stops the y axis from zooming into noise: a 0.01-point accuracy wobble
    should look flat, not like a cliff.
    """
    order = _ordered(policies, sweep)
    colors = colors or policy_colors(order)
    fig, (ax,) = _new()
    scale = 100.0 if percent else 1.0
    cats, parts = _per_policy(sweep, axis, order)
    for name, rows, x in parts:
        if column not in rows.columns:
            continue
        y = pd.to_numeric(rows[column], errors="coerce") * scale
        lo = rows.get(f"{column}_lo")
        hi = rows.get(f"{column}_hi")
        _line_with_band(ax, x, y, None if lo is None else lo * scale, None if hi is None else hi * scale,
                        colors.get(name), order, name)
    if zero_line:
        ax.axhline(0, color="0.4", lw=0.8)
    lo_y, hi_y = ax.get_ylim()
    if min_span and hi_y - lo_y < min_span:
        mid = (lo_y + hi_y) / 2
        top = min(mid + min_span / 2, 100.0) if percent else mid + min_span / 2
        ax.set_ylim(top - min_span, top)
    ax.yaxis.get_major_formatter().set_useOffset(False)
    _finish_sweep_axis(ax, axis, cats)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def accuracy_vs_sweep(sweep: pd.DataFrame, axis: str, policies: Sequence[str] | None = None,
                      colors: Mapping[str, str] | None = None) -> Figure:
    """Accuracy of the answers actually returned: decoding trades some accuracy for latency."""
    return metric_vs_sweep(sweep, axis, "accuracy", "accuracy of answered queries (%)",
                           "Accuracy of what was answered", policies, colors, percent=True, min_span=2.0)


def extra_load_vs_sweep(sweep: pd.DataFrame, axis: str, policies: Sequence[str] | None = None,
                        colors: Mapping[str, str] | None = None) -> Figure:
    """Server time per query relative to uncoded: what each policy pays for its tail."""
    return metric_vs_sweep(sweep, axis, "extra_load_vs_uncoded", "extra server load vs uncoded (%)",
                           "Extra server load", policies, colors, percent=True, zero_line=True)


def answer_fractions(queries: pd.DataFrame | None, sweep: pd.DataFrame | None) -> pd.DataFrame:
    """Per (point, policy): fraction of measured queries answered direct / replica / hedge / decoded.

    From queries.parquet when present (all four kinds); otherwise only the decoded fraction from the sweep.
    """
    if queries is not None and "answered_by" in queries.columns:
        q = measured(queries)
        frac = (q.groupby(["point", "policy"], observed=True)["answered_by"].value_counts(normalize=True)
                .unstack(fill_value=0.0))
        frac.columns = [str(c) for c in frac.columns]
        frac = frac.reindex(columns=list(ANSWER_KINDS), fill_value=0.0).reset_index()
        return frac
    if sweep is not None and "decoded_fraction" in sweep.columns:
        return sweep[["point", "policy", "decoded_fraction"]].rename(columns={"decoded_fraction": "decoded"})
    return pd.DataFrame(columns=["point", "policy"])


def answer_mix_vs_sweep(fractions: pd.DataFrame, sweep: pd.DataFrame, axis: str,
                        policies: Sequence[str] | None = None, colors: Mapping[str, str] | None = None) -> Figure:
    """Share of queries answered by a replica, a hedge or decoding, per policy, against the sweep axis."""
    kinds = [k for k in ("decoded", "replica", "hedge")
             if k in fractions.columns and fractions[k].fillna(0).gt(0).any()] or ["decoded"]
    axis_of_point = sweep.drop_duplicates("point").set_index("point")[axis]
    frame = fractions.copy()
    frame[axis] = frame["point"].map(axis_of_point)
    frame = frame.dropna(subset=[axis])
    order = _ordered(policies, frame) if len(frame) else list(policies or [])
    colors = colors or policy_colors(order)
    fig, axes = _new(3.6 * len(kinds) + 0.6, 3.8, ncols=len(kinds))
    for ax, kind in zip(axes, kinds, strict=True):
        cats = None
        if kind in frame.columns and len(frame):
            cats, parts = _per_policy(frame, axis, order)
            for name, rows, x in parts:
                if rows[kind].fillna(0).gt(0).any():
                    _line_with_band(ax, x, rows[kind] * 100, None, None, colors.get(name), order, name)
        _finish_sweep_axis(ax, axis, cats)
        ax.set_ylabel(f"answered by {kind} (%)")
        ax.set_title(f"{kind.capitalize()} answers")
        ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=8)
    return fig


def answer_mix_bars(fractions: pd.DataFrame, policies: Sequence[str] | None = None) -> Figure:
    """Single-point runs: one stacked bar per policy showing how its queries were answered."""
    order = _ordered(policies, fractions) if len(fractions) else []
    fig, (ax,) = _new(7.0, 1.3 + 0.45 * max(len(order), 2))
    left = np.zeros(len(order))
    for kind in ANSWER_KINDS:
        if kind not in fractions.columns:
            continue
        vals = np.array([float(fractions.loc[fractions["policy"] == p, kind].mean()) for p in order]) * 100
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


def nda_table(coding: Mapping[str, Mapping] | None, nda_csv: pd.DataFrame | None) -> pd.DataFrame:
    """Long table method, expert, nda (+ decoded_acc, expert_acc, encode_seconds when known).

    summary.json's coding section wins; nda.csv (which `coinsim code` writes per seed and sample count) is
    averaged per method and expert when the summary has no coding section.
    """
    rows = []
    for method, c in (coding or {}).items():
        for expert, v in (c.get("nda") or {}).items():
            rows.append({"method": str(method), "expert": str(expert), "nda": v,
                         "decoded_acc": (c.get("decoded_acc") or {}).get(expert),
                         "expert_acc": (c.get("expert_acc") or {}).get(expert),
                         "encode_seconds": c.get("encode_seconds")})
    if rows:
        return pd.DataFrame(rows)
    if nda_csv is None or not len(nda_csv):
        return pd.DataFrame(columns=["method", "expert", "nda", "decoded_acc", "expert_acc", "encode_seconds"])
    df = nda_csv.copy()
    df["expert"] = (df["name"] if "name" in df.columns else df["expert"]).astype(str)
    df["method"] = df["method"].astype(str)
    if "samples" in df.columns and df["samples"].nunique() > 1:
        df["method"] = df["method"] + " (P=" + df["samples"].astype(str) + ")"
    cols = [c for c in ("nda", "decoded_acc", "expert_acc", "encode_seconds") if c in df.columns]
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.groupby(["method", "expert"], sort=False)[cols].mean().reset_index()


def nda_bars(table: pd.DataFrame, nda_avg: Mapping[str, float] | None = None) -> Figure:
    """NDA per expert, one bar per coding method, plus the average: 1.0 means decoding loses nothing."""
    methods = list(dict.fromkeys(table["method"]))
    experts = list(dict.fromkeys(table["expert"]))
    groups = [*experts, "average"]
    fig, (ax,) = _new(max(6.0, 1.2 + 0.35 * len(groups) * max(len(methods), 1)), 4.0)
    width = 0.8 / max(len(methods), 1)
    colours = _METHOD_COLORS
    for i, method in enumerate(methods):
        rows = table[table["method"] == method].set_index("expert")["nda"]
        vals = [float(rows.get(e, np.nan)) for e in experts]
        avg = (nda_avg or {}).get(method)
        vals.append(float(avg) if avg is not None else float(np.nanmean(vals)) if len(vals) else np.nan)
        xs = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        bars = ax.bar(xs, vals, width * 0.92, label=method, color=colours[i % len(colours)])
        if len(methods) * len(groups) <= 24:
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.axhline(1.0, color="0.3", ls="--", lw=0.9)
    ax.axvline(len(experts) - 0.5, color="0.7", lw=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel("expert")
    ax.set_ylabel("NDA (decoded acc. / expert acc.)")
    ax.set_title("Normalized decoding accuracy per coding method")
    top = np.nanmax(pd.to_numeric(table["nda"], errors="coerce")) if len(table) else 1.0
    ax.set_ylim(0, max(1.25, float(top) * 1.2 if np.isfinite(top) else 1.25))
    ax.legend(frameon=False, ncols=min(len(methods), 5), loc="upper center")
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
    names = first["model_name"].astype(str) if "model_name" in first.columns else first.get("model", 0).astype(str)
    for i, name in enumerate(dict.fromkeys(names)):
        counts, _ = np.histogram(first.loc[names == name, "arrival_ms"], edges)
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
