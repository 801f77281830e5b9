"""`coinsim testbed`: serve a scenario's sweep points for real, simulate the same points, compare.

1. the networks are built exactly as `coinsim run` builds them (cache, coding, isolated latency profile);
2. every expert and coded model (and the generalist backup, when it is another network) is saved (safetensors)
   and N + r server processes load them (testbed/);
3. at every point the simulator's own draws (arrivals, models, samples, straggler factors per (query, server))
   are replayed in wall-clock time under every policy, `repeats` times, policies in a rotating order;
4. each answer's correctness is computed from the outputs that actually came back (decoded where decoded);
5. the simulator runs the same points twice: with the isolated profile (what `coinsim run` uses) and with the
   service times the servers measured in situ, under load, plus the measured transport and dispatch delays
   where the scenario's `[sim.network]` asks for them;
6. `fidelity.csv` puts simulated next to measured for mean, p50, p95, p99 and p99.9: the measured value is the
   metric of all repeats' queries pooled, with a 95 % two-level bootstrap interval (repeats, then queries), and
   each cell gets a verdict (within the limit / inside the measured interval / off, `LIMITS_PCT`); the repeats'
   own spread and median and a two-sample KS test are kept beside it. `ranking.csv` says, per point and
   variant, whether the simulator orders the policies the testbed tells apart at p99 as the testbed does.
   The headline variant is 'predicted' when it was run, else 'model'; the report draws measured-vs-simulated CDFs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import zlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import atomic
from models.progress import say
from policies.codes import BACKUP, CODED, PARITY, host_name, mask_servers
from policies.rules import coded_rows
from resultschema import CALIBRATION, OTHER_RUN, PROFILE, SCENARIO, SERVED_PROFILE, SUMMARY
from scenarios import served as served_model
from scenarios.networks import backup_network, parity_network_index, save_networks, served_networks
from scenarios.parity_join import judge_decoded
from scenarios.points import AnswerTables, join_correctness, run_point, solve_missing
from scenarios.runner import (
    NetworkFacts,
    _clean_toml,
    _jsonable,
    _profile_frame,
    _versions,
    build_point_configs,
    latency_model_name,
    prepare_networks,
    render_or_warn,
    served_frame,
    served_pass_profile,
    serving_calibration,
)
from scenarios.schema import Scenario, SimTable, axis_column

METRICS = {"mean": None, "p50": 50.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


def latency_metrics(latency_ms: np.ndarray) -> dict[str, float]:
    """mean and the percentiles fidelity is judged on (numpy's linear interpolation)."""
    lat = np.asarray(latency_ms, float)
    return {name: float(lat.mean() if q is None else np.percentile(lat, q)) for name, q in METRICS.items()}


def policy_of(plan: Any, backup_net: int | None = None, parity_nets: Any = None, encoder: str = "sum") -> Any:
    """The testbed's view of one simulator Plan (same hosts, hedge delays, expected service per server);
    `backup_net` is the generalist's network index (see `backup_network`), `parity_nets(k, dispatch)` each
    expert's parity network index (see `parity_network_index`) and `encoder` the parity encoder."""
    from testbed import Policy

    k = plan.options.get("k")
    return Policy(name=plan.name, kind=plan.kind, dispatch=plan.dispatch, hosts=tuple(plan.hosts),
                  n_experts=plan.n_experts, cancel=plan.cancel, fanout=plan.fanout, mean_ms=tuple(plan.mean_ms),
                  delay_ms=tuple(plan.delay_ms) if plan.delay_ms is not None else None,
                  delay_quantile=plan.delay_quantile, delay_window=plan.delay_window, backup_net=backup_net,
                  n_base=plan.base, balancer=plan.balancer, groups=plan.groups,
                  options=tuple(sorted(plan.options.items())),
                  parity_nets=parity_nets(k, plan.dispatch) if plan.kind == "parity" and parity_nets else (),
                  encoder=encoder, cells=plan.cells,
                  coded_rows=tuple(coded_rows(plan.hosts.count(CODED), len(plan.code_groups), plan.cells)))


def host_names(hosts: tuple[int, ...]) -> list[str]:
    """The simulator-join's names of what each server hosts ('0'..'N-1', 'coded', 'spare', 'backup')."""
    return [host_name(h) for h in hosts]


def workload_of(draws: Any, offsets: np.ndarray, mode: str) -> Any:
    """The simulator's draws as a replayable workload (input row = the sample the simulator joins with)."""
    from testbed import Workload

    model = draws.model
    row = np.where(model >= 0, offsets[np.maximum(model, 0)] + draws.sample_id, draws.sample_id)
    return Workload(draws.arrival_ms, model, row, draws.task_factor, mode)


def correct_from_outputs(records: pd.DataFrame, outputs: np.ndarray, answers: AnswerTables,
                         hosts: tuple[int, ...], coded_models: Sequence[int] = ()) -> np.ndarray:
    """Was each answer right, judged on the outputs the servers actually sent (decoded where decoded; a backup
    answer is the generalist's own output from the backup server, undecoded, as `AnswerTables.backup_answers`
    judges it)? `coded_models[k]`: the coded model the k-th coded server ran (empty: model k)."""
    n_experts = answers.n_experts
    coded_servers = [s for s, h in enumerate(hosts) if h == CODED]
    row_of = list(coded_models) or list(range(len(coded_servers)))
    model = records["model"].to_numpy()
    rows = records["row"].to_numpy()
    labels = answers.labels[rows]
    masks = records["answer_mask"].to_numpy()
    decoded = (records["answered_by"] == "decoded").to_numpy()
    by_backup = (records["answered_by"] == "backup").to_numpy()
    correct = np.zeros(len(records), bool)
    judged = by_backup.copy()  # answers judged apart, left out of the grouping below
    if "parity_others" in records:  # decoded from a parity output
        by_parity = (records["parity_others"].fillna("").astype(str) != "").to_numpy()
        index = np.flatnonzero(by_parity)
        correct[index] = parity_decoded_outputs(records, outputs, hosts, index).argmax(-1) == labels[index]
        judged |= by_parity
    if by_backup.any():
        index = np.flatnonzero(by_backup)
        used = [mask_servers(m) for m in masks[index]]  # the one backup server that answered
        if any(len(s) != 1 or hosts[s[0]] != BACKUP for s in used):
            raise ValueError("testbed: a backup answer must come from exactly one backup server")
        server = np.array([s[0] for s in used])
        pred = answers.generalist_answers(outputs[index, server].astype(np.float64), model[index])
        correct[index] = pred == labels[index]
    frame = pd.DataFrame({"m": model, "mask": masks, "dec": decoded})[~judged]
    for (m, mask, dec), group in frame.groupby(["m", "mask", "dec"]):
        index = group.index.to_numpy()
        back = mask_servers(mask)
        if m >= 0 and not dec:
            correct[index] = outputs[index, back[0]].argmax(-1) == labels[index]
            continue
        expert_outs = np.zeros((n_experts, len(index), outputs.shape[-1]), np.float64)
        present = set()
        for s in back:
            if hosts[s] >= 0:
                expert_outs[hosts[s]] = outputs[index, s]
                present.add(hosts[s])
        coded_back = [row_of[k] for k, s in enumerate(coded_servers) if s in back]
        coded_outs = np.zeros((answers.matrix.shape[0], len(index), outputs.shape[-1]), np.float64)
        for k, s in enumerate(coded_servers):
            if s in back:
                coded_outs[row_of[k]] = outputs[index, s]
        missing = [j for j in range(n_experts) if j not in present]
        if missing:
            expert_outs[missing] = solve_missing(expert_outs, coded_outs, answers.matrix, missing, coded_back)
            if m < 0 and np.isnan(expert_outs[missing]).any():
                raise ValueError(f"testbed: an ensemble answer from servers {back} leaves an expert undecoded")
        if m >= 0:
            correct[index] = expert_outs[m].argmax(-1) == labels[index]
        else:
            z = np.exp(expert_outs - expert_outs.max(-1, keepdims=True))
            correct[index] = (z / z.sum(-1, keepdims=True)).sum(0).argmax(-1) == labels[index]
    return correct


def judge_parity_rows(records: pd.DataFrame, plan: Any, facts: NetworkFacts, column: str, encoder: str = "sum"
                      ) -> pd.DataFrame:
    """`records` (one run's, or a simulated point's) with `column` of the parity-decoded answers of `plan`'s policy
    judged the simulator's way: the group's parity network on its inputs, less the companions' outputs from the
    answer tables (scenarios.parity_join)."""
    if plan.kind != "parity" or "parity_others" not in records or not facts.parity_models:
        return records
    mine = records[records["policy"] == plan.name]
    index, correct, _ = judge_decoded(mine, int(plan.options["k"]), plan.dispatch, encoder, facts.answers,
                                      facts.parity_models, facts.test_inputs)
    if len(index):
        records = records.copy()
        records.loc[index, column] = correct
    return records


def parity_decoded_outputs(records: pd.DataFrame, outputs: np.ndarray, hosts: tuple[int, ...],
                           index: np.ndarray) -> np.ndarray:
    """The decoded outputs of the parity-decoded queries at `index` (positions = query ids), from what the
    servers sent: the group's parity output (kept at the query's own row, on the parity server its mask names)
    less each companion's own output (on the one server its answer mask names)."""
    masks = records["answer_mask"].to_numpy()
    companions = records["parity_others"].to_numpy()
    out = np.zeros((len(index), outputs.shape[-1]), np.float64)
    for j, i in enumerate(index):
        parity = [s for s in mask_servers(masks[i]) if hosts[s] == PARITY]
        if len(parity) != 1:
            raise ValueError(f"testbed: parity-decoded query {i} names {len(parity)} parity servers in its mask")
        out[j] = outputs[i, parity[0]]
        for c in (int(q) for q in str(companions[i]).split(",")):
            own = mask_servers(masks[c])
            if len(own) != 1:
                raise ValueError(f"testbed: the companion {c} of parity-decoded query {i} was not answered directly")
            out[j] -= outputs[c, own[0]]
    return out


def overlaps(tasks: pd.DataFrame) -> np.ndarray:
    """Per task: how many other tasks were computing (any server) at the middle of its forward pass, from the
    servers' own stamps (one host's clock)."""
    from calibration.analysis import overlaps as count

    start = (tasks["server_recv_clock_ms"] + tasks["queue_ms"]).to_numpy()
    return count(start, start + tasks["compute_ms"].to_numpy())


def idle_arrivals(tasks: pd.DataFrame) -> np.ndarray:
    """Per task: did it reach a server that was idle (its previous task had ended)? A server reads its socket
    only between passes, so only for such tasks does the server's receive stamp time the message's arrival."""
    from calibration.analysis import idle_at_arrival

    start = (tasks["server_recv_clock_ms"] + tasks["queue_ms"]).to_numpy()
    end = start + (tasks["compute_ms"] + tasks["held_ms"]).to_numpy()
    keys = tasks[["repeat", "policy", "server"]].astype(str).agg("/".join, axis=1).to_numpy()
    return idle_at_arrival(keys, tasks["server_recv_clock_ms"].to_numpy(), end)


def cycles(tasks: pd.DataFrame) -> np.ndarray:
    """Per task: how long its server was taken by it — from its start to the start of the server's next task,
    where that next task was already queued when this one ended (so the server went straight on). Besides the
    pass (and a straggle), that covers sending the output, reading the socket and being scheduled again: work
    the server does per task that no isolated profile sees. NaN where the server went idle after the task."""
    from calibration.passes import next_start

    start = (tasks["server_recv_clock_ms"] + tasks["queue_ms"]).to_numpy()
    end = start + (tasks["compute_ms"] + tasks["held_ms"]).to_numpy()
    keys = tasks[["repeat", "policy", "server"]].astype(str).agg("/".join, axis=1).to_numpy()
    return next_start(keys, tasks["server_recv_clock_ms"].to_numpy(), start, end) - start


def in_situ_service(tasks: pd.DataFrame, names: list[str], fallback: dict[str, np.ndarray],
                    alone: bool = False) -> dict[str, np.ndarray]:
    """Per network: how long a server was taken by a task that did not straggle, measured while serving — its
    cycle (see `cycles`) where the server went straight on, else its pass (`alone`: only passes during which
    no other server was computing, the uncontended service time)."""
    done = tasks[(tasks["status"] == "done") & (tasks["factor"] == 1.0)]
    if alone:
        done = done[done["overlap"] == 0]
    out = {}
    for k, name in enumerate(names):
        mine = done[done["net"] == k]
        ms = mine["cycle_ms"].to_numpy()
        ms = ms[np.isfinite(ms) & (ms > 0)]
        if len(ms) < 20:
            ms = (mine["compute_ms"] + mine["held_ms"]).to_numpy()
        out[name] = ms if len(ms) >= 20 else fallback[name]
    return out


def pin_hedge_delays(config: Any, plans: list[Any]) -> Any:
    """The same hedge delays, in ms, as the testbed served with: a delay given as a percentile ('p95') is of the
    service times of the profile the testbed's plan was made from, and must not move with the variant's own."""
    return pin_delays(config, {plan.name: plan.delay_ms for plan in plans})


def pin_delays(config: Any, delays: dict[str, Any]) -> Any:
    """The config with each named policy's hedge delay set to the given ms per expert (None or absent: as it is)."""
    from sim.config import PolicySpec

    policies = tuple(PolicySpec.model_validate({**p.model_dump(), "delay_ms": tuple(delays[p.name])})
                     if delays.get(p.name) is not None else p for p in config.policies)
    return config.model_copy(update={"policies": policies})


NOISY_CORES = 0.2  # other processes' CPU during a run above which the run is said to be disturbed


def host_summary(loads: list[Any]) -> dict[str, Any]:
    """Per point: the cores other processes kept busy and the hypervisor stole during its runs, and the cores the
    run's own processes used (median, max over the runs; None where the OS does not tell)."""
    out: dict[str, Any] = {}
    for key in ("other_cores", "steal_cores", "own_cores"):
        values = [getattr(load, key) for load in loads if getattr(load, key) is not None]
        out[f"{key}_median"] = float(np.median(values)) if values else None
        out[f"{key}_max"] = float(np.max(values)) if values else None
    return out


def shared_cores(device: str, frontend_cores: list[float]) -> float:
    """Cores the servers share: the machine's CPUs minus what the frontend process used (median over runs);
    on a GPU, the one device every server's kernels share."""
    if device.startswith("cuda"):
        return 1.0
    return max(0.5, float((os.cpu_count() or 1) - np.median(frontend_cores)))


def measured_network(tasks: pd.DataFrame, cores: float | None = None, hold: str = "compute") -> Any:
    """The simulator's network model from what the testbed measured: out = from when a task was due (arrival or
    hedge timer) to its arrival in the server's queue (timed on tasks that found their server idle), back = from
    its end at the server to the frontend holding the output (both on one host's clock), and cancels that let
    the forward pass finish, as the servers do;
    with `cores`, the servers also share that many cores (processor sharing), a straggle spent as `hold` says
    (the testbed's straggle mode: a stall holds the server off the cores)."""
    from sim.config import Network, Service

    done = tasks[tasks["status"] == "done"]
    idle = done[done["idle_arrival"]] if done["idle_arrival"].sum() >= 20 else done
    out = idle["out_ms"].to_numpy()  # a busy server reads its socket late: only idle arrivals time the trip
    back = done["back_ms"].to_numpy()
    out, back = out[np.isfinite(out) & (out > 0)], back[np.isfinite(back) & (back > 0)]

    def update(config: Any) -> dict[str, Any]:
        network = Network.model_validate({"out": {"kind": "empirical", "samples_ms": out.tolist()},
                                          "back": {"kind": "empirical", "samples_ms": back.tolist()}})
        service = Service.model_validate({**config.service.model_dump(), "cancel_in_service": "finish_pass",
                                          "cores": cores})
        stragglers = config.stragglers.model_copy(update={"hold": hold})
        return {"network": network, "service": service, "stragglers": stragglers}

    return update


LIMITS_PCT: dict[str, float] = {"mean": 15.0, "p50": 15.0, "p95": 20.0, "p99": 25.0, "p999": 40.0}
"""|relative error| a simulated metric may have and still count as "within the limit". p95 sits between the
body (15 %) and the tail (25 %): over a few thousand pooled queries it rests on ~5x more queries above it than p99
does, so it is held tighter than p99 but not as tight as the median."""
MAX_HALF_WIDTH_PCT = 20.0
"""A measured interval wider than this (half width / pooled value) is too loose to excuse an error."""
BOOTSTRAP_RESAMPLES = 400
VERDICTS = ("within the limit", "inside the measured interval", "off")
VERDICT_MARKS = {"within the limit": "✓", "inside the measured interval": "~", "off": "✗"}
IN_SAMPLE_SERVICES = ("in_situ", "in_situ+network", "model")
"""Variants whose parameters come from the very run they are compared with: diagnostics, not predictions."""
FIDELITY_VALUE_COLUMNS = frozenset({
    "service", "policy", "metric", "simulated_ms", "measured_ms", "measured_pooled_ms", "measured_lo_ms",
    "measured_hi_ms", "half_width_pct", "n_measured", "measured_median_of_repeats_ms", "rel_error_pct", "limit_pct",
    "verdict", "repeat_spread_pct", "repeat_min_ms", "repeat_max_ms", "repeats", "ks_stat", "ks_p"})
"""fidelity.csv columns that are not the point's sweep coordinates (old and new layouts)."""


def headline_service(services: Iterable[str]) -> str | None:
    """The variant fidelity is judged on: 'predicted' (calibration + isolated profile only) when it was run,
    else the in-sample 'model', else another run of a comparison (`OTHER_RUN`); None when none is there."""
    present = set(services)
    return next((s for s in ("predicted", "model", OTHER_RUN) if s in present), None)


def _metric_rows(samples: np.ndarray) -> np.ndarray:
    """(b, n) latency samples -> (b, len(METRICS)), the same definitions as `latency_metrics`."""
    qs = [q for q in METRICS.values() if q is not None]
    out = np.empty((samples.shape[0], len(METRICS)))
    nan = np.isnan(samples).any()
    mean = np.nanmean(samples, axis=1) if nan else samples.mean(axis=1)
    pct = (np.nanpercentile if nan else np.percentile)(samples, qs, axis=1)
    k = 0
    for j, q in enumerate(METRICS.values()):
        if q is None:
            out[:, j] = mean
        else:
            out[:, j] = pct[k]
            k += 1
    return out


def bootstrap_metrics(repeats: Sequence[np.ndarray], rng: np.random.Generator,
                      resamples: int = BOOTSTRAP_RESAMPLES, chunk_elements: int = 4_000_000) -> np.ndarray:
    """(resamples, len(METRICS)): each row the pooled metrics of one two-level bootstrap sample — as many repeats
    as there are, drawn with replacement, then within each drawn repeat as many queries as it has, drawn with
    replacement. Vectorised over resamples in chunks of at most ~`chunk_elements` latencies."""
    arrays = [np.asarray(r, float) for r in repeats if len(r)]
    if not arrays:
        return np.full((resamples, len(METRICS)), np.nan)
    sizes = np.array([len(a) for a in arrays])
    n_rep, n_max = len(arrays), int(sizes.max())
    table = np.full((n_rep, n_max), np.nan)
    for i, a in enumerate(arrays):
        table[i, : len(a)] = a
    equal = bool((sizes == n_max).all())
    step = max(1, chunk_elements // (n_rep * n_max))
    out = np.empty((resamples, len(METRICS)))
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        chosen = rng.integers(n_rep, size=(b, n_rep))
        if equal:
            within = rng.integers(n_max, size=(b, n_rep, n_max))
        else:  # draw n_j queries from a chosen repeat j of n_j; the padding slots stay NaN
            n_chosen = sizes[chosen][..., None]
            within = np.minimum((rng.random((b, n_rep, n_max)) * n_chosen).astype(np.int64), n_chosen - 1)
        sample = table[chosen[..., None], within]
        if not equal:
            sample[np.arange(n_max) >= sizes[chosen][..., None]] = np.nan
        out[start:start + b] = _metric_rows(sample.reshape(b, n_rep * n_max))
    return out


def pooled_intervals(repeats: Sequence[np.ndarray], rng: np.random.Generator,
                     resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Per metric: the pooled value over all repeats' queries, its percentile-bootstrap interval (two-level, see
    `bootstrap_metrics`), the half width in % of the pooled value, and the number of queries pooled."""
    pooled_lat = np.concatenate([np.asarray(r, float) for r in repeats])
    pooled = latency_metrics(pooled_lat)
    boots = bootstrap_metrics(repeats, rng, resamples)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(boots, [tail, 100.0 - tail], axis=0)
    return {m: {"measured_pooled_ms": pooled[m], "measured_lo_ms": float(lo[j]), "measured_hi_ms": float(hi[j]),
                "half_width_pct": 100.0 * float(hi[j] - lo[j]) / 2.0 / pooled[m], "n_measured": len(pooled_lat)}
            for j, m in enumerate(METRICS)}


def verdict(rel_error_pct: float, limit_pct: float, simulated_ms: float, lo_ms: float, hi_ms: float,
            half_width_pct: float) -> str:
    """'within the limit' if |error| <= limit; else 'inside the measured interval' if the simulated value lies in
    the measured interval and that interval is tight enough (half width <= MAX_HALF_WIDTH_PCT); else 'off'."""
    if abs(rel_error_pct) <= limit_pct:
        return VERDICTS[0]
    if lo_ms <= simulated_ms <= hi_ms and half_width_pct <= MAX_HALF_WIDTH_PCT:
        return VERDICTS[1]
    return VERDICTS[2]


def fidelity_rows(point: int, coords: dict[str, Any], service: str, simulated: pd.DataFrame,
                  measured: pd.DataFrame, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (policy, metric): simulated vs measured, spread, KS test, verdict.

    The measured reference is the metric of all repeats' non-warm-up queries pooled (`measured_pooled_ms`), with
    a 95 % two-level bootstrap interval over repeats and queries; `rel_error_pct` is against that pooled value,
    so the error and the interval describe the same statistic. The median of the repeats' own metrics is kept as
    `measured_median_of_repeats_ms` (what older folders' `measured_ms` was). The bootstrap of a (point, policy)
    is seeded from (seed, point, policy) only, so every variant is judged against the same interval."""
    from scipy.stats import ks_2samp

    rows = []
    for policy, sim in simulated.groupby("policy", sort=False, observed=True):
        real = measured[measured["policy"] == policy]
        if real.empty:
            continue
        sim_lat = sim.loc[~sim["warmup"], "latency_ms"].to_numpy()
        repeats = [g.loc[~g["warmup"], "latency_ms"].to_numpy() for _, g in real.groupby("repeat")]
        per_repeat = [latency_metrics(r) for r in repeats]
        pooled = real.loc[~real["warmup"], "latency_ms"].to_numpy()
        rng = np.random.default_rng([seed, point, zlib.crc32(str(policy).encode())])
        intervals = pooled_intervals(repeats, rng)
        ks = ks_2samp(sim_lat, pooled)
        sim_m = latency_metrics(sim_lat)
        for metric in METRICS:
            values = np.array([r[metric] for r in per_repeat])
            med = float(np.median(values))
            iv = intervals[metric]
            rel = 100.0 * (sim_m[metric] - iv["measured_pooled_ms"]) / iv["measured_pooled_ms"]
            rows.append({"point": point, **coords, "service": service, "policy": str(policy), "metric": metric,
                         "simulated_ms": sim_m[metric], **iv, "measured_median_of_repeats_ms": med,
                         "rel_error_pct": rel, "limit_pct": LIMITS_PCT[metric],
                         "verdict": verdict(rel, LIMITS_PCT[metric], sim_m[metric], iv["measured_lo_ms"],
                                            iv["measured_hi_ms"], iv["half_width_pct"]),
                         "repeat_spread_pct": 100.0 * float(values.max() - values.min()) / med,
                         "repeat_min_ms": float(values.min()), "repeat_max_ms": float(values.max()),
                         "repeats": len(values), "ks_stat": float(ks.statistic), "ks_p": float(ks.pvalue)})
    return rows


def ranking_rows(fidelity_table: pd.DataFrame, metric: str = "p99") -> list[dict[str, Any]]:
    """Per (point, service): of the policy pairs whose measured intervals of `metric` do not overlap (the
    testbed tells them apart), how many the simulator orders the same way; a tie in simulation disagrees.
    Empty for a fidelity table without intervals (folders written before them)."""
    if fidelity_table.empty or "measured_lo_ms" not in fidelity_table:
        return []
    coord_cols = [c for c in fidelity_table.columns if c != "point" and c not in FIDELITY_VALUE_COLUMNS]
    rows = []
    table = fidelity_table[fidelity_table["metric"] == metric]
    for (point, service), g in table.groupby(["point", "service"], sort=True):
        cells = g.drop_duplicates("policy").to_dict("records")
        n_pairs, n_agree, disagree = 0, 0, []
        for i, a in enumerate(cells):
            for b in cells[i + 1:]:
                if a["measured_hi_ms"] < b["measured_lo_ms"]:
                    fast, slow = a, b
                elif b["measured_hi_ms"] < a["measured_lo_ms"]:
                    fast, slow = b, a
                else:
                    continue
                n_pairs += 1
                if fast["simulated_ms"] < slow["simulated_ms"]:
                    n_agree += 1
                else:
                    disagree.append(f"{fast['policy']} < {slow['policy']} measured "
                                    f"({fast['measured_pooled_ms']:.3g} vs {slow['measured_pooled_ms']:.3g} ms), "
                                    f"simulated {fast['simulated_ms']:.3g} vs {slow['simulated_ms']:.3g} ms")
        rows.append({"point": point, **{c: g[c].iloc[0] for c in coord_cols}, "service": service,
                     "metric": metric, "n_pairs_distinguishable": n_pairs, "n_agree": n_agree,
                     "disagreeing": "; ".join(disagree)})
    return rows


PACE_SLOW_PCT = 10.0
"""A served run whose lone passes took more than this much longer than the testbed run's usual is counted slow."""


def machine_pace(tasks: pd.DataFrame) -> pd.DataFrame:
    """How fast the machine ran the networks during each served run (point, policy, repeat), in serving order.

    A run's pace is the median, over its lone passes (no other server computing at any moment of them, from the
    servers' stamps), of each pass over its network's median lone pass in the whole testbed run: `pace_pct` is
    how much longer (+) or shorter (−) in %. A diagnostic of the machine taken from the records, not a model
    parameter: on a shared host the same pass runs faster or slower from one minute to the next, and a run served
    while the machine was slow is slow in every latency, whatever the policy."""
    from calibration.passes import joined_passes

    ran = tasks[np.isfinite(tasks["compute_ms"])]  # every pass that ran (a cancel never cuts one short)
    columns = list(tasks.columns)
    keys = columns[:columns.index("repeat")] + ["policy", "repeat"]  # the point and its sweep coordinates lead
    runs = []
    for key, g in ran.groupby(keys, sort=False, observed=True):
        start = (g["server_recv_clock_ms"] + g["queue_ms"]).to_numpy()
        compute = g["compute_ms"].to_numpy()
        lone = joined_passes(g["server"].to_numpy(), start, start + compute)[0]
        runs.append({**dict(zip(keys, key, strict=True)), "started_ms": float(g["frontend_zero_clock_ms"].iloc[0]),
                     "net": g["net"].to_numpy()[lone], "pass_ms": compute[lone]})
    if not runs:
        return pd.DataFrame(columns=[*keys, "started_s", "lone_passes", "lone_pass_ms", "pace_pct"])
    nets = np.concatenate([r["net"] for r in runs])
    passes = np.concatenate([r["pass_ms"] for r in runs])
    usual = {int(k): float(np.median(passes[nets == k])) for k in np.unique(nets)}
    first = min(r["started_ms"] for r in runs)
    rows = []
    for r in runs:
        ratio = r["pass_ms"] / np.array([usual[int(k)] for k in r["net"]]) if len(r["net"]) else np.array([np.nan])
        rows.append({**{k: r[k] for k in keys}, "started_s": (r["started_ms"] - first) / 1000.0,
                     "lone_passes": int(len(r["net"])),
                     "lone_pass_ms": float(np.median(r["pass_ms"])) if len(r["pass_ms"]) else np.nan,
                     "pace_pct": 100.0 * (float(np.median(ratio)) - 1.0)})
    return pd.DataFrame(rows).sort_values("started_s", kind="stable").reset_index(drop=True)


def pace_summary(pace: pd.DataFrame) -> dict[str, Any]:
    """summary.json's `machine_pace`: the runs' spread of pace and how many ran slow (`PACE_SLOW_PCT`)."""
    known = pace["pace_pct"].dropna()
    if known.empty:
        return {}
    return {"runs": int(len(known)), "pace_pct_min": float(known.min()), "pace_pct_max": float(known.max()),
            "slow_runs": int((known > PACE_SLOW_PCT).sum()), "slow_pct": PACE_SLOW_PCT}


def pace_text(summary: dict[str, Any]) -> str:
    """One line for the CLI: how much the machine's pace moved over the served runs."""
    pace = summary.get("machine_pace") or {}
    if not pace:
        return ""
    return (f"machine pace: a run's lone passes took {pace['pace_pct_min']:+.0f} % to {pace['pace_pct_max']:+.0f} % "
            f"against the median over all runs; {pace['slow_runs']} of {pace['runs']} runs over "
            f"{pace['slow_pct']:g} % slower (pace.csv; a slow run is slow in every latency)")


def ranking_frame(fidelity_table: pd.DataFrame, metric: str = "p99") -> pd.DataFrame:
    """`ranking_rows` as the frame written to ranking.csv (with its header even when empty)."""
    rows = ranking_rows(fidelity_table, metric)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["point", "service", "metric",
                                                                "n_pairs_distinguishable", "n_agree",
                                                                "disagreeing"])


def fidelity_summary(fidelity_table: pd.DataFrame) -> dict[str, Any]:
    """Per service: cells by verdict per metric (every verdict named, zeros included) and the worst |error|."""
    out: dict[str, Any] = {}
    if fidelity_table.empty or "verdict" not in fidelity_table:
        return out
    for service, g in fidelity_table.groupby("service", sort=False):
        by_metric = {m: g[g["metric"] == m] for m in METRICS}
        out[str(service)] = {
            "verdicts": {m: {v: int((h["verdict"] == v).sum()) for v in VERDICTS} for m, h in by_metric.items()},
            "worst_abs_rel_error_pct": {m: float(h["rel_error_pct"].abs().max()) if len(h) else None
                                        for m, h in by_metric.items()}}
    return out


def ranking_summary(ranking: pd.DataFrame) -> dict[str, Any]:
    """Per service: pairs ordered as measured / pairs the testbed tells apart, over all points."""
    return {str(service): {"metric": str(g["metric"].iloc[0]), "agree": int(g["n_agree"].sum()),
                           "distinguishable": int(g["n_pairs_distinguishable"].sum())}
            for service, g in ranking.groupby("service", sort=False)}


def fidelity_folder_text(folder: Path) -> str:
    """`fidelity_table_text` of a testbed result folder (its fidelity.csv and, when there, ranking.csv)."""
    table = pd.read_csv(folder / "fidelity.csv")
    ranking = pd.read_csv(folder / "ranking.csv") if (folder / "ranking.csv").is_file() else pd.DataFrame()
    text = fidelity_table_text(table, ranking)
    pace = pace_text(json.loads((folder / SUMMARY).read_text())) if (folder / SUMMARY).is_file() else ""
    return text + ("\n" + pace if pace else "")


def fidelity_table_text(fidelity_table: pd.DataFrame, ranking: pd.DataFrame) -> str:
    """The CLI's table: relative error per metric with its verdict mark, the headline variant first, then the
    ranking agreement per variant."""
    services = list(dict.fromkeys(fidelity_table["service"]))
    head = headline_service(services)
    order = ([head] if head else []) + [s for s in services if s != head]
    table = fidelity_table.copy()
    table["rank"] = table["service"].map({s: k for k, s in enumerate(order)})
    table = table.sort_values("rank", kind="stable")
    marks = table.get("verdict", pd.Series("", index=table.index)).map(VERDICT_MARKS).fillna("")
    table["cell"] = [f"{e:+.1f} {m}".rstrip() for e, m in zip(table["rel_error_pct"], marks, strict=True)]
    wide = table.pivot_table(index=["service", "point", "policy"], columns="metric", values="cell",
                             aggfunc="first", sort=False)
    wide = wide[[m for m in METRICS if m in wide.columns]]
    in_sample = [s for s in IN_SAMPLE_SERVICES if s in services]
    subject, made = ("the other run", "other") if head == OTHER_RUN else ("the simulator", "simulated")
    lines = [f"relative error of {subject}, % ({made} − measured pooled) / measured pooled; headline "
             f"variant: {head or 'none'}",
             "✓ within the limit (" + ", ".join(f"{m} {v:g} %" for m, v in LIMITS_PCT.items())
             + f"), ~ inside the measured 95 % interval (half width ≤ {MAX_HALF_WIDTH_PCT:g} %), ✗ off"
             + (f"; {', '.join(in_sample)} are in-sample diagnostics" if in_sample else ""),
             wide.to_string()]
    summary = ranking_summary(ranking) if len(ranking) else {}
    if summary:
        parts = [f"{s}{' (headline)' if s == head else ''} {v['agree']}/{v['distinguishable']}"
                 for s, v in sorted(summary.items(), key=lambda kv: kv[0] != head)]
        metric = next(iter(summary.values()))["metric"]
        lines.append(f"\nranking at {metric}: policy pairs ordered as measured / pairs the testbed tells apart — "
                     + ", ".join(parts))
    return "\n".join(lines)


def _overheads(tasks: pd.DataFrame, records: pd.DataFrame) -> dict[str, float]:
    lateness = (records["dispatch_ms"] - records["arrival_ms"]).to_numpy()
    transport = tasks.loc[tasks["status"] == "done", "transport_ms"].to_numpy()
    return {"dispatch_lateness_ms_median": float(np.nanmedian(lateness)),
            "dispatch_lateness_ms_p99": float(np.nanpercentile(lateness, 99)),
            "dispatch_lateness_ms_max": float(np.nanmax(lateness)),
            "transport_ms_median": float(np.nanmedian(transport)),
            "transport_ms_p99": float(np.nanpercentile(transport, 99))}


def check_testbed(scenario: Scenario, out_root: Path) -> None:
    """What `coinsim testbed` needs beyond the scenario's own validation, before any work."""
    from scenarios.preflight import check_calibration, check_memory, check_output
    from scenarios.schema import ScenarioError

    if scenario.models is None:
        raise ScenarioError("coinsim testbed needs a scenario with [models]: it serves real networks")
    check_output(out_root, scenario.name)
    n_servers, addresses = scenario.n_servers, scenario.testbed.addresses
    if addresses is None:  # one server process per server on this host, each with torch loaded
        from sim.memory import available_memory, size_text
        from testbed.cluster import SERVER_PROCESS_BYTES

        need, available = n_servers * SERVER_PROCESS_BYTES, available_memory()
        if need > available:
            raise ScenarioError(f"the testbed would start {n_servers:,} server processes here, at least "
                                f"{size_text(need)} ({size_text(SERVER_PROCESS_BYTES)} each, torch loaded), more "
                                f"than the {size_text(available)} available; serve fewer instances or a smaller r, "
                                "or list servers on other hosts in testbed.addresses")
    check_memory(scenario)
    check_calibration(scenario)
    if scenario.sim.deployment.balancer == "power_of_d":
        raise ScenarioError("sim.deployment.balancer = 'power_of_d' is not served by the testbed (its frontend does "
                            "not replay the random draws); use jsq or round_robin")
    if scenario.sim.table().get("draws") == "task":
        raise ScenarioError("sim.draws = 'task' is not served by the testbed (its servers straggle by each (query, "
                            "server)'s draws); use draws = 'server'")
    if scenario.sim.deployment.backups == "per_group" and any(p.kind == "backup" for p in scenario.sim.policies):
        raise ScenarioError("sim.deployment.backups = 'per_group' is not served by the testbed (its backup servers "
                            "run one generalist network); simulate it with coinsim run")
    counts = {scenario.servers_at(SimTable.model_validate(table)) for _, table in scenario.sweep_points()}
    if len(counts) > 1:
        raise ScenarioError(f"the testbed starts its servers once, but the sweep's points have {sorted(counts)} "
                            "servers; sweep something other than the deployment or r")
    if addresses is not None:
        if len(addresses) != n_servers:
            raise ScenarioError(f"testbed.addresses lists {len(addresses)} servers; the scenario has "
                                f"{n_servers} (every expert instance and the r extra servers)")
        bad = [a for a in addresses if not a.startswith(("tcp://", "ipc://"))]
        if bad:
            raise ScenarioError(f"testbed.addresses: '{bad[0]}' is not a ZeroMQ address (tcp://host:port)")
        from testbed.cluster import TestbedError, probe

        try:  # servers elsewhere must answer now, not after the networks are trained, coded and profiled
            probe(addresses)
        except TestbedError as error:
            raise ScenarioError(f"testbed.addresses: {error}") from None
    for points in scenario.sweep_points():
        for policy in points[1].get("policies", []):
            if isinstance(policy, dict) and policy.get("dispatch") == "pool":
                raise ScenarioError("testbed: replication with dispatch = 'pool' (one shared queue) is not served "
                                    "for real; use jsq or redundant")


def _warm_up(cluster: Any, config: Any, seed: int, offsets: np.ndarray, spec: Any, quiet: bool,
             policy_for: Any = policy_of) -> None:
    """Serve the first queries of the first point once under every policy and throw the records away: the
    first requests of fresh processes pay one-off costs (sockets, allocator, caches) no later run pays."""
    from sim import draw
    from sim.plan import make_plan
    from testbed import serve

    short = config.model_copy(update={"n_queries": min(300, config.n_queries or 300)})
    draws = draw(short, seed)
    workload = workload_of(draws, offsets, spec.straggle)
    say("testbed: warm-up run (discarded)", not quiet)
    for p in short.policies:
        serve(cluster.sockets, policy_for(make_plan(short, p, draws)), workload, spec.lead_ms)


def with_testbed_hold(scenario: Scenario) -> Scenario:
    """The scenario whose stragglers are held the way the testbed serves them (`testbed.straggle`, by default the
    scenario's own `sim.stragglers.hold`), so simulation and serving straggle alike."""
    sim = scenario.sim.table()
    stragglers = sim.setdefault("stragglers", {})
    hold = scenario.testbed.straggle or stragglers.get("hold", "compute")
    stragglers["hold"] = hold
    testbed = scenario.testbed.model_copy(update={"straggle": hold})
    return scenario.model_copy(update={"sim": SimTable.model_validate(sim), "testbed": testbed})


def run_testbed(scenario: Scenario, raw: dict[str, Any], out_root: Path = Path("results"), quiet: bool = False,
                render: Any = None) -> Path:
    """Serve every point for real, simulate it, write the comparison; returns the result folder."""
    from sim import draw
    from sim.plan import make_plan
    from testbed import LocalCluster, ServerSpec
    from testbed.cluster import scratch_folder

    check_testbed(scenario, out_root)
    scenario = with_testbed_hold(scenario)
    spec = scenario.testbed
    started = time.perf_counter()
    calibration, calibration_path = serving_calibration(scenario, quiet)
    facts = prepare_networks(scenario, quiet)
    facts.served_passes, facts.served_source = served_pass_profile(scenario, facts, calibration, quiet, fresh=True)
    points = build_point_configs(scenario, facts, calibration=calibration)
    policy_for = functools.partial(policy_of, backup_net=backup_network(facts),
                                   parity_nets=functools.partial(parity_network_index, facts),
                                   encoder=scenario.coding.parity_encoder)
    n_servers = points[0][1].n_servers
    measured, task_frames, fidelity, simulated_frames = [], [], [], []
    overheads: dict[str, Any] = {}
    served_points = []  # (index, coordinates, config, plans, what serving it measured), simulated once all are served
    with scratch_folder("coinsim-testbed-") as work:  # networks and inputs the servers load
        folders, inputs = save_networks(facts, work, parity=True)
        cores = os.cpu_count() or 1
        servers = [ServerSpec(tuple(folders), cpu=(s % cores) if spec.pin else None) for s in range(n_servers)]
        device = "cuda" if facts.device.startswith("cuda") else "cpu"
        say(f"testbed: starting {n_servers} server processes", not quiet)
        with LocalCluster(servers, inputs, device=device, threads=spec.threads, addresses=spec.addresses) as cluster:
            _warm_up(cluster, points[0][1], scenario.seed, facts.answers.offsets, spec, quiet, policy_for)
            for index, (values, config) in enumerate(points):
                coords = {axis_column(a): v for a, v in values.items()}
                draws = draw(config, scenario.seed)
                plans = [make_plan(config, p, draws) for p in config.policies]
                served = _serve_point(cluster, scenario, facts, (index, len(points), coords), config, draws, plans,
                                      policy_for, quiet)
                measured.append(served.records)
                task_frames.append(served.tasks)
                overheads[str(index)] = _point_overheads(served, device)
                served_points.append((index, coords, config, plans, served))
    # simulated after the servers are stopped: their processes are gone while the simulator computes
    failed: Exception | None = None  # simulating a served point failed: the measured records are kept
    say(f"testbed: simulating the {len(served_points)} served point(s)", not quiet and bool(served_points))
    for index, coords, config, plans, served in served_points:
        try:
            frames, rows = _simulate_variants(scenario, facts, calibration, index, coords, config, plans, served,
                                              _shared_cores(device, served))
        except Exception as error:  # noqa: BLE001 - the served records took the time: they are kept
            failed = error
            say(f"testbed: simulating point {index + 1} failed ({error}); the measured records will be kept",
                not quiet)
            break
        simulated_frames += frames
        fidelity += rows
    measured_all = pd.concat(measured, ignore_index=True)
    tasks_all = pd.concat(task_frames, ignore_index=True)
    if failed is not None:
        _keep_measured(scenario, raw, facts, calibration, measured_all, tasks_all, out_root, failed)
    simulated_all = pd.concat(simulated_frames, ignore_index=True)
    fidelity_table = pd.DataFrame(fidelity)
    ranking_table = ranking_frame(fidelity_table)
    summary = _testbed_summary(scenario, facts, measured_all, simulated_all, tasks_all, fidelity_table, overheads,
                               time.perf_counter() - started, ranking_table)
    summary["latency_model"] = served_model.describe(calibration, calibration_path, latency_model_name(scenario),
                                                     served_model.experts_pass_ms(facts), facts.served_passes,
                                                     facts.served_source)
    pace = machine_pace(tasks_all)
    summary["machine_pace"] = pace_summary(pace)

    def write(tmp: Path) -> None:
        _write_served(tmp, scenario, raw, facts, calibration, measured_all, tasks_all, summary)
        pace.to_csv(tmp / "pace.csv", index=False, float_format="%.6g")
        simulated_all.drop(columns=["answer_mask"], errors="ignore").to_parquet(tmp / "simulated.parquet",
                                                                                index=False)
        fidelity_table.to_csv(tmp / "fidelity.csv", index=False, float_format="%.6g")
        ranking_table.to_csv(tmp / "ranking.csv", index=False, float_format="%.6g")

    final = atomic.publish_folder(
        out_root / scenario.name / ("testbed-" + datetime.now().strftime("%Y%m%d-%H%M%S-%f")), write)
    render_or_warn(final, render)
    return final


def _write_served(tmp: Path, scenario: Scenario, raw: dict[str, Any], facts: NetworkFacts, calibration: Any,
                  measured: pd.DataFrame, tasks: pd.DataFrame, summary: dict[str, Any]) -> None:
    """The files of a served run that `--resimulate` reads: scenario, summary, measured records and tasks, the
    isolated and served profiles, the calibration."""
    import tomli_w

    (tmp / SCENARIO).write_text(tomli_w.dumps(_clean_toml(_jsonable(dict(raw, seed=scenario.seed)))))
    (tmp / SUMMARY).write_text(json.dumps(_jsonable(summary), indent=2))
    measured.to_parquet(tmp / "testbed.parquet", index=False)
    tasks.to_parquet(tmp / "testbed_tasks.parquet", index=False)
    _profile_frame(facts).to_csv(tmp / PROFILE, index=False)
    if facts.served_passes:
        served_frame(facts).to_csv(tmp / SERVED_PROFILE, index=False)
    if calibration is not None:
        (tmp / CALIBRATION).write_text(calibration.model_dump_json(indent=2))


def _keep_measured(scenario: Scenario, raw: dict[str, Any], facts: NetworkFacts, calibration: Any,
                   measured: pd.DataFrame, tasks: pd.DataFrame, out_root: Path, failed: Exception) -> None:
    """Simulating the served runs failed: publish what was measured (records, tasks, scenario, profiles,
    calibration) as a folder `--resimulate` can simulate again, then raise ScenarioError naming it."""
    from scenarios.schema import ScenarioError

    summary = {"scenario": scenario.name, "kind": "testbed", "seed": scenario.seed, "versions": _versions(),
               "incomplete": f"simulating the served points failed: {failed}"}

    def write(tmp: Path) -> None:
        _write_served(tmp, scenario, raw, facts, calibration, measured, tasks, summary)

    kept = atomic.publish_folder(
        out_root / scenario.name / ("testbed-" + datetime.now().strftime("%Y%m%d-%H%M%S-%f")), write)
    first = str(failed).strip().splitlines()[0] if str(failed).strip() else type(failed).__name__
    raise ScenarioError(f"testbed: the served runs are kept in {kept}, but simulating them failed ({first}); "
                        f"`coinsim testbed --resimulate {kept}` simulates them again")


@dataclasses.dataclass
class _ServedPoint:
    """One point served for real under every policy and repeat: its query and task records (point and sweep
    coordinates in front), what else the host did during each run and the frontend's CPU use in cores."""

    records: pd.DataFrame
    tasks: pd.DataFrame
    host_load: list[Any]
    frontend_cores: list[float]
    own_cores: dict[str, list[float]]  # per policy: the cores the frontend and servers used, run by run
    # per run: garbage collections inside the serving loop, the longest of them and the full one before it (ms)
    collections: list[tuple[int, float, float | None]]


def _serve_point(cluster: Any, scenario: Scenario, facts: NetworkFacts, where: tuple[int, int, dict[str, Any]],
                 config: Any, draws: Any, plans: list[Any], policy_for: Any, quiet: bool) -> _ServedPoint:
    """Serve one point's workload under every policy, `testbed.repeats` times, the policies' order rotating."""
    from testbed import serve
    from testbed.host import HostMeter

    index, n_points, coords = where
    spec = scenario.testbed
    workload = workload_of(draws, facts.answers.offsets, spec.straggle)
    n_warm = int(config.warmup_fraction * draws.n)
    point_records, point_tasks, host_load, frontend_cores = [], [], [], []
    own_cores: dict[str, list[float]] = {plan.name: [] for plan in plans}
    collections: list[tuple[int, float, float | None]] = []
    for repeat in range(spec.repeats):
        for plan in plans[repeat % len(plans):] + plans[: repeat % len(plans)]:
            policy = policy_for(plan)
            say(f"testbed: point {index + 1}/{n_points} {coords} repeat {repeat + 1}/{spec.repeats}: {plan.name} "
                f"({draws.n} queries)", not quiet)
            meter = HostMeter([os.getpid(), *cluster.pids])
            result = serve(cluster.sockets, policy, workload, spec.lead_ms)
            load = meter.stop()
            host_load.append(load)
            if load.other_cores is not None and load.other_cores > NOISY_CORES:
                say(f"testbed: other processes kept {load.other_cores:.2f} cores busy during this run "
                    "(its latencies include their interference)", not quiet)
            frontend_cores.append(result.facts["frontend_cpu_s"] / result.facts["served_s"])
            collections.append((result.facts["gc_collections"], result.facts["gc_pause_ms_max"],
                                result.facts["gc_before_ms"]))
            if load.own_cores is not None:
                own_cores[plan.name].append(load.own_cores)
            rec = result.records
            rec["sample_id"] = draws.sample_id
            rec["warmup"] = rec["query_id"] < n_warm
            rec["correct"] = correct_from_outputs(rec, result.outputs, facts.answers, policy.hosts, policy.coded_rows)
            rec["correct_sim_join"] = join_correctness(rec, facts.answers, config.n_experts, host_names(policy.hosts),
                                                       list(policy.coded_rows))
            rec = judge_parity_rows(rec, plan, facts, "correct_sim_join", scenario.coding.parity_encoder)
            rec.insert(0, "repeat", repeat)
            tasks = result.tasks
            tasks.insert(0, "repeat", repeat)
            point_records.append(rec)
            point_tasks.append(tasks)
    records = pd.concat(point_records, ignore_index=True)
    tasks = pd.concat(point_tasks, ignore_index=True)
    for frame in (records, tasks):
        frame.insert(0, "point", index)
        for position, (column, value) in enumerate(coords.items(), start=1):
            frame.insert(position, column, value)
    tasks["overlap"] = overlaps(tasks)
    tasks["cycle_ms"] = cycles(tasks)
    tasks["idle_arrival"] = idle_arrivals(tasks)
    return _ServedPoint(records, tasks, host_load, frontend_cores, own_cores, collections)


def _shared_cores(device: str, served: _ServedPoint) -> float:
    """The cores the servers shared in these runs: the machine's less the frontend's measured use."""
    return shared_cores(device, served.frontend_cores)


def _point_overheads(served: _ServedPoint, device: str) -> dict[str, Any]:
    """summary.json's `overheads` for one point: dispatch and transport, what else the host did, the frontend's
    cores, the servers' share and the median pass by how many other servers computed beside it."""
    tasks = served.tasks
    return (_overheads(tasks, served.records) | host_summary(served.host_load)
            | {"frontend_cores_median": float(np.median(served.frontend_cores)),
               "gc_collections": int(sum(n for n, _, _ in served.collections)),
               "gc_pause_ms_max": float(max((ms for _, ms, _ in served.collections), default=0.0)),
               "gc_before_ms_max": max((ms for _, _, ms in served.collections if ms is not None), default=None),
               "shared_cores": _shared_cores(device, served),
               "own_cores_by_policy": {name: float(np.median(v)) for name, v in served.own_cores.items() if v},
               "compute_ms_by_overlap": {int(k): float(v) for k, v in tasks[tasks["status"] == "done"]
                                         .groupby("overlap")["compute_ms"].median().items()}})


def _simulate_variants(scenario: Scenario, facts: NetworkFacts, calibration: Any, index: int,
                       coords: dict[str, Any], config: Any, plans: list[Any], served: _ServedPoint, cores: float
                       ) -> tuple[list[pd.DataFrame], list[dict[str, Any]]]:
    """Simulate the point in every variant on the served draws and score each against the measured records:
    `predicted` (the served config itself, nothing from these runs; with a calibration), then the in-sample
    diagnostics (the served arrival rate and hedge delays, each with its own service)."""
    names = [name for name, _ in served_networks(facts)]
    tasks = served.tasks
    in_situ = dataclasses.replace(facts, profile_ms=in_situ_service(tasks, names, facts.profile_ms))
    alone = dataclasses.replace(facts, profile_ms=in_situ_service(tasks, names, facts.profile_ms, True))
    variants = [("isolated", facts, None), ("in_situ", in_situ, None),
                ("in_situ+network", in_situ, measured_network(tasks)),
                ("model", alone, measured_network(tasks, cores, scenario.testbed.straggle))]
    if calibration is not None:  # out of sample: the served config itself, nothing from these runs
        variants.insert(0, ("predicted", None, None))
    frames, rows = [], []
    # the in-sample variants re-fit what was served: that traffic ran for real, so it is simulated even where a
    # fitted service puts it past a capacity (a transient, as served), instead of ending the run
    fitted = scenario.model_copy(update={"allow_unstable": True})
    for service, source, extra in variants:
        if source is None:
            config_s = config
        else:
            config_s = pin_hedge_delays(build_point_configs(fitted, source, only=index)[0][1], plans)
            config_s = config_s.model_copy(update={"traffic": config.traffic})
        if extra is not None:
            config_s = config_s.model_copy(update=extra(config_s))
        sim_records, _ = run_point(config_s, scenario.seed, facts.answers)
        for plan in plans:
            sim_records = judge_parity_rows(sim_records, plan, facts, "correct", scenario.coding.parity_encoder)
        sim_records.insert(0, "service", service)
        sim_records.insert(0, "point", index)
        frames.append(sim_records)
        rows += fidelity_rows(index, coords, service, sim_records, served.records, seed=scenario.seed)
    return frames, rows


def _testbed_summary(scenario: Scenario, facts: NetworkFacts, measured: pd.DataFrame, simulated: pd.DataFrame,
                     tasks: pd.DataFrame, fidelity: pd.DataFrame, overheads: dict[str, Any],
                     seconds: float, ranking: pd.DataFrame | None = None) -> dict[str, Any]:
    names = [name for name, _ in served_networks(facts)]
    live = measured[~measured["warmup"]]
    accuracy = {}
    for (point, policy), g in live.groupby(["point", "policy"], sort=False, observed=True):
        accuracy.setdefault(str(point), {})[str(policy)] = {
            "accuracy_pct": float(g["correct"].mean() * 100),
            "accuracy_sim_join_pct": float(g["correct_sim_join"].mean() * 100),
            "answers_agree_pct": float((g["correct"] == g["correct_sim_join"]).mean() * 100)}
    denied = {}  # policies with a hedge budget: the measured queries whose hedge it held back, in percent
    if "hedge_denied" in live:
        for (point, policy), g in live.groupby(["point", "policy"], sort=False, observed=True):
            if g["hedge_denied"].notna().all():
                denied.setdefault(str(point), {})[str(policy)] = float(g["hedge_denied"].astype(bool).mean() * 100)
    sim_live = simulated[~simulated["warmup"]]
    sim_accuracy = {f"{p}/{s}/{pol}": float(g["correct"].mean() * 100)
                    for (p, s, pol), g in sim_live.groupby(["point", "service", "policy"], observed=True)}
    done = tasks[(tasks["status"] == "done") & (tasks["factor"] == 1.0)]
    alone = done[done["overlap"] == 0]
    service = {name: {"isolated_mean_ms": float(facts.profile_ms[name].mean()),
                      "in_situ_mean_ms": float((done.loc[done["net"] == k, "compute_ms"]
                                                + done.loc[done["net"] == k, "held_ms"]).mean()),
                      "in_situ_alone_mean_ms": float((alone.loc[alone["net"] == k, "compute_ms"]
                                                      + alone.loc[alone["net"] == k, "held_ms"]).mean()),
                      "in_situ_cycle_mean_ms": float(done.loc[done["net"] == k, "cycle_ms"].mean())}
               for k, name in enumerate(names) if name in facts.profile_ms and (done["net"] == k).any()}
    worst = {}
    if not fidelity.empty:
        for service_name, g in fidelity.groupby("service"):
            worst[service_name] = {m: float(g.loc[g["metric"] == m, "rel_error_pct"].abs().max()) for m in METRICS}
    return {"scenario": scenario.name, "kind": "testbed", "seed": scenario.seed, "versions": _versions(),
            "device": facts.device, "repeats": scenario.testbed.repeats, "straggle": scenario.testbed.straggle,
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "service_ms": service, "overheads": overheads, "accuracy": accuracy, "hedges_denied_pct": denied,
            "simulated_accuracy": sim_accuracy,
            "worst_abs_rel_error_pct": worst, "headline_service": headline_service(fidelity.get("service", [])),
            "fidelity_summary": fidelity_summary(fidelity),
            "ranking": ranking_summary(ranking) if ranking is not None and len(ranking) else {},
            "limits_pct": LIMITS_PCT, "max_half_width_pct": MAX_HALF_WIDTH_PCT, "seconds": seconds}


def served_hedge_delays(tasks: pd.DataFrame, records: pd.DataFrame, policy: str, n_experts: int
                        ) -> tuple[tuple[float, ...], bool] | None:
    """The hedge delay, per expert, a finished testbed run served `policy` with, and whether it ran: the delay of
    the first of its routed queries that sent a later task (hedge, decode group, backup) — the start of a running
    delay — and True when the delays of later queries moved from it (a running delay), False when every one was
    the same (a fixed delay, or a run made before delays could run). None when no later task was sent for some
    expert (its delay then leaves no trace in the records)."""
    keys = [k for k in ("point", "repeat", "query_id") if k in records.columns and k in tasks.columns]
    queries = records.loc[(records["policy"] == policy) & (records["model"] >= 0), [*keys, "model", "arrival_ms"]]
    later = tasks.loc[(tasks["policy"] == policy) & (tasks["role"] != 0), [*keys, "due_ms"]]
    joined = later.merge(queries, on=keys).sort_values("arrival_ms", kind="stable")
    joined["after"] = joined["due_ms"] - joined["arrival_ms"]
    first = joined.groupby("model")["after"].first()
    if any(i not in first.index for i in range(n_experts)):
        return None
    spread = joined.groupby("model")["after"].agg(lambda x: float(x.max() - x.min()))
    return tuple(float(first[i]) for i in range(n_experts)), bool((spread > 1e-6).any())


def pin_served_delays(config: Any, tasks: pd.DataFrame, records: pd.DataFrame) -> Any:
    """The config with each delayed policy's hedge delays as a finished run served them (`served_hedge_delays`):
    the same start, running or fixed as it was."""
    from sim.config import PolicySpec

    policies = []
    for spec in config.policies:
        got = served_hedge_delays(tasks, records, str(spec.name), config.n_experts) if spec.delay_ms is not None \
            else None
        if got is not None:
            start, ran = got
            update = {"delay_ms": start, "delay_update": "running" if ran else "fixed",
                      "delay_quantile": spec.delay_quantile if ran else None}
            spec = PolicySpec.model_validate({**spec.model_dump(), **update})
        policies.append(spec)
    return config.model_copy(update={"policies": tuple(policies)})


def resimulate(folder: Path, quiet: bool = False) -> Path:
    """Simulate a finished testbed run's points again with this coinsim: the `predicted` variant from the run's own
    scenario, isolated and served profiles and calibration (nothing from its measured records but the hedge delays
    it served with), judged against its measured queries. Writes fidelity.csv and ranking.csv to
    FOLDER/resimulated-<timestamp>/ and returns that folder. ScenarioError when FOLDER is not a testbed run."""
    import tomllib

    from calibration import load_calibration
    from calibration.passes import read_served_profile
    from scenarios.schema import ScenarioError, scenario_from_dict

    needed = [SCENARIO, PROFILE, CALIBRATION, "testbed.parquet", "testbed_tasks.parquet"]
    if missing := [name for name in needed if not (folder / name).is_file()]:
        raise ScenarioError(f"{folder}: not a served testbed run (no {', '.join(missing)})")
    try:
        raw = tomllib.loads((folder / SCENARIO).read_text())
        calibration = load_calibration(folder / CALIBRATION)
        served = read_served_profile(folder / SERVED_PROFILE) if (folder / SERVED_PROFILE).is_file() else {}
        measured = pd.read_parquet(folder / "testbed.parquet")
        tasks = pd.read_parquet(folder / "testbed_tasks.parquet")
    except (OSError, ValueError, tomllib.TOMLDecodeError) as error:
        raise ScenarioError(f"{folder}: cannot read it ({str(error).strip().splitlines()[0]})") from None
    raw = {key: value for key, value in raw.items() if key != "coinsim_version"}
    raw["profile"] = dict(raw.get("profile", {}), replay=str(folder), latency_model="served",
                          served_passes="measured" if served else "calibration")
    scenario = with_testbed_hold(scenario_from_dict(raw, str(folder / SCENARIO)))
    facts = prepare_networks(scenario, quiet)
    facts.served_passes = {name: served[name] for name in facts.profile_ms if name in served}
    points = build_point_configs(scenario, facts, calibration=calibration)
    rows: list[dict[str, Any]] = []
    for index, (values, config) in enumerate(points):
        coords = {axis_column(a): v for a, v in values.items()}
        at = (tasks[tasks["point"] == index], measured[measured["point"] == index])
        config = pin_served_delays(config, *at)
        say(f"resimulate: point {index + 1}/{len(points)} {coords}", not quiet)
        simulated, _ = run_point(config, scenario.seed, facts.answers)
        rows += fidelity_rows(index, coords, "predicted", simulated, measured[measured["point"] == index],
                              seed=scenario.seed)
    fidelity_table = pd.DataFrame(rows)
    ranking_table = ranking_frame(fidelity_table)

    def write(tmp: Path) -> None:
        fidelity_table.to_csv(tmp / "fidelity.csv", index=False, float_format="%.6g")
        ranking_table.to_csv(tmp / "ranking.csv", index=False, float_format="%.6g")

    return atomic.publish_folder(folder / ("resimulated-" + datetime.now().strftime("%Y%m%d-%H%M%S-%f")), write)
