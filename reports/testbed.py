"""The testbed report: measured vs simulated latency, per point and policy, from a `coinsim testbed` folder.

Reads testbed.parquet (measured, per query), simulated.parquet (the simulator on the same draws, in each
variant), fidelity.csv, ranking.csv (when there) and summary.json; writes figures/testbed_cdf_*.png and
report.html (a jinja2 template with autoescaping; figures inline as base64, no scripts, no external URLs).
The first screen is the headline variant ('predicted' when simulated, else the in-sample 'model'): its verdict
counts and ranking agreement. Folders written before measured intervals (fidelity.csv with `measured_ms`, no
`measured_pooled_ms` / verdict) still render, without verdicts or ranking.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, Undefined, select_autoescape
from matplotlib.figure import Figure

import atomic
from reports.html import CSS
from reports.load import ReportError
from reports.render import png_bytes
from resultschema import COMPARE_KIND, COMPARED_PREFIX, OTHER_RUN, SUMMARY

SERVICE_STYLE: dict[str, tuple[str, Any]] = {
    "isolated": ("sim: isolated profile", "--"), "in_situ": ("sim: in-situ service", ":"),
    "in_situ+network": ("sim: in-situ + network", "-."), "model": ("sim: full model (in-sample)", (0, (5, 1, 1, 1))),
    "predicted": ("sim: predicted from calibration", "-")}
IN_SAMPLE = ("in_situ", "in_situ+network", "model")
VERDICTS = ("within the limit", "inside the measured interval", "off")
MARK = {"within the limit": ("✓", "ok"), "inside the measured interval": ("~", "meh"), "off": ("✗", "bad")}
# fidelity.csv columns that are values, not sweep coordinates (folders written before and after the intervals)
VALUE_COLUMNS = frozenset({
    "point", "service", "policy", "metric", "simulated_ms", "measured_ms", "measured_pooled_ms", "measured_lo_ms",
    "measured_hi_ms", "half_width_pct", "n_measured", "measured_median_of_repeats_ms", "rel_error_pct", "limit_pct",
    "verdict", "repeat_spread_pct", "repeat_min_ms", "repeat_max_ms", "repeats", "ks_stat", "ks_p"})

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>coinsim testbed — {{ s.scenario }}</title>
<style>{{ css }}
.ok { color: #1a7f37; } .meh { color: #9a6700; } .bad { color: #b42318; font-weight: 600; }
</style></head><body><main>
<h1>How close is the simulator to a real serving run?</h1>
<p class="meta">scenario <b>{{ s.scenario }}</b> · seed {{ s.seed }} · {{ s.repeats }} repeat(s) ·
straggle mode {{ s.straggle }} · device {{ s.device }} · {{ s.cpu_count }} CPU core(s) · load average at the end
{{ load }}</p>
<div class="takeaway">
{% if head.service %}<p>Headline variant: <b>{{ head.service }}</b> ({{ head.label }}).
{% if head.in_sample %}It is <b>in-sample</b>: its parameters come from the very run it is compared with, so its
agreement is a diagnostic of the model's structure, not a prediction.{% else %}It is simulated from the per-machine
calibration and the networks' profiles measured before serving (isolated, and served under rehearsal traffic
where the run has a served profile) only: nothing from this run goes into it.{% endif %}</p>
{% else %}<p>No headline variant (neither <i>predicted</i> nor <i>model</i> was simulated).</p>{% endif %}
{% if head.counts %}<div class="tablewrap"><table><thead><tr><th>metric</th><th>limit</th>
{% for v in verdicts %}<th>{{ v }}</th>{% endfor %}</tr></thead><tbody>
{% for row in head.counts %}<tr><td>{{ row.metric }}</td><td>{{ row.limit }}</td>
{% for n in row.counts %}<td>{{ n }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table></div>
<p class="note">Cells (point × policy) by verdict: ✓ within the limit (|relative error| ≤ the metric's limit);
~ inside the measured interval (outside the limit, but the simulated value lies inside the measured 95 % interval
and that interval's half width is at most {{ max_half_width }} % of the measured value); ✗ off.</p>
{% elif head.service %}<p class="note">This folder was written before measured intervals: no verdicts; errors are
against the median over repeats.</p>{% endif %}
{% if head.ranking %}<p>Ranking at {{ head.ranking.metric }}: the headline variant orders
<b>{{ head.ranking.agree }} of {{ head.ranking.distinguishable }}</b> policy pairs the testbed tells apart
(non-overlapping measured intervals) the way the testbed does.</p>
{% if head.ranking.disagree %}<ul>{% for d in head.ranking.disagree %}<li>point {{ d.point }}: {{ d.text }}</li>
{% endfor %}</ul>{% endif %}{% endif %}
{% if comparisons %}<p>Against the machine itself (<code>coinsim testbed --compare</code>): another served run of
the same points, its measured latencies judged as the headline variant is — what a model that reproduced the machine
exactly, but at another time, would score. Cells not off:</p>
<div class="tablewrap"><table><thead><tr><th>judged against this run</th>
{% for m in comparisons[0].metrics %}<th>{{ m }}</th>{% endfor %}<th>ranking</th></tr></thead><tbody>
{% if head.not_off %}<tr><td>{{ head.service }} (this run's headline)</td>{% for m in comparisons[0].metrics %}
<td>{{ head.not_off.get(m, "—") }}</td>{% endfor %}<td>{% if head.ranking %}{{ head.ranking.agree }} of
{{ head.ranking.distinguishable }}{% else %}—{% endif %}</td></tr>{% endif %}
{% for c in comparisons %}<tr><td>run {{ c.other }} (its arrival rate {{ c.rate }} this run's)</td>
{% for m in c.metrics %}<td>{{ c.not_off[m] }} of {{ c.cells }}</td>{% endfor %}<td>{% if c.ranking %}
{{ c.ranking.agree }} of {{ c.ranking.distinguishable }}{% else %}—{% endif %}</td></tr>{% endfor %}
</tbody></table></div>{% endif %}
</div>
<p class="lead">Every point was served for real: one OS process per server doing real forward passes, a frontend
replaying the simulator's own arrivals and straggler draws in wall-clock time over ZeroMQ. The simulator then ran
the same draws under several variants: with the latency profile timed in isolation (what <code>coinsim run
--latency-model compute</code> uses);{% if "predicted" in services %} from a per-machine calibration and the networks'
profiles measured before serving only (<i>predicted</i>, the headline);{% endif %} and, as <b>in-sample
diagnostics</b> that take their parameters from this very run, with the service times the servers measured while
serving (<i>in_situ</i>); with those plus the measured dispatcher → server and server → dispatcher delays and cancels
that let a forward pass finish, as the servers do (<i>in_situ+network</i>); and the full model (<i>model</i>):
uncontended in-situ service (passes during which no other server computed), the network model, and the servers sharing
the machine's cores less the frontend's measured share (processor sharing when more servers are busy than there are
cores).
{% if pooled %}Relative error = (simulated − measured) / measured, measured = the metric of all repeats' queries
pooled, with its 95 % bootstrap interval (repeats resampled, then queries within each); spread = (max − min) /
median of the repeats' own values.{% else %}Relative error = (simulated − measured) / measured, measured = median
over repeats; spread = (max − min) / median of the repeats.{% endif %}</p>
<div class="takeaway">Worst |relative error| over all points and policies —
{% for service, worst in s.worst_abs_rel_error_pct.items() %}<b>{{ service }}</b>{{ " (in-sample)" if service in
in_sample }}:
{% for m, v in worst.items() %}{{ m }} {{ v|num(1) }} %{{ ", " if not loop.last }}{% endfor %}
{{ "; " if not loop.last }}{% endfor %}</div>
<h2>Service times: isolated profile vs in situ</h2>
<div class="tablewrap"><table><thead><tr><th>network</th><th>isolated mean ms</th><th>in-situ mean ms</th>
<th>shift</th><th>in situ, no other server computing, mean ms</th><th>in-situ cycle (server taken per task) mean ms</th>
</tr></thead><tbody>
{% for name, v in s.service_ms.items() %}<tr><td>{{ name }}</td><td>{{ v.isolated_mean_ms|num(3) }}</td>
<td>{{ v.in_situ_mean_ms|num(3) }}</td>
<td>{% if v.in_situ_mean_ms is not none -%}
{{ "%+.1f"|format(100 * (v.in_situ_mean_ms / v.isolated_mean_ms - 1)) }} %{% else %}—{% endif %}</td>
<td>{{ v.in_situ_alone_mean_ms|num(3) }}</td><td>{{ v.in_situ_cycle_mean_ms|num(3) }}</td></tr>
{% endfor %}
</tbody></table></div>
<h2>Dispatch and transport overheads (measured)</h2>
<div class="tablewrap"><table><thead><tr><th>point</th><th>dispatch lateness median ms</th><th>p99 ms</th>
<th>transport median ms</th><th>p99 ms</th><th>frontend CPU, cores</th><th>cores left to servers</th>
<th>median compute ms with 0 / 1 / 2 other servers computing</th><th>other processes, cores: median / max</th>
</tr></thead><tbody>
{% for p, o in s.overheads.items() %}<tr><td>{{ p }}</td><td>{{ o.dispatch_lateness_ms_median|num(3) }}</td>
<td>{{ o.dispatch_lateness_ms_p99|num(3) }}</td><td>{{ o.transport_ms_median|num(3) }}</td>
<td>{{ o.transport_ms_p99|num(3) }}</td><td>{{ o.frontend_cores_median|num(2) }}</td>
<td>{{ o.shared_cores|num(2) }}</td>
<td>{% for k, v in o.compute_ms_by_overlap.items() %}{{ v|num(3) }}{{ " / " if not loop.last }}{% endfor %}
</td><td>{{ o.other_cores_median|num(2) }} / {{ o.other_cores_max|num(2) }}</td></tr>{% endfor %}
</tbody></table></div>
{% if pace %}<h2>Machine pace during the runs</h2>
<figure><img alt="the machine's pace in each served run, in serving order" src="data:image/png;base64,{{ pace.png }}">
<figcaption>Each served run (point, policy, repeat) at the time it started: the median of its lone passes (no other
server computing at any moment of them) against each network's median over all runs, in %. Measured from the
records, a diagnostic of the machine, not of the simulator: {{ pace.slow }} of {{ pace.runs }} runs were more than
{{ pace.limit }} % slower, and a run served while the machine was slow is slow in every latency, whatever the
policy (pace.csv).</figcaption></figure>{% endif %}
{% for block in points %}
<h2>Point {{ block.point }}: {{ block.label }}</h2>
<figure><img alt="latency CDFs, measured vs simulated, {{ block.label }}" src="data:image/png;base64,{{ block.png }}">
<figcaption>Latency CDF per policy: each measured repeat (thin black) and the simulator variants
{%- if head.service %} (the headline, {{ head.service }}, a thick line){% endif %}.</figcaption></figure>
{% if block.head_rows %}<h3>{{ head.service }}{{ " (in-sample)" if head.in_sample }} vs measured</h3>
<div class="tablewrap"><table><thead><tr><th>policy</th>
{% for m in metrics %}<th>{{ m }}: measured ms {{ "[95 % interval]" if pooled }} · simulated ms · error</th>
{% endfor %}<th>KS D (p)</th><th>accuracy % (testbed / sim join)</th></tr></thead><tbody>
{% for row in block.head_rows %}<tr><td>{{ row.policy }}</td>
{% for c in row.cells %}<td{% if c.cls %} class="{{ c.cls }}"{% endif %}>{{ c.text }}</td>{% endfor %}
<td>{{ row.ks }}</td><td>{{ row.accuracy }}</td></tr>
{% endfor %}</tbody></table></div>{% endif %}
{% if block.other_rows %}<h3>Other variants{{ " (in-sample ones are diagnostics)" }}</h3>
<div class="tablewrap"><table><thead><tr><th>policy</th><th>variant</th>
{% for m in metrics %}<th>{{ m }}: simulated ms (error{{ ", spread of repeats" if not pooled }})</th>{% endfor %}
<th>KS D (p)</th></tr></thead><tbody>
{% for row in block.other_rows %}<tr><td>{{ row.policy }}</td><td>{{ row.service }}</td>
{% for c in row.cells %}<td{% if c.cls %} class="{{ c.cls }}"{% endif %}>{{ c.text }}</td>{% endfor %}
<td>{{ row.ks }}</td></tr>
{% endfor %}</tbody></table></div>{% endif %}
{% endfor %}
</main></body></html>
"""


def headline_service(services: list[str]) -> str | None:
    """'predicted' when it was simulated, else 'model' (the rule scenarios.testbed_run writes to summary.json)."""
    return next((s for s in ("predicted", "model") if s in services), None)


def _normalised(fidelity: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """fidelity.csv in the current layout; older folders (no intervals) get `measured_pooled_ms` = their
    `measured_ms` (median over repeats) and empty interval and verdict columns. Returns (frame, has intervals)."""
    frame = fidelity.copy()
    pooled = "measured_pooled_ms" in frame
    if not pooled:
        frame["measured_pooled_ms"] = frame["measured_ms"]
        for column in ("measured_lo_ms", "measured_hi_ms", "half_width_pct"):
            frame[column] = np.nan
        frame["verdict"] = None
    frame["policy"] = frame["policy"].astype(str)
    return frame, pooled


def _marked(error: float, verdict: Any) -> tuple[str, str]:
    mark, cls = MARK.get(verdict, ("", "")) if isinstance(verdict, str) else ("", "")
    return f"{error:+.1f} % {mark}".rstrip(), cls


def _number(value: Any, digits: int = 3) -> str:
    """A measured figure with `digits` decimals; a dash where the run had none (e.g. no pass ran alone)."""
    if value is None or isinstance(value, Undefined) or (isinstance(value, float) and not np.isfinite(value)):
        return "—"  # also a folder written before the figure was recorded
    return f"{float(value):.{digits}f}"


def _ranking(path: Path, summary: dict[str, Any], head: str | None) -> dict[str, Any] | None:
    """The headline variant's ranking agreement: from ranking.csv (with the disagreeing pairs), else summary."""
    file = path / "ranking.csv"
    if head is None:
        return None
    if file.is_file():
        try:
            table = pd.read_csv(file)
        except (OSError, ValueError):
            table = pd.DataFrame()
        mine = table[table["service"] == head] if "service" in table else table.iloc[0:0]
        if len(mine):
            disagree = [{"point": r["point"], "text": text} for r in mine.to_dict("records")
                        if isinstance(r["disagreeing"], str) for text in r["disagreeing"].split("; ") if text]
            return {"metric": mine["metric"].iloc[0], "agree": int(mine["n_agree"].sum()),
                    "distinguishable": int(mine["n_pairs_distinguishable"].sum()), "disagree": disagree}
    given = summary.get("ranking", {}).get(head)
    return {**given, "disagree": []} if given else None


def _cdf_figure(measured: pd.DataFrame, simulated: pd.DataFrame, policies: list[str], head: str | None) -> Figure:
    fig = Figure(figsize=(3.3 * len(policies), 3.2), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(policies), sharey=True, squeeze=False)[0]
    for ax, policy in zip(axes, policies, strict=True):
        real = measured[(measured["policy"] == policy) & ~measured["warmup"]]
        for k, (_, g) in enumerate(real.groupby("repeat")):
            lat = np.sort(g["latency_ms"].to_numpy())
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), color="black", lw=0.8, alpha=0.6,
                    label="measured (each repeat)" if k == 0 else None)
        for service, (label, style) in SERVICE_STYLE.items():
            sim = simulated[(simulated["policy"] == policy) & (simulated["service"] == service) & ~simulated["warmup"]]
            if len(sim):
                lat = np.sort(sim["latency_ms"].to_numpy())
                ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), ls=style, lw=2.2 if service == head else 1.2,
                        label=label)
        ax.set_xscale("log")
        ax.set_title(policy, fontsize=10)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of queries ≤ latency")
    axes[0].legend(fontsize=7, loc="lower right")
    return fig


def _pace_figure(pace: pd.DataFrame, limit_pct: float) -> Figure:
    fig = Figure(figsize=(7.0, 2.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    for policy, g in pace.groupby("policy", sort=False):
        ax.plot(g["started_s"] / 60.0, g["pace_pct"], "o", ms=4, label=str(policy))
    ax.axhline(0.0, color="black", lw=0.8)
    ax.axhline(limit_pct, color="#b42318", lw=0.8, ls="--", label=f"+{limit_pct:g} %")
    ax.set_xlabel("run started (minutes into the testbed run)")
    ax.set_ylabel("lone passes vs usual (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=3)
    return fig


def _pace(path: Path, summary: dict[str, Any], fig_dir: Path) -> dict[str, Any] | None:
    """The pace figure and its numbers, when the folder has pace.csv (folders written before it have none)."""
    if not (path / "pace.csv").is_file():
        return None
    pace = pd.read_csv(path / "pace.csv")
    if pace["pace_pct"].notna().sum() == 0:
        return None
    limit = float((summary.get("machine_pace") or {}).get("slow_pct", 10.0))
    png = png_bytes(_pace_figure(pace, limit))
    atomic.write_bytes(fig_dir / "testbed_pace.png", png)
    return {"png": base64.b64encode(png).decode("ascii"), "runs": int(pace["pace_pct"].notna().sum()),
            "slow": int((pace["pace_pct"] > limit).sum()), "limit": f"{limit:g}"}


def _comparisons(path: Path) -> list[dict[str, Any]]:
    """Other served runs judged against this one (`coinsim testbed --compare`, its compared-*/ folders): per
    comparison, the other run's folder name, its arrival rate against this run's, cells not off per metric and its
    p99 ranking. Folders that cannot be read, or are not comparisons, are left out."""
    out = []
    for folder in sorted(path.glob(COMPARED_PREFIX + "*")):
        try:
            summary = json.loads((folder / SUMMARY).read_text())
        except (OSError, ValueError):
            continue
        verdicts = (summary.get("fidelity_summary") or {}).get(OTHER_RUN, {}).get("verdicts") \
            if isinstance(summary, dict) and summary.get("kind") == COMPARE_KIND else None
        if not verdicts:
            continue
        diffs = [float(p["rate_diff_pct"]) for p in summary.get("points", []) if p.get("rate_diff_pct") is not None]
        rate = "—" if not diffs else (f"{diffs[0]:+.1f} % against" if max(diffs) - min(diffs) < 0.05
                                      else f"{min(diffs):+.1f} to {max(diffs):+.1f} % against")
        out.append({"other": Path(str(summary.get("other", ""))).name, "rate": rate, "metrics": list(verdicts),
                    "not_off": {m: v[VERDICTS[0]] + v[VERDICTS[1]] for m, v in verdicts.items()},
                    "cells": sum(next(iter(verdicts.values())).values()),
                    "ranking": (summary.get("ranking") or {}).get(OTHER_RUN)})
    return out


def _headline_counts(fidelity: pd.DataFrame, head: str | None, metrics: list[str]) -> list[dict[str, Any]]:
    mine = fidelity[(fidelity["service"] == head) & fidelity["verdict"].notna()]
    rows = []
    for m in metrics:
        h = mine[mine["metric"] == m]
        if len(h):
            limit = h["limit_pct"].iloc[0] if "limit_pct" in h else np.nan
            rows.append({"metric": m, "limit": f"{limit:g} %" if np.isfinite(limit) else "—",
                         "counts": [int((h["verdict"] == v).sum()) for v in VERDICTS]})
    return rows


def render_testbed(result_dir: Path | str) -> Path:
    """Write figures/testbed_cdf_<point>.png and report.html into a testbed result folder; return the HTML path."""
    path = Path(result_dir)
    if (why := incomplete(path)) is not None:
        raise ReportError(f"{path}: a testbed run with measurements only ({why}); `coinsim testbed --resimulate "
                          f"{path}` simulates it again")
    try:
        summary = json.loads((path / SUMMARY).read_text())
        measured = pd.read_parquet(path / "testbed.parquet")
        simulated = pd.read_parquet(path / "simulated.parquet")
        fidelity, pooled = _normalised(pd.read_csv(path / "fidelity.csv"))
    except (OSError, ValueError, KeyError) as error:
        raise ReportError(f"{path}: not a readable testbed result folder ({error})") from None
    for frame in (measured, simulated):
        frame["policy"] = frame["policy"].astype(str)
    policies = list(dict.fromkeys(fidelity["policy"]))
    metrics = list(dict.fromkeys(fidelity["metric"]))
    services = [str(s) for s in dict.fromkeys(fidelity["service"])]
    head = summary.get("headline_service") or headline_service(services)
    if head not in services:
        head = headline_service(services)
    coord_cols = [c for c in fidelity.columns if c not in VALUE_COLUMNS]
    fig_dir = path / "figures"
    fig_dir.mkdir(exist_ok=True)
    accuracy = summary.get("accuracy", {})
    blocks = []
    for point, g in fidelity.groupby("point", sort=True):
        label = ", ".join(f"{c} = {g[c].iloc[0]}" for c in coord_cols) or "single point"
        png = png_bytes(_cdf_figure(measured[measured["point"] == point], simulated[simulated["point"] == point],
                                    policies, head))
        atomic.write_bytes(fig_dir / f"testbed_cdf_{point}.png", png)
        head_rows, other_rows = [], []
        for (policy, service), h in g.groupby(["policy", "service"], sort=False):
            by = h.set_index("metric")
            ks = f"{h['ks_stat'].iloc[0]:.3f} ({h['ks_p'].iloc[0]:.2g})"
            errors = [_marked(by.at[m, "rel_error_pct"], by.at[m, "verdict"]) for m in metrics]
            if service == head:
                cells = []
                for m, (error, cls) in zip(metrics, errors, strict=True):
                    lo, hi = by.at[m, "measured_lo_ms"], by.at[m, "measured_hi_ms"]
                    interval = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
                    spread = "" if pooled else f", ±{by.at[m, 'repeat_spread_pct']:.0f} % spread"
                    cells.append({"text": f"{by.at[m, 'measured_pooled_ms']:.2f}{interval} · "
                                          f"{by.at[m, 'simulated_ms']:.2f} · {error}{spread}", "cls": cls})
                acc = accuracy.get(str(point), {}).get(policy, {})
                head_rows.append({"policy": policy, "cells": cells, "ks": ks,
                                  "accuracy": (f"{acc['accuracy_pct']:.2f} / {acc['accuracy_sim_join_pct']:.2f}"
                                               if acc else "—")})
            else:
                cells = [{"text": f"{by.at[m, 'simulated_ms']:.2f} ({error}"
                                  + ("" if pooled else f", ±{by.at[m, 'repeat_spread_pct']:.0f} %") + ")",
                          "cls": cls} for m, (error, cls) in zip(metrics, errors, strict=True)]
                name = f"{service} (in-sample)" if service in IN_SAMPLE else service
                other_rows.append({"policy": policy, "service": name, "cells": cells, "ks": ks})
        blocks.append({"point": point, "label": label, "png": base64.b64encode(png).decode("ascii"),
                       "head_rows": head_rows, "other_rows": other_rows})
    headline = {"service": head, "label": SERVICE_STYLE.get(head, (head, "-"))[0] if head else None,
                "in_sample": head in IN_SAMPLE, "counts": _headline_counts(fidelity, head, metrics),
                "ranking": _ranking(path, summary, head)}
    headline["not_off"] = {row["metric"]: f"{row['counts'][0] + row['counts'][1]} of {sum(row['counts'])}"
                           for row in headline["counts"]}
    pace = _pace(path, summary, fig_dir)
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["num"] = _number
    load = summary.get("load_average")
    html = env.from_string(TEMPLATE).render(
        s={"worst_abs_rel_error_pct": {}, **summary}, css=CSS, points=blocks, metrics=metrics, head=headline,
        verdicts=VERDICTS, services=services, in_sample=IN_SAMPLE, pooled=pooled, pace=pace,
        comparisons=_comparisons(path),
        max_half_width=f"{summary.get('max_half_width_pct', 20.0):g}",
        load=", ".join(f"{v:.2f}" for v in load) if load else "n/a")
    out = path / "report.html"
    atomic.write_bytes(out, html.encode("utf-8"))
    return out


def is_testbed_folder(path: Path | str) -> bool:
    """A folder written by `coinsim testbed` (it has testbed.parquet, and fidelity.csv unless it is incomplete)."""
    p = Path(path)
    return (p / "testbed.parquet").is_file() and ((p / "fidelity.csv").is_file() or incomplete(p) is not None)


def incomplete(path: Path) -> str | None:
    """Why a testbed folder holds measurements only (summary.json `incomplete`: its simulation failed), or None."""
    try:
        summary = json.loads((path / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    why = summary.get("incomplete") if isinstance(summary, dict) and summary.get("kind") == "testbed" else None
    return str(why) if why else None
