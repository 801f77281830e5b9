"""The testbed report: measured vs simulated latency, per point and policy, from a `coinsim testbed` folder.

Reads testbed.parquet (measured, per query), simulated.parquet (the simulator on the same draws, with the
isolated and the in-situ service profile), fidelity.csv and summary.json; writes figures/testbed_cdf_*.png and
report.html (a jinja2 template with autoescaping; figures inline as base64, no scripts, no external URLs).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, select_autoescape
from matplotlib.figure import Figure

from reports.html import CSS
from reports.load import ReportError
from reports.render import _atomic_write, png_bytes

SERVICE_STYLE = {"isolated": ("sim: isolated profile", "--"), "in_situ": ("sim: in-situ service", ":"),
                 "in_situ+network": ("sim: in-situ + network", "-."), "model": ("sim: full model", "-")}

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>coinsim testbed — {{ s.scenario }}</title>
<style>{{ css }}</style></head><body><main>
<h1>How close is the simulator to a real serving run?</h1>
<p class="meta">scenario <b>{{ s.scenario }}</b> · seed {{ s.seed }} · {{ s.repeats }} repeat(s) ·
straggle mode {{ s.straggle }} · device {{ s.device }} · {{ s.cpu_count }} CPU core(s) · load average at the end
{{ load }}</p>
<p class="lead">Every point was served for real: one OS process per server doing real forward passes, a frontend
replaying the simulator's own arrivals and straggler draws in wall-clock time over ZeroMQ. The simulator then ran
the same draws four times: with the latency profile timed in isolation (what <code>coinsim run</code> uses);
with the service times the servers measured while serving (<i>in_situ</i>); with those plus the measured
dispatcher → server and server → dispatcher delays and cancels that let a forward pass finish, as the servers
do (<i>in_situ+network</i>); and the full model (<i>model</i>): uncontended in-situ service (passes during
which no other server computed), the network model, and the servers sharing the machine's cores less the
frontend's measured share (processor sharing when more servers are busy than there are cores).
Relative error = (simulated − measured) /
measured, measured = median over repeats; spread = (max − min) / median of the repeats.</p>
<div class="takeaway">Worst |relative error| over all points and policies —
{% for service, worst in s.worst_abs_rel_error_pct.items() %}<b>{{ service }}</b>:
{% for m, v in worst.items() %}{{ m }} {{ "%.1f"|format(v) }} %{{ ", " if not loop.last }}{% endfor %}
{{ "; " if not loop.last }}{% endfor %}</div>
<h2>Service times: isolated profile vs in situ</h2>
<div class="tablewrap"><table><thead><tr><th>network</th><th>isolated mean ms</th><th>in-situ mean ms</th>
<th>shift</th><th>in situ, no other server computing, mean ms</th><th>in-situ cycle (server taken per task) mean ms</th>
</tr></thead><tbody>
{% for name, v in s.service_ms.items() %}<tr><td>{{ name }}</td><td>{{ "%.3f"|format(v.isolated_mean_ms) }}</td>
<td>{{ "%.3f"|format(v.in_situ_mean_ms) }}</td>
<td>{{ "%+.1f"|format(100 * (v.in_situ_mean_ms / v.isolated_mean_ms - 1)) }} %</td>
<td>{{ "%.3f"|format(v.in_situ_alone_mean_ms) }}</td><td>{{ "%.3f"|format(v.in_situ_cycle_mean_ms) }}</td></tr>
{% endfor %}
</tbody></table></div>
<h2>Dispatch and transport overheads (measured)</h2>
<div class="tablewrap"><table><thead><tr><th>point</th><th>dispatch lateness median ms</th><th>p99 ms</th>
<th>transport median ms</th><th>p99 ms</th><th>frontend CPU, cores</th><th>cores left to servers</th>
<th>median compute ms with 0 / 1 / 2 other servers computing</th></tr></thead><tbody>
{% for p, o in s.overheads.items() %}<tr><td>{{ p }}</td><td>{{ "%.3f"|format(o.dispatch_lateness_ms_median) }}</td>
<td>{{ "%.3f"|format(o.dispatch_lateness_ms_p99) }}</td><td>{{ "%.3f"|format(o.transport_ms_median) }}</td>
<td>{{ "%.3f"|format(o.transport_ms_p99) }}</td><td>{{ "%.2f"|format(o.frontend_cores_median) }}</td>
<td>{{ "%.2f"|format(o.shared_cores) }}</td>
<td>{% for k, v in o.compute_ms_by_overlap.items() %}{{ "%.3f"|format(v) }}{{ " / " if not loop.last }}{% endfor %}
</td></tr>{% endfor %}
</tbody></table></div>
{% for block in points %}
<h2>Point {{ block.point }}: {{ block.label }}</h2>
<figure><img alt="latency CDFs, measured vs simulated, {{ block.label }}" src="data:image/png;base64,{{ block.png }}">
<figcaption>Latency CDF per policy: each measured repeat (thin black) and the four simulator variants (the full
model solid).</figcaption></figure>
<div class="tablewrap"><table><thead><tr><th>policy</th><th>service</th>
{% for m in metrics %}<th>{{ m }}: sim / meas ms (error, spread)</th>{% endfor %}<th>KS D (p)</th>
<th>accuracy % (testbed / sim join)</th></tr></thead><tbody>
{% for row in block.rows %}<tr><td>{{ row.policy }}</td><td>{{ row.service }}</td>
{% for cell in row.cells %}<td>{{ cell }}</td>{% endfor %}<td>{{ row.ks }}</td><td>{{ row.accuracy }}</td></tr>
{% endfor %}</tbody></table></div>
{% endfor %}
</main></body></html>
"""


def _cdf_figure(measured: pd.DataFrame, simulated: pd.DataFrame, policies: list[str]) -> Figure:
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
                ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), ls=style, lw=1.4, label=label)
        ax.set_xscale("log")
        ax.set_title(policy, fontsize=10)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of queries ≤ latency")
    axes[0].legend(fontsize=7, loc="lower right")
    return fig


def render_testbed(result_dir: Path | str) -> Path:
    """Write figures/testbed_cdf_<point>.png and report.html into a testbed result folder; return the HTML path."""
    path = Path(result_dir)
    try:
        summary = json.loads((path / "summary.json").read_text())
        measured = pd.read_parquet(path / "testbed.parquet")
        simulated = pd.read_parquet(path / "simulated.parquet")
        fidelity = pd.read_csv(path / "fidelity.csv")
    except (OSError, ValueError) as error:
        raise ReportError(f"{path}: not a readable testbed result folder ({error})") from None
    for frame in (measured, simulated):
        frame["policy"] = frame["policy"].astype(str)
    policies = list(dict.fromkeys(fidelity["policy"]))
    metrics = list(dict.fromkeys(fidelity["metric"]))
    coord_cols = [c for c in fidelity.columns if c not in {"point", "service", "policy", "metric", "simulated_ms",
                                                          "measured_ms", "rel_error_pct", "repeat_spread_pct",
                                                          "repeat_min_ms", "repeat_max_ms", "repeats", "ks_stat",
                                                          "ks_p"}]
    fig_dir = path / "figures"
    fig_dir.mkdir(exist_ok=True)
    accuracy = summary.get("accuracy", {})
    blocks = []
    for point, g in fidelity.groupby("point", sort=True):
        label = ", ".join(f"{c} = {g[c].iloc[0]}" for c in coord_cols) or "single point"
        png = png_bytes(_cdf_figure(measured[measured["point"] == point], simulated[simulated["point"] == point],
                                    policies))
        _atomic_write(fig_dir / f"testbed_cdf_{point}.png", png)
        rows = []
        for (policy, service), h in g.groupby(["policy", "service"], sort=False):
            by = h.set_index("metric")
            cells = [f"{by.at[m, 'simulated_ms']:.2f} / {by.at[m, 'measured_ms']:.2f} "
                     f"({by.at[m, 'rel_error_pct']:+.1f} %, ±{by.at[m, 'repeat_spread_pct']:.0f} %)" for m in metrics]
            acc = accuracy.get(str(point), {}).get(policy, {})
            rows.append({"policy": policy, "service": service, "cells": cells,
                         "ks": f"{h['ks_stat'].iloc[0]:.3f} ({h['ks_p'].iloc[0]:.2g})",
                         "accuracy": (f"{acc['accuracy_pct']:.2f} / {acc['accuracy_sim_join_pct']:.2f}"
                                      if acc else "—")})
        blocks.append({"point": point, "label": label, "png": base64.b64encode(png).decode("ascii"), "rows": rows})
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    load = summary.get("load_average")
    html = env.from_string(TEMPLATE).render(
        s=summary, css=CSS, points=blocks, metrics=metrics,
        load=", ".join(f"{v:.2f}" for v in load) if load else "n/a")
    out = path / "report.html"
    _atomic_write(out, html.encode("utf-8"))
    return out


def is_testbed_folder(path: Path | str) -> bool:
    """A folder written by `coinsim testbed` (it has fidelity.csv and testbed.parquet)."""
    p = Path(path)
    return (p / "fidelity.csv").is_file() and (p / "testbed.parquet").is_file()
