"""The self-contained report page: inline CSS, figures as base64 PNG, no scripts and no external URLs.

Kept as string building over escaped values (no template engine) so the page works offline, in mail
attachments and in CI artefact viewers, and so `reports` stays free of heavy dependencies.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import pandas as pd

from reports.load import ResultData, finite

CSS = """
:root { --fg:#1d2330; --muted:#5b6474; --line:#e2e6ee; --bg:#ffffff; --soft:#f6f8fb; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 28px 60px; background: var(--bg);
       box-shadow: 0 0 0 1px var(--line); min-height: 100vh; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
.meta { color: var(--muted); font-size: 13px; margin: 0 0 14px; }
.lead { font-size: 15.5px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: var(--soft); font-weight: 600; border-bottom: 2px solid var(--line); }
tbody tr:hover { background: #fafbfd; }
td.best { font-weight: 700; color: var(--accent); }
.ci { color: var(--muted); font-size: 12px; }
.sub { display:block; color: var(--muted); font-size: 11.5px; }
.swatch { display:inline-block; width:11px; height:11px; border-radius:2px; margin-right:7px; vertical-align:-1px; }
.desc { font-style: italic; margin: 0 0 10px; }
.takeaway { background: #eef4ff; border-left: 4px solid var(--accent); padding: 8px 12px; margin: 8px 0 10px; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 0; }
figure { margin: 18px 0 26px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 6px; text-align: center; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 12px; overflow-x: auto;
      font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.tablewrap { overflow-x: auto; }
"""


@dataclass
class FigureEntry:
    """One rendered figure: file stem, PNG bytes, the section it belongs to and what to look for."""

    name: str
    png: bytes
    caption: str
    alt: str


def fmt_ms(v: Any) -> str:
    """Milliseconds with precision that suits the magnitude (no '1.23e+03')."""
    if not finite(v):
        return "—"
    a = abs(float(v))
    return f"{v:,.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.1 else f"{v:.3g}"


def fmt_pct(v: Any, signed: bool = False, digits: int = 1) -> str:
    if not finite(v):
        return "—"
    return f"{v * 100:+.{digits}f}%" if signed else f"{v * 100:.{digits}f}%"


def fmt_num(v: Any, digits: int = 3) -> str:
    if not finite(v):
        return "—" if v is None or isinstance(v, float) else escape(str(v))
    return f"{v:.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are already-escaped HTML fragments; headers are escaped here."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return (f'<div class="tablewrap"><table class="{cls}"><thead><tr>{th}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _with_ci(p: Mapping[str, Any], key: str) -> str:
    lo, hi = p.get(f"{key}_lo"), p.get(f"{key}_hi")
    ci = f' <span class="ci">[{fmt_ms(lo)}, {fmt_ms(hi)}]</span>' if finite(lo) and finite(hi) else ""
    return fmt_ms(p.get(key)) + ci


def headline_table(policies: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    """Per policy: latency (with CIs), accuracy of what was answered, decoded share, extra load; best p99.9 bold.

    Columns no policy has a value for (e.g. accuracy in a simulation-only run) are left out rather than shown
    as a column of dashes.
    """
    latency = [("mean_ms", "mean"), ("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]
    extra = [("accuracy", "accuracy", lambda v: fmt_pct(v, digits=2)),
             ("decoded_fraction", "decoded", fmt_pct),
             ("extra_load_vs_uncoded", "extra load", lambda v: fmt_pct(v, signed=True)),
             ("utilization", "utilization", fmt_pct),
             ("n_measured", "measured queries", lambda v: f"{int(v):,}"),
             ("n_queries", "queries", lambda v: f"{int(v):,}")]
    extra = [e for e in extra if any(finite(p.get(e[0])) for p in policies.values())]
    if any(e[0] == "n_measured" for e in extra):
        extra = [e for e in extra if e[0] != "n_queries"]
    tails = {n: p.get("p999_ms") for n, p in policies.items() if finite(p.get("p999_ms"))}
    best = min(tails, key=lambda n: tails[n]) if len(tails) > 1 else None
    rows = []
    for name, p in policies.items():
        sw = f'<span class="swatch" style="background:{escape(colors.get(name, "#888"))}"></span>'
        cells = [sw + escape(name)]
        for key, _ in latency:
            cell = _with_ci(p, key)
            cells.append(f'<td class="best">{cell}</td>' if key == "p999_ms" and name == best else cell)
        cells += [fmt(p.get(key)) if finite(p.get(key)) else "—" for key, _, fmt in extra]
        rows.append(cells)
    head = ["policy", *(f"{label} (ms)" for _, label in latency), *(label for _, label, _ in extra)]
    return _table(head, rows)


def _is_uncoded(name: str, p: Mapping[str, Any]) -> bool:
    return p.get("kind") == "uncoded" or (p.get("kind") is None and name.lower().startswith("uncoded"))


def takeaway(policies: Mapping[str, Mapping[str, Any]]) -> str:
    """One sentence a reader can quote: who has the shortest p99.9, by how much, and whether the CIs separate."""
    tails = {n: p for n, p in policies.items() if finite(p.get("p999_ms"))}
    if len(tails) < 2:
        return ""
    # ties (policies that collapse onto the same tail) go to the non-baseline policy: it is the real competitor
    ranked = sorted(tails, key=lambda n: (tails[n]["p999_ms"], _is_uncoded(n, tails[n])))
    best, second = ranked[0], ranked[1]
    b = tails[best]
    text = f"<strong>{escape(best)}</strong> has the shortest p99.9 tail ({fmt_ms(b['p999_ms'])} ms"
    base = next((n for n in tails if _is_uncoded(n, tails[n]) and n != best), None)
    if base is not None and tails[base]["p999_ms"]:
        change = b["p999_ms"] / tails[base]["p999_ms"] - 1.0
        text += f", {fmt_pct(change, signed=True, digits=0)} vs {escape(base)}"
    text += ")"
    s = tails[second]
    if finite(b.get("p999_ms_hi")) and finite(s.get("p999_ms_lo")):
        if b["p999_ms_hi"] < s["p999_ms_lo"]:
            text += f"; its confidence interval is clear of the runner-up, {escape(second)}"
        else:
            text += f"; its confidence interval overlaps the runner-up's ({escape(second)}, {fmt_ms(s['p999_ms'])} ms)"
    if finite(b.get("accuracy")):
        text += f". It answered with {fmt_pct(b['accuracy'], digits=2)} accuracy"
        if finite(b.get("decoded_fraction")) and b["decoded_fraction"] > 0:
            text += f", {fmt_pct(b['decoded_fraction'])} of answers decoded"
    return f'<p class="takeaway">{text}.</p>'


def sweep_table(sweep: pd.DataFrame, axis: str, order: Sequence[str]) -> str:
    """Every (point, policy) row, for readers who want the numbers behind the sweep figures."""
    cols = [("p50_ms", "p50 (ms)", fmt_ms), ("p99_ms", "p99 (ms)", fmt_ms), ("p999_ms", "p99.9 (ms)", fmt_ms),
            ("accuracy", "accuracy", lambda v: fmt_pct(v, digits=2)), ("decoded_fraction", "decoded", fmt_pct),
            ("extra_load_vs_uncoded", "extra load", lambda v: fmt_pct(v, signed=True))]
    cols = [c for c in cols if c[0] in sweep.columns and pd.to_numeric(sweep[c[0]], errors="coerce").notna().any()]
    rank = {p: i for i, p in enumerate(order)}
    frame = sweep.assign(_r=sweep["policy"].map(rank)).sort_values(["point", "_r"], kind="stable")
    rows = []
    for rec in frame.to_dict("records"):
        v = rec.get(axis)
        shown = f"{v:g}" if isinstance(v, float) else str(v)
        rows.append([escape(shown), escape(str(rec["policy"])),
                     *(fmt(rec.get(k)) if finite(rec.get(k)) else "—" for k, _, fmt in cols)])
    return _table([axis, "policy", *(label for _, label, _ in cols)], rows)


def coding_table(table: pd.DataFrame, coding: Mapping[str, Mapping[str, Any]] | None) -> str:
    """NDA per method × expert, with decoded/expert accuracy under each value, the average and encode time."""
    experts = list(dict.fromkeys(table["expert"]))
    rows = []
    for method in dict.fromkeys(table["method"]):
        t = table[table["method"] == method].set_index("expert")
        cells = [escape(method)]
        for e in experts:
            if e not in t.index:
                cells.append("—")
                continue
            r = t.loc[e]
            sub = ""
            if finite(r.get("decoded_acc")) and finite(r.get("expert_acc")):
                sub = f'<span class="sub">{fmt_pct(r["decoded_acc"])} / {fmt_pct(r["expert_acc"])}</span>'
            cells.append(fmt_num(r.get("nda")) + sub)
        c = (coding or {}).get(method) or {}
        avg = c.get("nda_avg") if finite(c.get("nda_avg")) else pd.to_numeric(t["nda"], errors="coerce").mean()
        enc = c.get("encode_seconds")
        if not finite(enc) and "encode_seconds" in t.columns:
            enc = pd.to_numeric(t["encode_seconds"], errors="coerce").mean()
        cells += [f"<strong>{fmt_num(avg)}</strong>", fmt_num(enc, 2)]
        rows.append(cells)
    return _table(["method", *experts, "average NDA", "encode (s)"], rows)


def profile_table(profile: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [[escape(str(name)), fmt_ms(p.get("mean_ms")), fmt_ms(p.get("p50_ms")), fmt_ms(p.get("p99_ms")),
             fmt_num(p.get("batch_size"), 0), escape(str(p.get("device", "—"))), fmt_num(p.get("n_samples"), 0)]
            for name, p in profile.items()]
    return _table(["served model", "mean (ms)", "p50 (ms)", "p99 (ms)", "batch", "device", "samples"], rows)


def live_table(live: Mapping[str, Any]) -> str:
    rows = []
    for q in ("p50", "p99"):
        prof, lv = live.get(f"profiled_{q}_ms"), live.get(f"live_{q}_ms")
        diff = fmt_pct((lv - prof) / prof, signed=True) if finite(prof) and finite(lv) and prof else "—"
        rows.append([q, fmt_ms(prof), fmt_ms(lv), diff])
    return _table(["latency", "profiled (ms)", "live (ms)", "live vs profiled"], rows)


def _what_was_run(data: ResultData, point_label: str | None) -> str:
    s = data.summary
    parts = [f"Scenario <strong>{escape(s['scenario'])}</strong>"]
    experts = s.get("experts") or []
    if experts:
        names = ", ".join(escape(str(e.get("name", "?"))) for e in experts)
        parts.append(f"with {len(experts)} expert{'s' if len(experts) != 1 else ''} ({names})")
    pol = list(data.policies) or data.policy_order
    sentence = " ".join(parts) + "."
    if pol:
        sentence += f" Policies compared on common random numbers: {', '.join(escape(p) for p in pol)}."
    if data.sweep_axis is not None and data.sweep is not None:
        ax = data.sweep_axis
        vals = list(dict.fromkeys(data.sweep[ax].tolist()))
        shown = ", ".join(escape(f"{v:g}" if isinstance(v, float) else str(v)) for v in vals[:8])
        more = ", …" if len(vals) > 8 else ""
        sentence += f" Swept <code>{escape(ax)}</code> over {len(vals)} values ({shown}{more})."
        if point_label:
            sentence += f" Headline numbers are for the last point ({escape(point_label)})."
    counts = {int(p.get("n_measured", p.get("n_queries"))) for p in data.policies.values()
              if finite(p.get("n_measured", p.get("n_queries")))}
    if len(counts) == 1:
        sentence += f" {counts.pop():,} measured queries per policy (warm-up discarded)."
    methods = list(s.get("coding") or {})
    if methods:
        sentence += f" Coding method{'s' if len(methods) > 1 else ''}: {', '.join(escape(m) for m in methods)}."
    return f'<p class="lead">{sentence}</p>'


def _meta_line(s: Mapping[str, Any]) -> str:
    bits = []
    for key, label in (("created", "created"), ("seed", "seed"), ("device", "device")):
        if s.get(key) is not None:
            bits.append(f"{label} {escape(str(s[key]))}")
    versions = s.get("versions") or {}
    if versions:
        bits.append(" ".join(f"{escape(str(k))} {escape(str(v))}" for k, v in versions.items()))
    return f'<p class="meta">{" · ".join(bits)}</p>' if bits else ""


def _figure(fig: FigureEntry) -> str:
    b64 = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="fig-{escape(fig.name)}"><img alt="{escape(fig.alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{escape(fig.caption)}</figcaption></figure>")


def build_html(data: ResultData, figures: Sequence[FigureEntry], colors: Mapping[str, str],
               coding: pd.DataFrame, point_label: str | None) -> str:
    """The whole page as one string (deterministic for a given folder, so re-rendering is idempotent)."""
    s = data.summary
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>coinsim report: {escape(s['scenario'])}</title><style>{CSS}</style></head><body><main>",
           f"<h1>coinsim report: {escape(s['scenario'])}</h1>", _meta_line(s)]
    if isinstance(s.get("description"), str) and s["description"].strip():
        out.append(f'<p class="desc">{escape(s["description"].strip())}</p>')
    out.append(_what_was_run(data, point_label))
    if data.policies:
        out.append("<h2>Headline</h2>")
        out.append(takeaway(data.policies))
        out.append(headline_table(data.policies, colors))
        out.append('<p class="note">Latency in ms with confidence intervals in brackets; warm-up discarded. '
                   "Accuracy is of the answers actually returned (direct, replica, hedge or decoded). Extra load is "
                   "server time per query relative to the uncoded policy. Highlighted: lowest p99.9.</p>")
    if figures:
        out.append("<h2>Figures</h2>")
        out += [_figure(f) for f in figures]
    if data.sweep_axis is not None and data.sweep is not None:
        out.append(f"<details><summary>All sweep points ({data.sweep['point'].nunique()} points × "
                   f"{data.sweep['policy'].nunique()} policies)</summary>"
                   f"{sweep_table(data.sweep, data.sweep_axis, data.policy_order)}</details>")
    if len(coding):
        out.append("<h2>Coding</h2>")
        out.append(coding_table(coding, s.get("coding")))
        out.append('<p class="note">NDA = accuracy of the decoded output / accuracy of the expert itself, on the '
                   "expert's test partition (small grey numbers: decoded / expert accuracy).</p>")
    if s.get("profile"):
        out.append("<h2>Latency profile</h2>")
        out.append(profile_table(s["profile"]))
        out.append('<p class="note">Measured forward passes on the device; these samples are the simulator\'s '
                   "service times, with stragglers injected on top.</p>")
    if s.get("live_check"):
        out.append("<h2>Live check</h2>")
        out.append(live_table(s["live_check"]))
        n = s["live_check"].get("n_queries")
        out.append(f'<p class="note">Profiled mode vs real forward passes at each service event'
                   f'{f" ({int(n):,} queries)" if finite(n) else ""}.</p>')
    if data.notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in data.notes) + "</ul>")
    if data.scenario_toml is not None:
        out.append("<h2>Scenario</h2>")
        out.append(f"<details><summary>scenario.toml (resolved)</summary><pre>{escape(data.scenario_toml)}</pre>"
                   "</details>")
    out.append("</main></body></html>\n")
    return "\n".join(x for x in out if x)
