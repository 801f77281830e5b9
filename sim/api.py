"""Public entry points: simulate one config under every policy on common random numbers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from policies.codes import BACKUP, CODED, HOW, SPARE, host_name, mask_servers
from policies.parity import companions_column
from sim.config import SimConfig
from sim.draws import Draws, draw
from sim.engine import FastEngine, RunOutput
from sim.errors import SimConfigError
from sim.parse import parse_config
from sim.plan import Plan, make_plan
from sim.stats import across_replications, latency_summary

Engine = Literal["fast", "reference"]


@dataclass
class SimResult:
    """records: one row per (policy, query); summary: per policy metrics; servers: per (policy, server)."""

    config: SimConfig
    seed: int
    records: pd.DataFrame
    summary: dict[str, dict[str, Any]]
    servers: pd.DataFrame
    draws: Draws = field(repr=False)


def run_plan(plan: Plan, draws: Draws, engine: Engine = "fast") -> RunOutput:
    """Run one policy plan with the chosen engine (the reference engine exists for cross-checks)."""
    if engine == "fast":
        return FastEngine(plan, draws).run()
    if engine == "reference":
        from sim.reference import ReferenceEngine

        return ReferenceEngine(plan, draws).run()
    raise SimConfigError(f"sim config: unknown engine {engine!r} (choose fast or reference)")


def _mask_strings(mask: np.ndarray) -> np.ndarray:
    uniq, inv = np.unique(mask, return_inverse=True)
    names = np.array([",".join(map(str, mask_servers(m))) for m in uniq], dtype=object)
    return names[inv]


def _model_names(model: np.ndarray, names: list[str]) -> pd.Categorical:
    """Each query's model name ('ensemble' for -1), categories sorted as pandas infers them from the values."""
    present = np.unique(model)
    labels = ["ensemble" if m < 0 else names[m] for m in present]
    cats = sorted(set(labels))
    lut = np.asarray([cats.index(label) for label in labels], np.int32)
    return pd.Categorical.from_codes(lut[np.searchsorted(present, model)], cats)


def _records(cfg: SimConfig, plan: Plan, draws: Draws, out: RunOutput) -> pd.DataFrame:
    n = draws.n
    n_warm = int(cfg.warmup_fraction * n)
    model = draws.model
    names = list(cfg.model_names) if cfg.model_names else [str(i) for i in range(cfg.n_experts)]
    frame = pd.DataFrame(
        {  # categorical columns built from codes: no per-query strings, even transiently
            "policy": pd.Categorical.from_codes(np.zeros(n, np.int8), [plan.name]),
            "query_id": np.arange(n, dtype=np.int64),
            "kind": pd.Categorical.from_codes((model < 0).astype(np.int8), ["routed", "ensemble"]),
            "model": model,
            "model_name": _model_names(model, names),
            "sample_id": draws.sample_id,
            "arrival_ms": draws.arrival_ms,
            "finish_ms": out.finish_ms,
            "latency_ms": out.finish_ms - draws.arrival_ms,
            "answered_by": pd.Categorical.from_codes(out.how.astype(np.int64), categories=list(HOW)),
            "servers_used": _mask_strings(out.mask),
            "answer_mask": out.mask,
            "n_tasks": out.n_tasks,
            "server_ms": out.server_ms,
            "warmup": np.arange(n) < n_warm,
        }
    )
    decodes = out.notes.get("parity_decodes")
    if decodes is not None:  # a parity decode: the queries whose own outputs (and group parity) made the answer
        frame["parity_others"] = np.asarray(companions_column(decodes, n), dtype=object)
    return frame


def _summary(cfg: SimConfig, plan: Plan, rec: pd.DataFrame, out: RunOutput) -> dict[str, Any]:
    meas = rec[~rec["warmup"].to_numpy()]
    lat = meas["latency_ms"].to_numpy()
    s: dict[str, Any] = {"policy": plan.name, "kind": plan.kind, "dispatch": plan.dispatch}
    s["n_queries"] = len(rec)
    s["n_measured"] = len(meas)
    s.update(latency_summary(lat, cfg.batches, cfg.confidence))
    kinds = meas["kind"].to_numpy()
    if len(set(kinds)) > 1:  # routed and ensemble queries mixed: report each kind on its own as well
        s["by_kind"] = {
            k: latency_summary(lat[kinds == k], cfg.batches, cfg.confidence) | {"n": int((kinds == k).sum())}
            for k in ("routed", "ensemble")
        }
    util = out.busy_ms / out.end_ms if out.end_ms > 0 else np.zeros_like(out.busy_ms)
    s["utilization_pct"] = float(np.mean(util)) * 100
    s["utilization_per_server_pct"] = [float(u) * 100 for u in util]
    s["spare_servers"] = [k for k, h in enumerate(plan.hosts) if h == SPARE]
    s["coded_servers"] = [k for k, h in enumerate(plan.hosts) if h == CODED]
    s["backup_servers"] = [k for k, h in enumerate(plan.hosts) if h == BACKUP]
    s["server_ms_per_query"] = float(meas["server_ms"].mean()) if len(meas) else float("nan")
    s["cancelled_ms"] = float(out.cancelled_ms.sum())
    s["lost_ms"] = float(out.lost_ms.sum())
    s["end_ms"] = out.end_ms
    if plan.delay_ms is not None:  # the hedge delay where it started and where it ended (running), mean over experts
        s["hedge_delay_start_ms"] = float(np.mean(plan.delay_ms))
        s["hedge_delay_end_ms"] = float(np.mean(out.delay_end_ms or plan.delay_ms))
    denied = out.notes.get("hedges_denied")
    if denied is not None:  # a hedge budget: the measured queries whose hedge it held back, in percent
        ids = meas["query_id"].to_numpy()
        s["hedges_denied_pct"] = float(np.isin(ids, np.asarray(denied, np.int64)).mean()) * 100 if len(ids) else 0.0
    counts = meas["answered_by"].value_counts(normalize=True)
    for h in HOW:  # direct_pct, replica_pct, hedge_pct, decoded_pct, backup_pct: shares of measured queries
        s[f"{h}_pct"] = float(counts.get(h, 0.0)) * 100
    return s


@dataclass
class PolicyRun:
    """One policy's run at a point: its plan, records (one row per query), summary and per-server table."""

    plan: Plan
    records: pd.DataFrame
    summary: dict[str, Any]
    servers: pd.DataFrame


def _servers_frame(plan: Plan, out: RunOutput) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "policy": plan.name,
            "server": np.arange(plan.n_servers),
            "hosts": [host_name(h) for h in plan.hosts],
            "busy_ms": out.busy_ms,
            "utilization_pct": out.busy_ms / out.end_ms * 100,
            "cancelled_ms": out.cancelled_ms,
            "lost_ms": out.lost_ms,
        }
    )


def simulate_each(
    config: SimConfig | Mapping[str, Any],
    seed: int = 0,
    *,
    policies: Sequence[str] | None = None,
    engine: Engine = "fast",
) -> tuple[SimConfig, Draws, Iterator[PolicyRun]]:
    """Check the input and draw the point's random numbers now; then run its policies one at a time as the
    returned iterator is consumed, so a caller that writes each policy's records away holds one policy's at a
    time. Every policy runs on the same draws. The summaries lack `extra_load_vs_uncoded_pct` until
    `compare_loads` is given all of them. Raises SimConfigError (one line) before any work."""
    cfg = parse_config(config)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise SimConfigError(f"sim config: seed must be an integer >= 0 (got {seed!r})")
    specs = [cfg.policy(p) for p in policies] if policies is not None else list(cfg.policies)
    draws = draw(cfg, int(seed))
    names = [s.name for s in specs]

    def runs() -> Iterator[PolicyRun]:
        for spec in specs:
            plan = make_plan(cfg, spec, draws)
            out = run_plan(plan, draws, engine)
            rec = _records(cfg, plan, draws, out)
            rec["policy"] = pd.Categorical.from_codes(np.full(len(rec), names.index(plan.name), np.int16), names)
            run = PolicyRun(plan, rec, _summary(cfg, plan, rec, out), _servers_frame(plan, out))
            del plan, out, rec  # the next policy runs without this one's arrays, once the caller drops them
            yield run
            del run

    return cfg, draws, runs()


def compare_loads(summary: dict[str, dict[str, Any]], kinds: Mapping[str, str]) -> None:
    """Set each policy's `extra_load_vs_uncoded_pct`: its server time per query against the uncoded policy's
    (`kinds`: policy name -> kind; None without an uncoded policy)."""
    base = next((summary[name] for name, kind in kinds.items() if kind == "uncoded" and name in summary), None)
    for s in summary.values():
        s["extra_load_vs_uncoded_pct"] = (
            (s["server_ms_per_query"] / base["server_ms_per_query"] - 1.0) * 100 if base is not None else None
        )


def simulate(
    config: SimConfig | Mapping[str, Any],
    seed: int = 0,
    *,
    policies: Sequence[str] | None = None,
    engine: Engine = "fast",
) -> SimResult:
    """Simulate every policy of `config` (or the named subset) on the same random numbers from `seed`.

    Raises SimConfigError (a ValueError, one line) for bad input before simulating anything.
    """
    cfg, draws, runs = simulate_each(config, seed, policies=policies, engine=engine)
    frames, summary, servers, kinds = [], {}, [], {}
    for run in runs:
        frames.append(run.records)
        summary[run.plan.name] = run.summary
        servers.append(run.servers)
        kinds[run.plan.name] = run.plan.kind
    compare_loads(summary, kinds)
    records = pd.concat(frames, ignore_index=True)
    return SimResult(cfg, int(seed), records, summary, pd.concat(servers, ignore_index=True), draws)


def replication_seeds(seed: int, n: int) -> list[int]:
    """Independent seeds for n replications, derived from one seed."""
    ss = np.random.SeedSequence(seed, spawn_key=(1_000,))
    return [int(x) for x in ss.generate_state(n, dtype=np.uint32)]


def replicate(
    config: SimConfig | Mapping[str, Any], seed: int = 0, n_replications: int = 10, **kw: Any
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Independent replications: per policy and metric, (mean, lo, hi) across replications.

    Warm-up is discarded in each replication; the CI is valid whatever the autocorrelation inside a run.
    """
    cfg = parse_config(config)
    if n_replications < 2:
        raise SimConfigError("sim config: n_replications must be >= 2")
    keys = ["mean_ms", "p50_ms", "p95_ms", "p99_ms", "p999_ms", "utilization_pct", "server_ms_per_query"]
    vals: dict[str, dict[str, list[float]]] = {}
    for sd in replication_seeds(seed, n_replications):
        res = simulate(cfg, sd, **kw)
        for pol, s in res.summary.items():
            for k in keys:
                vals.setdefault(pol, {}).setdefault(k, []).append(s[k])
    return {pol: {k: across_replications(v, cfg.confidence) for k, v in d.items()} for pol, d in vals.items()}
