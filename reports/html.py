"""The self-contained report page: inline CSS, figures as base64 PNG, no scripts and no external URLs.

The page is a jinja2 template with autoescaping: Python turns the result folder into plain rows of cells
(text, confidence interval, a small second line, a class), and the template writes every value escaped. The
few sentences with emphasis are `markupsafe.Markup` templates whose arguments are escaped by `format`.
Everything percent-valued arrives in percent (see reports.load) and is printed as such.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from jinja2 import Environment, select_autoescape
from markupsafe import Markup

from reports.load import ResultData, finite, fmt_value, served_profile_text

CSS = """
:root { --fg:#1d2330; --muted:#5b6474; --line:#e2e6ee; --bg:#ffffff; --soft:#f6f8fb; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 60px; background: var(--bg);
       box-shadow: 0 0 0 1px var(--line); min-height: 100vh; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 6px; }
.meta { color: var(--muted); font-size: 13px; margin: 0 0 14px; }
.lead { font-size: 15.5px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; position: sticky; left: 0; background: var(--bg); }
thead th { background: var(--soft); font-weight: 600; border-bottom: 2px solid var(--line); }
thead th:first-child { background: var(--soft); }
tbody tr:hover td { background: #fafbfd; }
td.best { font-weight: 700; color: var(--accent); }
td.name, th.name { text-align: left; }
td.strong { font-weight: 700; }
td.good { color: #15803d; font-weight: 600; }
td.bad { color: #b91c1c; font-weight: 600; }
.ci { color: var(--muted); font-size: 12px; }
.sub { display:block; color: var(--muted); font-size: 11.5px; font-weight: 400; }
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
.tablewrap { overflow-x: auto; max-width: 100%; }
"""

TEMPLATE = """<!DOCTYPE html>
{%- macro cell(c) -%}
<td{% if c.cls %} class="{{ c.cls }}"{% endif %}{% if c.title %} title="{{ c.title }}"{% endif %}>
{%- if c.swatch %}<span class="swatch" style="background:{{ c.swatch }}"></span>{% endif -%}
{{ c.text }}{% if c.mark %}<sup>{{ c.mark }}</sup>{% endif %}
{%- if c.ci %} <span class="ci">{{ c.ci }}</span>{% endif -%}
{%- if c.diff_ci %} <span class="ci diff">{{ c.diff_ci }}</span>{% endif -%}
{%- if c.sub %}<span class="sub">{{ c.sub }}</span>{% endif -%}
</td>
{%- endmacro -%}
{%- macro table(t) -%}
<div class="tablewrap"><table{% if t.cls %} class="{{ t.cls }}"{% endif %}><thead><tr>
{%- for h in t.head %}<th{% if loop.index0 in (t.left or ()) %} class="name"{% endif %}>{{ h }}</th>{% endfor %}
</tr></thead><tbody>
{% for row in t.rows %}<tr>{% for c in row %}{{ cell(c) }}{% endfor %}</tr>
{% endfor %}</tbody></table></div>
{%- for n in t.notes %}
<p class="note">{{ n }}</p>
{%- endfor %}
{%- endmacro %}
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>coinsim report: {{ s.scenario }}</title><style>{{ css }}</style></head><body><main>
<h1>coinsim report: {{ s.scenario }}</h1>
{% if meta %}<p class="meta">{{ meta | join(" · ") }}</p>{% endif %}
{% if description %}<p class="desc">{{ description }}</p>{% endif %}
<p class="lead">{{ lead }}</p>
{% if latency_model %}<p class="takeaway latency-model">{{ latency_model }}</p>{% endif %}
{% if versus %}
<h2>{{ versus.title }}</h2>
<p class="takeaway">{{ versus.sentence }}</p>
{{ table(versus.table) }}
{% endif %}
{% if headline %}
<h2>Headline{% if headline.where %}: {{ headline.where }}{% endif %}</h2>
{% if headline.takeaway %}<p class="takeaway">{{ headline.takeaway }}</p>{% endif %}
{{ table(headline.table) }}
{% endif %}
{% if figures %}
<h2>Figures</h2>
{% for f in figures %}
<figure id="fig-{{ f.name }}"><img alt="{{ f.alt }}" src="data:image/png;base64,{{ f.b64 }}">
<figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}
{% endif %}
{% if accuracy %}
<h2 id="accuracy">Accuracy of what was answered{% if accuracy.every %}, every point{% endif %}</h2>
{{ table(accuracy.table) }}
{% endif %}
{% if sweep %}
<details><summary>All sweep points ({{ sweep.points }} points × {{ sweep.policies }} policies)</summary>
{{ table(sweep.table) }}</details>
{% endif %}
{% if coding %}
<h2>Coding</h2>
{{ table(coding) }}
{% endif %}
{% if parity %}
<h2>Parity networks</h2>
{{ table(parity) }}
{% endif %}
{% if profile %}
<h2>Latency profile</h2>
{{ table(profile) }}
{% endif %}
{% if live %}
<h2>Live check</h2>
{{ table(live) }}
{% endif %}
{% if notes %}
<h2>Notes</h2><ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>
{% endif %}
{% if scenario_toml is not none %}
<h2>Scenario</h2>
<details><summary>scenario.toml (resolved)</summary><pre>{{ scenario_toml }}</pre></details>
{% endif %}
</main></body></html>
"""

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True), trim_blocks=True,
                   lstrip_blocks=True, keep_trailing_newline=True)
_PAGE = _ENV.from_string(TEMPLATE)

NEGATIVE_LOAD_NOTE = ("† Negative extra load: this policy spent less server time per query than uncoded. When "
                      "another copy or the decoder answers first, the straggling task is cancelled and its server "
                      "freed early; with slow stragglers that saves more time than the redundant copies cost.")
UPPER_AT_MAX_NOTE = ("Confidence intervals of percentiles lie between measured latencies (never below zero); an "
                     "upper end equal to the slowest measured query means the run was too short to bound that "
                     "percentile from above.")


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
    """A value already in percent (98.09 -> '98.09%')."""
    if not finite(v):
        return "—"
    v = round(float(v), digits) + 0.0  # no "-0%"
    return f"{v:+.{digits}f}%" if signed else f"{v:.{digits}f}%"


def fmt_num(v: Any, digits: int = 3) -> str:
    if not finite(v):
        return "—" if v is None or isinstance(v, float) else str(v)
    return f"{v:.{digits}f}"


def _cell(text: str, **kw: Any) -> dict[str, Any]:
    return {"text": text, **kw}


def _ci(p: Mapping[str, Any], key: str) -> str | None:
    lo, hi = p.get(f"{key}_lo"), p.get(f"{key}_hi")
    return f"[{fmt_ms(lo)}, {fmt_ms(hi)}]" if finite(lo) and finite(hi) else None


def _extra_load_cell(v: Any) -> dict[str, Any]:
    if not finite(v):
        return _cell("—")
    if v < 0:
        return _cell(fmt_pct(v, signed=True), mark="†", title="less server time than uncoded: cancelled "
                     "straggler work saved more than the copies cost")
    return _cell(fmt_pct(v, signed=True))


def _is_kind(name: str, p: Mapping[str, Any], kind: str) -> bool:
    return p.get("kind") == kind or (p.get("kind") is None and name.lower().startswith(kind[:6]))


def baseline_policy(data: ResultData) -> tuple[str | None, str]:
    """The policy every other is compared with: replication (N + r servers, like every policy — the
    equal-resource baseline), else uncoded; and a phrase naming it."""
    kinds = data.policy_kinds
    for kind, phrase in (("replication", "replication, the equal-resource baseline"),
                         ("uncoded", "uncoded (this run has no replication policy)")):
        for name in data.policy_order:
            if kinds.get(name) == kind or (kinds.get(name) is None and name.lower().startswith(kind[:6])):
                return name, phrase
    return None, ""


def _change(a: Any, b: Any) -> float | None:
    return (a / b - 1.0) * 100 if finite(a) and finite(b) and b else None


def _separation(p: Mapping[str, Any], base: Mapping[str, Any], key: str) -> int:
    """-1: p's interval lies wholly below the baseline's, +1: wholly above, 0: they overlap (or are unknown)."""
    lo, hi, blo, bhi = p.get(f"{key}_lo"), p.get(f"{key}_hi"), base.get(f"{key}_lo"), base.get(f"{key}_hi")
    if not all(finite(v) for v in (lo, hi, blo, bhi)):
        return 0
    return -1 if hi < blo else 1 if lo > bhi else 0


def versus_baseline(data: ResultData) -> dict[str, Any] | None:
    """Every policy against replication at every sweep point: a sentence per policy and a table per point."""
    base, phrase = baseline_policy(data)
    points = data.points
    if base is None or not points:
        return None
    others = [n for n in data.policy_order if n != base and any(n in p["policies"] for p in points)]
    if not others:
        return None
    axes = [a for a in data.axes if all(a in p for p in points)]
    head = [*(axes or (["point"] if len(points) > 1 else [])), f"{base}: p99.9 · p99 (ms)",
            *(f"{n}: p99.9 vs {base}" for n in others)]
    rows, tally = [], {n: [0, 0, 0, 0] for n in others}  # shorter, shorter & apart, longer, longer & apart
    for pt in points:
        pol = pt["policies"]
        b = pol.get(base, {})
        row = [_cell(fmt_value(pt[a])) for a in axes] or ([_cell(str(pt["point"]))] if len(points) > 1 else [])
        row.append(_cell(f"{fmt_ms(b.get('p999_ms'))} · {fmt_ms(b.get('p99_ms'))}", ci=_ci(b, "p999_ms")))
        for n in others:
            p = pol.get(n)
            change = _change(p.get("p999_ms"), b.get("p999_ms")) if p else None
            if change is None:
                row.append(_cell("—"))
                continue
            apart = _separation(p, b, "p999_ms")
            t = tally[n]
            if change < 0:
                t[0] += 1
                t[1] += apart < 0
            elif change > 0:
                t[2] += 1
                t[3] += apart > 0
            sub = [f"p99 {fmt_pct(_change(p.get('p99_ms'), b.get('p99_ms')), signed=True, digits=0)}"]
            if finite(p.get("accuracy_pct")) and finite(b.get("accuracy_pct")):
                sub.append(f"accuracy {p['accuracy_pct'] - b['accuracy_pct']:+.2f} pt")
            work = _change(p.get("server_ms_per_query"), b.get("server_ms_per_query"))
            if work is not None:
                sub.append(f"server time {fmt_pct(work, signed=True, digits=0)}")
            row.append(_cell(fmt_pct(change, signed=True, digits=0), mark="*" if apart else None,
                             cls="good" if apart < 0 else "bad" if apart > 0 else None,
                             title="confidence intervals apart" if apart else "confidence intervals overlap",
                             sub=" · ".join(sub)))
        rows.append(row)
    n_points = len(points)
    parts = []
    for n in others:
        shorter, shorter_apart, longer, longer_apart = tally[n]
        if n_points == 1:
            verdict = "shorter" if shorter else "longer" if longer else "equal"
            apart = "intervals apart" if shorter_apart or longer_apart else "intervals overlap"
            parts.append(Markup("<strong>{}</strong>: p99.9 {} ({})").format(n, verdict, apart))
            continue
        bit = Markup("<strong>{}</strong>: p99.9 shorter at {} of {} points ({} with intervals apart)").format(
            n, shorter, n_points, shorter_apart)
        if longer:
            bit += Markup(", longer at {} ({} apart)").format(longer, longer_apart)
        parts.append(bit)
    sentence = Markup("Compared with {}: ").format(phrase) + Markup("; ").join(parts) + Markup(".")
    notes = [f"Each cell: the policy's p99.9 relative to {base}'s at the same point; below it, p99, the accuracy "
             f"difference in percentage points and the server time per query relative to {base}. * and colour: "
             "the two confidence intervals do not overlap (green shorter, red longer)."]
    title = f"Against {base}" + (" at every point" if n_points > 1 else "")
    return {"title": title, "sentence": sentence,
            "table": {"head": head, "rows": rows, "notes": notes, "cls": "versus"}}


def headline_table(policies: Mapping[str, Mapping[str, Any]], colors: Mapping[str, str]) -> dict[str, Any]:
    """Per policy: latency (with CIs), accuracy of what was answered, decoded share, extra load; best p99.9 bold.

    Columns no policy has a value for (e.g. accuracy in a simulation-only run) are left out rather than shown
    as a column of dashes.
    """
    latency = [("mean_ms", "mean"), ("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]
    extra = [("accuracy_pct", "accuracy", lambda v: _cell(fmt_pct(v, digits=2))),
             ("agreement_pct", "agreement", lambda v: _cell(fmt_pct(v, digits=2))),
             ("decoded_pct", "decoded", lambda v: _cell(fmt_pct(v))),
             ("backup_pct", "backup", lambda v: _cell(fmt_pct(v))),
             ("extra_load_vs_uncoded_pct", "extra load vs uncoded", _extra_load_cell),
             ("utilization_pct", "utilization", lambda v: _cell(fmt_pct(v))),
             ("hedges_denied_pct", "hedges denied", lambda v: _cell(fmt_pct(v))),  # policies with a hedge budget
             ("n_measured", "measured queries", lambda v: _cell(f"{int(v):,}"))]
    has_backup = any(p.get("kind") == "backup" or (p.get("backup_pct") or 0) > 0 for p in policies.values())
    extra = [e for e in extra if any(finite(p.get(e[0])) for p in policies.values())
             and (e[0] != "backup_pct" or has_backup)]
    tails = {n: p.get("p999_ms") for n, p in policies.items() if finite(p.get("p999_ms"))}
    best = min(tails, key=lambda n: tails[n]) if len(tails) > 1 else None
    rows = []
    for name, p in policies.items():
        cells = [_cell(name, swatch=colors.get(name, "#888"))]
        for key, _ in latency:
            cells.append(_cell(fmt_ms(p.get(key)), ci=_ci(p, key),
                               cls="best" if key == "p999_ms" and name == best else None))
        cells += [fmt(p.get(key)) if finite(p.get(key)) else _cell("—") for key, _, fmt in extra]
        rows.append(cells)
    head = ["policy", *(f"{label} (ms)" for _, label in latency), *(label for _, label, _ in extra)]
    notes = ["Latency in ms with confidence intervals in brackets; warm-up discarded. Accuracy is of the answers "
             "actually returned (direct, replica, hedge, decoded or backup). Extra load is server time per query "
             "relative to the uncoded policy. Highlighted: lowest p99.9. " + UPPER_AT_MAX_NOTE]
    if any(finite(p.get("extra_load_vs_uncoded_pct")) and p["extra_load_vs_uncoded_pct"] < 0
           for p in policies.values()):
        notes.append(NEGATIVE_LOAD_NOTE)
    if waits := hedge_delay_note(policies):
        notes.append(waits)
    return {"head": head, "rows": rows, "notes": notes}


def hedge_delay_note(policies: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Where each delayed policy's hedge delay started and ended (mean over the experts); None without one."""
    waits = [f"{name} {fmt_ms(p['hedge_delay_start_ms'])} → {fmt_ms(p.get('hedge_delay_end_ms'))} ms"
             for name, p in policies.items() if finite(p.get("hedge_delay_start_ms"))]
    if not waits:
        return None
    return ("Hedge delays, at the start → at the end of the run (mean over the experts; a delay given as a "
            "percentile follows that percentile of the expert's direct answers): " + "; ".join(waits) + ".")


def takeaway(policies: Mapping[str, Mapping[str, Any]], base: str | None = None) -> Markup:
    """One sentence a reader can quote: who has the shortest p99.9, by how much against the baseline
    (replication), and whether the CIs separate from the runner-up."""
    tails = {n: p for n, p in policies.items() if finite(p.get("p999_ms"))}
    if len(tails) < 2:
        return Markup("")
    # ties (policies that collapse onto the same tail) go to the non-baseline policy: it is the real competitor
    ranked = sorted(tails, key=lambda n: (tails[n]["p999_ms"], n == base or _is_kind(n, tails[n], "uncoded")))
    best, second = ranked[0], ranked[1]
    b = tails[best]
    text = Markup("<strong>{}</strong> has the shortest p99.9 tail ({} ms").format(best, fmt_ms(b["p999_ms"]))
    if base is not None and base != best and base in tails and tails[base]["p999_ms"]:
        change = b["p999_ms"] / tails[base]["p999_ms"] - 1.0
        text += Markup(", {} vs {}").format(fmt_pct(change * 100, signed=True, digits=0), base)
    text += Markup(")")
    s = tails[second]
    if finite(b.get("p999_ms_hi")) and finite(s.get("p999_ms_lo")):
        if b["p999_ms_hi"] < s["p999_ms_lo"]:
            text += Markup("; its confidence interval is clear of the runner-up, {}").format(second)
        else:
            text += Markup("; its confidence interval overlaps the runner-up's ({}, {} ms)").format(
                second, fmt_ms(s["p999_ms"]))
    if finite(b.get("accuracy_pct")):
        text += Markup(". It answered with {} accuracy").format(fmt_pct(b["accuracy_pct"], digits=2))
        if finite(b.get("decoded_pct")) and b["decoded_pct"] > 0:
            text += Markup(", {} of answers decoded").format(fmt_pct(b["decoded_pct"]))
        if finite(b.get("backup_pct")) and b["backup_pct"] > 0:
            text += Markup(", {} of answers from the generalist backup").format(fmt_pct(b["backup_pct"]))
    return text + Markup(".")


# (column, heading, answers' share column or None for all answers); percent, in the summary's names
ACCURACY_COLUMNS = (
    ("accuracy_pct", "all: accuracy", None),
    ("accuracy_vs_uncoded_pct", "all: accuracy vs uncoded, same queries", None),
    ("agreement_pct", "all: agreement", None),
    ("decoded_pct", "decoded: share", None),
    ("decoded_accuracy_pct", "decoded: accuracy", "decoded_pct"),
    ("decoded_agreement_pct", "decoded: agreement", "decoded_pct"),
    ("backup_pct", "backup: share", None),
    ("backup_accuracy_pct", "backup: accuracy", "backup_pct"),
    ("backup_agreement_pct", "backup: agreement", "backup_pct"),
)


def _pct_ci(lo: Any, hi: Any) -> str | None:
    return f"[{lo:.2f}, {hi:.2f}]" if finite(lo) and finite(hi) else None


def accuracy_table(data: ResultData, colors: Mapping[str, str]) -> dict[str, Any] | None:
    """Per point and policy: accuracy (against the labels) and agreement (with the expert's own answer) of all
    answers, and of decoded and of backup answers alone, with 95 % Wilson intervals for the accuracies.

    Columns no policy has a value for are left out (a run without a backup policy has no backup columns);
    None when the run measured no accuracy at all (simulation only).
    """
    from reports.figures import answered_counts, wilson_interval

    points = data.points
    present = [c for c in ACCURACY_COLUMNS
               if any(finite(st.get(c[0])) for p in points for st in p["policies"].values())]
    if not any(c[0] == "accuracy_pct" for c in present):
        return None
    for share in ("decoded_pct", "backup_pct"):  # a share column only next to its accuracy columns
        if not any(c[2] == share for c in present):
            present = [c for c in present if c[0] != share]
    axes = [a for a in data.axes if all(a in p for p in points)]
    lead = axes or (["point"] if len(points) > 1 else [])
    rows = []
    for pt in points:
        for name in data.policy_order:
            st = pt["policies"].get(name)
            if st is None:
                continue
            cells = [_cell(fmt_value(pt[a])) for a in axes] or ([_cell(str(pt["point"]))] if lead else [])
            cells.append(_cell(name, swatch=colors.get(name, "#888"), cls="name"))
            n = st.get("n_measured")
            cells.append(_cell(f"{int(n):,}" if finite(n) else "—"))
            for key, _, share in present:
                v = st.get(key)
                if not finite(v):
                    cells.append(_cell("—"))
                    continue
                if key == "accuracy_vs_uncoded_pct":  # paired over the same queries: its own interval
                    lo, hi = st.get("accuracy_vs_uncoded_lo_pct"), st.get("accuracy_vs_uncoded_hi_pct")
                    diff_ci = f"[{lo:+.2f}, {hi:+.2f}]" if finite(lo) and finite(hi) else None  # may be < 0
                    cells.append(_cell(fmt_pct(v, signed=True, digits=2), diff_ci=diff_ci))
                elif key.endswith(("_accuracy_pct", "agreement_pct")) or key == "accuracy_pct":
                    count = answered_counts(pd.DataFrame([st]), share).iloc[0]
                    lo, hi = wilson_interval(v, count)
                    ci = _pct_ci(float(lo), float(hi)) if key.endswith("accuracy_pct") else None
                    cells.append(_cell(fmt_pct(v, digits=2), ci=ci))
                else:
                    cells.append(_cell(fmt_pct(v)))
            rows.append(cells)
    notes = ["Accuracy: share of measured answers equal to the label; agreement: share equal to the class the "
             "expert itself would have answered (direct, replica and hedged answers agree by construction). "
             "Decoded and backup columns are over those answers alone; share is their part of all measured "
             "queries. Brackets: 95 % Wilson intervals. Every policy serves the same queries (common random "
             "numbers), so the difference to uncoded is taken query by query, with its own paired 95 % interval: "
             "an interval that excludes 0 is a price (or gain) beyond the noise."]
    head = [*lead, "policy", "measured queries", *(h for _, h, _ in present)]
    return {"every": len(points) > 1,
            "table": {"head": head, "rows": rows, "notes": notes, "cls": "accuracy", "left": [len(lead)]}}


def sweep_table(sweep: pd.DataFrame, axes: Sequence[str], order: Sequence[str]) -> dict[str, Any]:
    """Every (point, policy) row, for readers who want the numbers behind the sweep figures."""
    cols = [("p50_ms", "p50 (ms)", lambda r, k: _cell(fmt_ms(r.get(k)))),
            ("p99_ms", "p99 (ms)", lambda r, k: _cell(fmt_ms(r.get(k)), ci=_ci(r, k))),
            ("p999_ms", "p99.9 (ms)", lambda r, k: _cell(fmt_ms(r.get(k)), ci=_ci(r, k))),
            ("accuracy_pct", "accuracy", lambda r, k: _cell(fmt_pct(r.get(k), digits=2))),
            ("decoded_pct", "decoded", lambda r, k: _cell(fmt_pct(r.get(k)))),
            ("backup_pct", "backup", lambda r, k: _cell(fmt_pct(r.get(k)))),
            ("extra_load_vs_uncoded_pct", "extra load vs uncoded", lambda r, k: _extra_load_cell(r.get(k)))]
    cols = [c for c in cols if c[0] in sweep.columns and pd.to_numeric(sweep[c[0]], errors="coerce").notna().any()]
    if not (("kind" in sweep.columns and (sweep["kind"] == "backup").any()) or
            ("backup_pct" in sweep.columns and pd.to_numeric(sweep["backup_pct"], errors="coerce").gt(0).any())):
        cols = [c for c in cols if c[0] != "backup_pct"]  # no backup policy in this run: no column of zeros
    axes = [a for a in axes if a in sweep.columns] or ["point"]
    rank = {p: i for i, p in enumerate(order)}
    frame = sweep.assign(_r=sweep["policy"].map(rank)).sort_values(["point", "_r"], kind="stable")
    rows = []
    for rec in frame.to_dict("records"):
        rec = {k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}
        rows.append([*(_cell(fmt_value(rec.get(a))) for a in axes), _cell(str(rec["policy"])),
                     *(fmt(rec, k) for k, _, fmt in cols)])
    notes = []
    if "extra_load_vs_uncoded_pct" in sweep.columns and \
            (pd.to_numeric(sweep["extra_load_vs_uncoded_pct"], errors="coerce") < 0).any():
        notes.append(NEGATIVE_LOAD_NOTE)
    return {"head": [*axes, "policy", *(label for _, label, _ in cols)], "rows": rows, "notes": notes}


def coding_table(table: pd.DataFrame, coding: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """NDA (%) per method × expert, with decoded/expert accuracy under each value, the average and encode time."""
    experts = list(dict.fromkeys(table["expert"]))
    rows = []
    for method in dict.fromkeys(table["method"]):
        t = table[table["method"] == method].set_index("expert")
        cells = [_cell(method)]
        for e in experts:
            if e not in t.index:
                cells.append(_cell("—"))
                continue
            r = t.loc[e]
            sub = None
            if finite(r.get("decoded_acc_pct")) and finite(r.get("expert_acc_pct")):
                sub = f"{fmt_pct(r['decoded_acc_pct'])} / {fmt_pct(r['expert_acc_pct'])}"
            cells.append(_cell(fmt_num(r.get("nda_pct"), 2), sub=sub))
        c = (coding or {}).get(method) or {}
        avg = c.get("nda_avg_pct") if finite(c.get("nda_avg_pct")) else \
            pd.to_numeric(t["nda_pct"], errors="coerce").mean()
        enc = c.get("encode_s")
        if not finite(enc) and "encode_s" in t.columns:
            enc = pd.to_numeric(t["encode_s"], errors="coerce").mean()
        cells += [_cell(fmt_num(avg, 2), cls="strong"), _cell(fmt_num(enc, 2))]
        rows.append(cells)
    notes = ["NDA (%) = accuracy of the decoded output / accuracy of the expert itself × 100, on the expert's test "
             "partition (small grey numbers: decoded / expert accuracy); 100 % means decoding loses nothing."]
    return {"head": ["method", *(f"{e} NDA (%)" for e in experts), "average NDA (%)", "encode (s)"], "rows": rows,
            "notes": notes}


def parity_table(parity: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The parity networks a run trained (summary.json `parity`): what each cost and what its decodes are worth."""
    rows = [[_cell(fmt_num(p.get("k"), 0)), _cell(str(p.get("expert", "—"))), _cell(str(p.get("encoder", "—"))),
             _cell(str(p.get("init", "—"))), _cell(fmt_num(p.get("epochs"), 0)),
             _cell(fmt_num(p.get("train_samples"), 0)), _cell(fmt_num(p.get("train_s"), 1)),
             _cell(fmt_pct(p.get("degraded_accuracy_pct"))), _cell(fmt_pct(p.get("agreement_pct"))),
             _cell(fmt_pct(p.get("expert_accuracy_pct")))] for p in parity]
    return {"head": ["k", "expert", "encoder", "start", "epochs", "training queries", "training (s)",
                     "degraded-mode accuracy", "agreement with the expert", "expert's accuracy"], "rows": rows,
            "notes": ["Each parity network's training cost, and the accuracy of its decoded answers on the test set "
                      "in random groups of k, every member decoded in turn as if its server were the slow one "
                      "(degraded mode); 'any' is the one network for groups that mix experts' queries."]}


def profile_table(profile: Mapping[str, Mapping[str, Any]], latency_model: str | None = None) -> dict[str, Any]:
    rows = [[_cell(str(name)), _cell(fmt_ms(p.get("mean_ms"))), _cell(fmt_ms(p.get("p50_ms"))),
             _cell(fmt_ms(p.get("p99_ms"))), _cell(fmt_num(p.get("batch_size"), 0)),
             _cell(str(p.get("device", "—"))), _cell(fmt_num(p.get("n_samples"), 0))]
            for name, p in profile.items()]
    if latency_model == "served":
        note = ("Forward passes timed in isolation on the device. Served latency does not use them as service times: "
                "the simulator draws each network's passes as served under traffic and adds the calibration's "
                "per-task work (the latency model line at the top); these isolated passes tell when a cached served "
                "profile has gone stale.")
    else:
        note = ("Measured forward passes on the device; these samples are the simulator's service times, with "
                "stragglers injected on top.")
    return {"head": ["served model", "mean (ms)", "p50 (ms)", "p99 (ms)", "batch", "device", "samples"],
            "rows": rows, "notes": [note]}


def live_table(live: Mapping[str, Any], where: str | None) -> dict[str, Any]:
    rows = []
    for q in ("p50", "p99"):
        prof, lv = live.get(f"profiled_{q}_ms"), live.get(f"live_{q}_ms")
        diff = fmt_pct((lv - prof) / prof * 100, signed=True) if finite(prof) and finite(lv) and prof else "—"
        rows.append([_cell(q), _cell(fmt_ms(prof)), _cell(fmt_ms(lv)), _cell(diff)])
    n = live.get("n_queries")
    note = (f"Profiled mode vs real forward passes at each service event"
            f"{f' ({int(n):,} queries' if finite(n) else ''}{f', {where}' if where and finite(n) else ''}"
            f"{')' if finite(n) else ''}.")
    return {"head": ["latency", "profiled (ms)", "live (ms)", "live vs profiled"], "rows": rows, "notes": [note]}


def _deployment_sentence(dep: Any, axes: list[str]) -> Markup:
    """What the policies run on, when it is more than one server per expert and one code over all of them (at the
    headline point, when the sweep moves the deployment or r)."""
    if not isinstance(dep, dict):
        return Markup("")
    instances, groups = dep.get("instances") or [], dep.get("groups") or []
    if all(k == 1 for k in instances) and len(groups) <= 1:
        return Markup("")
    coded = Markup(", coded in {} groups").format(len(groups)) if len(groups) > 1 else ""
    moving = any(a.startswith("deployment") or a == "r" for a in axes)
    return Markup(" {} runs on {} servers: {} expert instances ({} per expert, balanced by {}){} and {} "
                  "extra.").format("At the headline point every policy" if moving else "Every policy",
                                   dep.get("servers"), sum(instances), " / ".join(str(k) for k in instances),
                                   dep.get("balancer"), coded, dep.get("extra_servers"))


def _lead(data: ResultData) -> Markup:
    s = data.summary
    text = Markup("Scenario <strong>{}</strong>").format(s["scenario"])
    experts = s.get("experts") or []
    if experts:
        text += Markup(" with {} expert{} ({})").format(len(experts), "s" if len(experts) != 1 else "",
                                                        ", ".join(str(e.get("name", "?")) for e in experts))
    text += Markup(".")
    text += _deployment_sentence(data.summary.get("deployment"), data.axes or [])
    pol = data.policy_order
    if pol:
        per_task = (data.summary.get("deployment") or {}).get("draws") == "task"
        text += Markup(" Policies compared on common random numbers{}: {}.").format(
            " drawn per task" if per_task else "", ", ".join(pol))
    points = data.points
    axes = data.axes
    if len(points) > 1 and axes:
        described = []
        for a in axes:
            vals = list(dict.fromkeys(p.get(a) for p in points))
            shown = ", ".join(fmt_value(v) for v in vals[:8]) + (", …" if len(vals) > 8 else "")
            described.append(Markup("<code>{}</code> over {} values ({})").format(a, len(vals), shown))
        text += Markup(" Swept ") + Markup(" × ").join(described) + Markup(": {} points.").format(len(points))
    elif len(points) > 1:
        text += Markup(" {} sweep points.").format(len(points))
    hp = data.headline_point
    if len(points) > 1 and hp is not None:
        last = " (the last)" if hp == max(p["point"] for p in points) else ""
        text += Markup(" The headline table is for point {}{}: {}; the comparison with the baseline covers every "
                       "point.").format(hp, last, data.point_label(hp) or "")
    measured = {int(p["n_measured"]) for p in data.policies.values() if finite(p.get("n_measured"))}
    simulated = {int(p["n_queries"]) for p in data.policies.values() if finite(p.get("n_queries"))}
    if len(measured) == 1:
        text += Markup(" {:,} measured queries per policy").format(measured.pop())
        if len(simulated) == 1:
            text += Markup(" of {:,} simulated").format(simulated.pop())
        text += Markup(" (warm-up discarded).")
    methods = list(s.get("coding") or {})
    if methods:
        text += Markup(" Coding method{}: {}.").format("s" if len(methods) > 1 else "", ", ".join(methods))
    return text


def _num(v: Any) -> str:
    """Three decimals, or '?' for a value the summary does not have."""
    return f"{v:.3f}" if finite(v) else "?"


def _model_name(s: Mapping[str, Any]) -> str | None:
    """The latency model's name ('served', 'compute'), None for folders that do not record it."""
    model = s.get("latency_model")
    return str(model.get("name")) if isinstance(model, Mapping) and model.get("name") else None


def latency_model_line(s: Mapping[str, Any]) -> Markup | None:
    """Which latency model produced every latency in the report, and from which calibration (None for folders
    written before it was recorded)."""
    model = s.get("latency_model")
    if not isinstance(model, Mapping):
        return None
    name = str(model.get("name", "?"))
    text = Markup("Latencies: <strong>{}</strong> — {}.").format(name, model.get("meaning", ""))
    cal = model.get("calibration")
    if isinstance(cal, Mapping):
        machine = cal.get("machine") or {}
        beside = cal.get("work_beside_pass_ms")  # absent from summaries written before it was recorded
        text += Markup(" Calibration of {} ({} cores, {}, torch {}), made {}: a task costs a busy server "
                       "{} ms + {} × its isolated pass{}; one-way delays {} / {} ms median; OS time slice {} ms; "
                       "the dispatcher takes {} cores + {} ms per task.").format(
            machine.get("cpu_model", "?"), machine.get("cpu_count", "?"), machine.get("device", "?"),
            machine.get("torch", "?"), cal.get("created", "?"), _num(cal.get("served_overhead_ms")),
            _num(cal.get("served_slope")),
            Markup(", of which {} ms is its work beside the pass (no straggle stretches it)").format(_num(beside))
            if finite(beside) else "",
            _num(cal.get("out_ms_median")), _num(cal.get("back_ms_median")), _num(cal.get("quantum_ms")),
            _num(cal.get("dispatcher_base_cores")), _num(cal.get("dispatcher_cpu_ms_per_task")))
        levels = [lv for lv in cal.get("delays_under_load") or [] if isinstance(lv, Mapping)]
        served = model.get("served_passes")
        if isinstance(served, Mapping) and served:
            text += _served_passes_text(served)
            text += _wake_text(model.get("served_wake"))
            text += _beside_text(model.get("served_beside"))
            text += _pass_correlation_text(model.get("served_pass_correlation"))
            if where := served_profile_text(model.get("served_profile")):
                text += Markup(" The served profile: {}.").format(where)
        elif levels:
            text += Markup(" Under serving traffic the one-way delays reach p99 {} ms out at {} % of the cores busy "
                           "(each point draws them at its own utilization).").format(
                _num(levels[-1].get("out_ms_p99")),
                f"{100 * levels[-1]['utilization']:.0f}" if finite(levels[-1].get("utilization")) else "?")
        corun = [float(f) for f in cal.get("corun_slowdown") or [] if isinstance(f, int | float)]
        if corun and corun[0] > 1.0:
            text += Markup(" Servers computing side by side slow each other: ×{} with one other (measured without "
                           "a dispatcher, for this network's pass).").format(_num(corun[0]))
        elif corun:
            text += Markup(" Servers computing side by side did not slow each other measurably (×1 with one "
                           "other, measured without a dispatcher).")
    elif name == "compute":
        text += Markup(" Served on this machine, latencies would be longer: run without "
                       "<code>--latency-model compute</code> for the served prediction.")
    return text


def _beside_text(beside: Any) -> Markup:
    """A server's own work per task beside the pass as the networks' traffic showed it, before and after its output
    left (summary.json latency_model.served_beside, per network), as ranges over the networks; or nothing."""
    if not isinstance(beside, Mapping):
        return Markup("")
    parts = [v for v in beside.values() if isinstance(v, Mapping)
             and finite(v.get("before_output_ms")) and finite(v.get("after_output_ms"))]
    if not parts:
        return Markup("")

    return Markup(" Each server's own work per task, measured in the same traffic: {} ms before its output leaves "
                  "(in the answer) and {} ms after it (the server's next task waits it out).").format(
        _span(v["before_output_ms"] for v in parts), _span(v["after_output_ms"] for v in parts))


def _pass_correlation_text(tables: Any) -> Markup:
    """How a server's consecutive passes moved together in the networks' traffic (summary.json
    latency_model.served_pass_correlation, per network): the correlation after the shortest idle time and after
    the longest measured one, as ranges over the networks; or nothing."""
    if not isinstance(tables, Mapping):
        return Markup("")
    parts = [t for t in tables.values() if isinstance(t, Mapping) and t.get("idle_ms") and t.get("rho")
             and len(t["idle_ms"]) == len(t["rho"]) and all(finite(x) for x in (*t["idle_ms"], *t["rho"]))]
    if not parts:
        return Markup("")

    return Markup(" A server's consecutive passes move together (their ranks correlate {} when it went straight on, "
                  "within {} ms, and {} after up to {} ms idle; drawn so).").format(
        _span(t["rho"][0] for t in parts), _num(float(parts[0]["idle_ms"][0])), _span(t["rho"][-1] for t in parts),
        _num(float(parts[0]["idle_ms"][-1])))


def _span(values: Any) -> str:
    """The range of some numbers as the report writes it ("a–b", or one number when they are all alike)."""
    ordered = sorted(float(v) for v in values)
    return _num(ordered[0]) if ordered[0] == ordered[-1] else f"{_num(ordered[0])}–{_num(ordered[-1])}"


def _wake_text(wake: Any) -> Markup:
    """The largest extra pass of the networks' wake by the others' busy time (summary.json
    latency_model.served_wake), or nothing."""
    if not isinstance(wake, Mapping):
        return Markup("")
    best = None
    for name, curve in wake.items():
        if not isinstance(curve, Mapping):
            continue
        busy, extra = curve.get("others_busy_ms") or [], curve.get("others_extra_ms") or []
        if busy and len(busy) == len(extra) and finite(busy[-1]) and finite(extra[-1]) and (
                best is None or extra[-1] > best[2]):
            best = (name, busy[-1], extra[-1])
    if best is None:
        return Markup("")
    return Markup(" A pass runs longer when the other servers computed while its server sat idle (they evict its "
                  "caches): up to {} ms for {} after {} ms of their work.").format(_num(best[2]), best[0],
                                                                                   _num(best[1]))


def _served_passes_text(served: Mapping[str, Any]) -> Markup:
    """The networks' served passes (summary.json latency_model.served_passes: per network, its levels)."""
    parts = []
    for name, levels in served.items():
        rows = [lv for lv in levels if isinstance(lv, Mapping)] if isinstance(levels, list) else []
        if rows:
            parts.append(Markup("{} {}").format(name, " / ".join(
                f"{_num(lv.get('mean_ms'))} ms at {100 * lv['utilization']:.0f} %" if finite(lv.get("utilization"))
                else _num(lv.get("mean_ms")) for lv in rows)))
    if not parts:
        return Markup("")
    return Markup(" Passes and one-way delays are the networks' own, served under traffic (mean pass at each "
                  "measured core utilization: {}; each point draws them at its own utilization).").format(
        Markup("; ").join(parts))


def _meta(s: Mapping[str, Any]) -> list[str]:
    bits = [f"{label} {s[key]}" for key, label in (("created", "created"), ("seed", "seed"), ("device", "device"))
            if s.get(key) is not None]
    versions = s.get("versions") or {}
    if versions:
        bits.append(" ".join(f"{k} {v}" for k, v in versions.items()))
    if s.get("migrated_from"):
        bits.append(f"summary schema {s['migrated_from']} (read as {s.get('schema_version')})")
    return bits


def build_html(data: ResultData, figures: Sequence[FigureEntry], colors: Mapping[str, str],
               coding: pd.DataFrame) -> str:
    """The whole page as one string (deterministic for a given folder, so re-rendering is idempotent)."""
    s = data.summary
    base, _ = baseline_policy(data)
    headline = None
    if data.policies:
        where = data.point_label(data.headline_point) if len(data.points) > 1 else None
        headline = {"where": where, "takeaway": takeaway(data.policies, base),
                    "table": headline_table(data.policies, colors)}
    sweep = None
    if data.sweep_axis is not None and data.sweep is not None:
        axes = data.axes or [data.sweep_axis]
        sweep = {"points": data.sweep["point"].nunique(), "policies": data.sweep["policy"].nunique(),
                 "table": sweep_table(data.sweep, axes, data.policy_order)}
    live = s.get("live_check")
    live_where = data.point_label(live.get("point", data.headline_point)) if live else None
    description = s.get("description").strip() if isinstance(s.get("description"), str) else ""
    return _PAGE.render(
        s=s, css=CSS, meta=_meta(s), description=description, lead=_lead(data),
        latency_model=latency_model_line(s),
        versus=versus_baseline(data) if len(data.points) else None, headline=headline,
        figures=[{"name": f.name, "alt": f.alt, "caption": f.caption, "b64": base64.b64encode(f.png).decode("ascii")}
                 for f in figures],
        accuracy=accuracy_table(data, colors), sweep=sweep,
        coding=coding_table(coding, s.get("coding")) if len(coding) else None,
        parity=parity_table(s["parity"]) if s.get("parity") else None,
        profile=profile_table(s["profile"], _model_name(s)) if s.get("profile") else None,
        live=live_table(live, live_where) if live else None, notes=data.notes, scenario_toml=data.scenario_toml)
