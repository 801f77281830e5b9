"""`coinsim run`: real networks on one side, the simulator on the other, joined per query.

1. validate the scenario (every sweep point) — nothing runs on a bad file;
2. models: base + experts from the cache or trained;
3. coin: the coded model the parity server hosts, the generalist a backup server hosts (the coded model itself
   unless `coding.backup` names another method), and the NDA table of every method asked for;
4. forward passes: every expert, the coded model and the generalist on every test input a query may draw, once,
   batched; the correctness of the direct, the decoded and the backup answer is tabulated per (expert, sample);
5. a latency profile of each served network on the device becomes its empirical service distribution;
6. sim: every policy at every sweep point on common random numbers (locally or on a Dask cluster);
7. join: each simulated query looks up whether the answer it actually got (direct, replica, hedge, decoded or
   backup) was right; then the result folder is written atomically and the report rendered.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import tomli_w

import accel
import atomic
from calibration.passes import read_served_profile, to_frame
from models.progress import say
from resultschema import (
    CALIBRATION,
    LATENCY_KEYS,
    NDA,
    OUTPUTS,
    PROFILE,
    QUERIES,
    SCENARIO,
    SCHEMA_VERSION,
    SERVED_PROFILE,
    SUMMARY,
    SWEEP,
)
from scenarios import served as served_model
from scenarios.parity_join import judge_parity_answers, train_parity_networks
from scenarios.points import AnswerTables, run_point
from scenarios.schema import Scenario, axis_column, read_profile, sim_config_for
from sim import SimConfig, simulate


@dataclass
class NetworkFacts:
    """Everything the torch side measured; plain numbers and arrays from here on."""

    experts: list[dict[str, Any]]
    nda: pd.DataFrame
    answers: AnswerTables
    profile_ms: dict[str, np.ndarray]
    device: str
    coded_name: str
    timings: dict[str, float] = field(default_factory=dict)
    served: dict[str, Any] = field(default_factory=dict, repr=False)  # name -> nn.Module, for live mode
    test_inputs: list[Any] = field(default_factory=list, repr=False)  # per expert, the inputs sample ids index
    multi_decode: list[dict[str, Any]] = field(default_factory=list)
    coded_models: list[Any] = field(default_factory=list, repr=False)  # coded model k serves coded server k
    network_spec: Any = None  # models.NetworkSpec of every served network
    backup_name: str = ""  # coding method of the generalist the backup servers host
    served_passes: dict[str, Any] = field(default_factory=dict)  # name -> calibration.passes.ServedPasses
    served_source: dict[str, Any] = field(default_factory=dict)  # where served_passes came from (ServedProfile)
    parity_models: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)  # (k, expert) -> network
    parity: list[dict[str, Any]] = field(default_factory=list)  # per parity network: cost and degraded accuracy


def code_groups(scenario: Scenario, n: int) -> list[list[int]]:
    """The experts each code covers: the scenario's code groups (sim.deployment.groups), or one group of all."""
    groups = scenario.sim.deployment.groups
    return [list(g) for g in groups] if groups else [list(range(n))]


def coding_matrix(scenario: Scenario, n: int) -> np.ndarray:
    """(r · groups) × N coding weights; row g·r + j is coded server j of code group g, zero outside the group
    (the extra servers come r per group, group by group). One group: the scenario's matrix, else β (r = 1) or a
    Cauchy construction (r > 1); several: per group, β restricted to it and scaled to sum 1 (r = 1), else Cauchy."""
    from coin.multicode import cauchy_coding_matrix, check_coding_matrix

    r = coded_servers(scenario)
    groups = code_groups(scenario, n)
    if len(groups) == 1:
        if scenario.coding.betas is not None:
            return check_coding_matrix(scenario.coding.betas, n)
        if r == 1 and scenario.coding.beta is not None:
            return check_coding_matrix([scenario.coding.beta], n)
        return cauchy_coding_matrix(n, r)
    matrix = np.zeros((r * len(groups), n))
    for g, members in enumerate(groups):
        if r == 1 and scenario.coding.beta is not None:
            beta = np.asarray(scenario.coding.beta, float)[members]
            block = (beta / beta.sum())[None]
        else:
            block = cauchy_coding_matrix(len(members), r)
        matrix[np.ix_(range(g * r, (g + 1) * r), members)] = block
    return matrix


def coded_servers(scenario: Scenario) -> int:
    """How many coded models the scenario serves: the extra servers r, the most any sweep point has (at least one,
    for the NDA table); a point with fewer coded servers uses the first rows of the coding matrix."""
    return max(1, *(int(table.get("r", scenario.sim.r)) for _, table in scenario.sweep_points()))


def _multi_decode_table(answers: AnswerTables, names: list[str], groups: list[list[int]]) -> list[dict[str, Any]]:
    """Decoded accuracy of every set of up to r missing experts of a code group, all r of its coded outputs back
    (r > 1)."""
    from itertools import combinations

    rows = []
    r = answers.matrix.shape[0] // len(groups)
    for g, members in enumerate(groups):
        coded = list(range(g * r, (g + 1) * r))
        for missing in (m for size in range(1, min(r, len(members)) + 1) for m in combinations(members, size)):
            for position, i in enumerate(missing):
                part = np.arange(answers.offsets[i], answers.offsets[i + 1])
                dec = answers.decoded(list(missing), coded, part)[position]
                labels = answers.labels[part]
                decoded_acc = float((dec.argmax(-1) == labels).mean() * 100)
                expert_acc = float((answers.expert_outs[i, part].argmax(-1) == labels).mean() * 100)
                rows.append({"missing": ",".join(names[m] for m in missing), "expert": names[i],
                             "decoded_acc_pct": decoded_acc, "expert_acc_pct": expert_acc,
                             "nda_pct": 100 * decoded_acc / expert_acc if expert_acc else float("nan")})
    return rows


def code_experts(scenario: Scenario, zoo: Any, matrix: np.ndarray, quiet: bool = False
                 ) -> tuple[list[dict[str, Any]], list[Any], Any]:
    """Code the experts, group by group: (NDA rows of every method, coded model k for each matrix row k, the
    generalist network a backup server hosts).

    Each code group's coded models merge only its own experts, from coding samples of their own pools; the NDA
    table decodes each expert from its group's first coded model and the group's other experts. The generalist is
    coded model 0 (or another method's network on row 0) when one code covers every expert; with several groups it
    is coded on its own over all experts (weights β, or uniform), since no group's coded model knows every task.
    """
    import torch

    import coin

    groups = code_groups(scenario, len(zoo.experts))
    r = matrix.shape[0] // len(groups)
    pools = [(e.train_x, e.train_y) for e in zoo.experts]
    tests = [(e.test_x, e.test_y) for e in zoo.experts]
    names = [e.name for e in zoo.experts]

    def encoder(members: list[int]) -> Callable[[str, np.ndarray], Any]:
        mine = [pools[i] for i in members]
        models = [zoo.models[i] for i in members]

        def encode(method: str, beta: np.ndarray) -> Any:  # P coding samples, or every training query
            x, y, owner = coin.coding_samples(coin.get_method(method), mine, scenario.coding.samples, scenario.seed)
            return coin.encode(method, models, [float(b) for b in beta], x, y=y, owner=owner, base=zoo.base,
                               seed=scenario.seed)
        return encode

    rows: list[dict[str, Any]] = []
    coded_models: list[Any] = [None] * matrix.shape[0]
    built: dict[str, Any] = {}
    for g, members in enumerate(groups):
        encode = encoder(members)
        where = f" of code group {g + 1}/{len(groups)} ({', '.join(names[i] for i in members)})" \
            if len(groups) > 1 else ""
        beta = matrix[g * r, members]
        for method in dict.fromkeys([scenario.coding.method, *scenario.coding.compare]):
            say(f"coding {len(members)} experts{where} with {method} (P={scenario.coding.samples})", not quiet)
            result = encode(method, beta)
            built[method] = result.model
            for row in coin.evaluate(result.model, [zoo.models[i] for i in members], torch.tensor(beta),
                                     [tests[i] for i in members]):
                rows.append({"method": method, "expert": names[members[row.expert]], "nda_pct": row.nda,
                             "decoded_acc_pct": row.decoded_acc, "expert_acc_pct": row.expert_acc,
                             "encode_s": result.seconds, "code_group": g})
            if method == scenario.coding.method:
                coded_models[g * r] = result.model
        if r > 1:
            say(f"coding coded models 2-{r}{where} with {scenario.coding.method} (one per coding-matrix row)",
                not quiet)
        for j in range(1, r):
            coded_models[g * r + j] = encode(scenario.coding.method, matrix[g * r + j, members]).model
    if scenario.backup_is_coded:
        return rows, coded_models, coded_models[0]
    if len(groups) == 1 and scenario.backup_method in built:
        return rows, coded_models, built[scenario.backup_method]
    say(f"coding the generalist backup with {scenario.backup_method}", not quiet)
    if len(groups) == 1:
        weights = matrix[0]
    else:
        weights = np.asarray(scenario.coding.beta if scenario.coding.beta is not None else [1.0] * len(zoo.experts))
        weights = weights / weights.sum()
    return rows, coded_models, encoder(list(range(len(zoo.experts))))(scenario.backup_method, weights).model


def prepare_networks(scenario: Scenario, quiet: bool = False) -> NetworkFacts:
    """Steps 2–5: train/fetch the experts, code them, tabulate answers, profile latency."""
    import torch

    import coin
    from models.profile import profile_interleaved
    from models.zoo import build_zoo

    assert scenario.models is not None
    timings: dict[str, float] = {}
    started = time.perf_counter()
    zoo = build_zoo(scenario.models, device=scenario.device, progress=not quiet)
    timings["models_s"] = time.perf_counter() - started
    n = len(zoo.experts)
    matrix = coding_matrix(scenario, n)
    groups = code_groups(scenario, n)
    rows, coded_models, generalist = code_experts(scenario, zoo, matrix, quiet)
    parity_models, parity_rows = train_parity_networks(scenario, zoo, quiet)
    timings["coding_s"] = time.perf_counter() - started - timings["models_s"]

    device = zoo.device
    all_x = torch.cat([e.test_x for e in zoo.experts])
    labels = torch.cat([e.test_y for e in zoo.experts]).numpy()
    expert_outs = np.stack([coin.outputs(m.to(device), all_x.to(device)).cpu().numpy() for m in zoo.models])
    coded_outs = np.stack([coin.outputs(m.to(device).eval(), all_x.to(device)).cpu().numpy()
                           for m in coded_models])
    # the generalist's own outputs, undecoded (when it is coded model 0, that network's pass just above)
    backup_outs = coded_outs[0] if generalist is coded_models[0] else \
        coin.outputs(generalist.to(device).eval(), all_x.to(device)).cpu().numpy()
    offsets = np.cumsum([0] + [len(e.test_x) for e in zoo.experts])
    if scenario.sim.deployment.backups == "per_group" and len(groups) > 1:  # each group's backups: its coded model
        backup_outs = backup_outs.copy()
        per = len(coded_models) // len(groups)
        for g, members in enumerate(groups):
            for i in members:
                backup_outs[offsets[i]:offsets[i + 1]] = coded_outs[g * per, offsets[i]:offsets[i + 1]]
    tasks = task_classes(zoo, expert_outs.shape[-1]) if scenario.coding.backup_classes == "task" else None
    answers = AnswerTables(labels, offsets, expert_outs, coded_outs, matrix, backup_outs, tasks)
    names = [e.name for e in zoo.experts]

    spec = scenario.profile
    served_models = [*((e.name, e.model) for e in zoo.experts), ("coded", coded_models[0])]
    if not scenario.backup_is_coded:
        served_models.append(("backup", generalist))
    if spec.replay is not None:
        profile = read_profile(Path(spec.replay).expanduser(), [name for name, _ in served_models])
    else:
        profile = profile_interleaved(dict(served_models), all_x, device, spec.batch_size, spec.warmup, spec.samples,
                                      seed=scenario.seed, threads=spec.threads, progress=not quiet,
                                      preempted_retries=spec.preempted_retries)
    timings["forward_and_profile_s"] = time.perf_counter() - started - timings["models_s"] - timings["coding_s"]
    experts = [{"name": e.name, "partition": e.partition, "accuracy": e.accuracy} for e in zoo.experts]
    served = dict(served_models)
    return NetworkFacts(experts, pd.DataFrame(rows), answers, profile, str(device), scenario.coding.method,
                        timings, served, [e.test_x for e in zoo.experts],
                        _multi_decode_table(answers, names, groups) if matrix.shape[0] > len(groups) else [],
                        coded_models,
                        scenario.models.network, scenario.backup_method,
                        parity_models=parity_models, parity=parity_rows)


BUSY_CORES_LIMIT = 0.25  # other processes' cores beyond which a measured served profile is not cached
SERVED_PROFILE_FORMAT = 14  # 2: with the traffic's one-way delays; 3: about 400 lone passes per network and level;
# 4: levels indexed by a utilization that counts the work beside the pass as the simulator does; 5: the wake curve
# by idle gap; 6: by the other servers' busy time, each server the rarely used one a third of the stream;
# 7: both parts (idle time and the others' busy time), fitted together; 8: 1,500 lone passes, 1,000 quantiles;
# 9: each level's mean pass as it ran; 10: the one-way delays by how many other servers compute; 11: the chance
# that a server waking on a free core holds a computing one off its core (joined_share); 12: the server's own work
# per task before and after its output leaves; 13: how a server's consecutive passes move together; 14: the same,
# each pass ranked among those after alike idle times


def served_profile_cache(facts: NetworkFacts, calibration: Any) -> Path:
    """Where the served-pass profile of these networks under this calibration is cached: $COINSIM_CACHE/served/
    <hash of every served network's weights, the device and the calibration's machine and date>.csv."""
    import hashlib

    from calibration.file import cache_root

    digest = hashlib.sha256(json.dumps([SERVED_PROFILE_FORMAT, calibration.machine.model_dump(), calibration.created,
                                        facts.device], sort_keys=True).encode())
    for name in sorted(facts.profile_ms):
        digest.update(name.encode())
        for key, tensor in facts.served[name].state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return cache_root() / "served" / f"{digest.hexdigest()[:16]}.csv"


class ServedProfile(NamedTuple):
    """A run's served-pass profile (name -> calibration.passes.ServedPasses; {} when the run uses none) and where it
    came from, as summary.json's `latency_model.served_profile` says: `source` "measured" (in this run; `why` a
    cached one was not taken, `cached` whether it was kept), "cached" (`probe_change_pct`: per network, how far the
    probe's mean lone pass was from the profile's; absent when not probed), "resumed" or "replayed" (`from`)."""

    passes: dict[str, Any]
    source: dict[str, Any]


def served_pass_profile(scenario: Scenario, facts: NetworkFacts | None, calibration: Any, quiet: bool = False,
                        reuse: Path | None = None, fresh: bool = False) -> ServedProfile:
    """The served-pass profile of the scenario's networks (calibration.passes), or none when the run does not use
    one (bare compute, live mode, `profile.served_passes = 'calibration'`): an interrupted run's copy (`reuse`),
    the replayed run's, the cached one for these networks and calibration (not with `fresh`: a testbed run judges
    the prediction against the machine as it is, and a profile cached hours before can be off while the isolated
    pass it is checked by is not), or measured now (a few seconds of real serving) and cached. A cached profile is
    used while the isolated passes hold (`served_profile_drift`) and, with `profile.served_probe`, while a probe of
    its lowest level served again for a few seconds agrees with it (`served_probe_drift`). ScenarioError when a
    saved one cannot be read."""
    from scenarios.schema import ScenarioError

    if calibration is None or facts is None or scenario.profile.served_passes != "measured":
        return ServedProfile({}, {})
    names = sorted(facts.profile_ms)
    why = "fresh" if fresh else "none cached"
    replay = Path(scenario.profile.replay).expanduser() / SERVED_PROFILE if scenario.profile.replay else None
    cache = served_profile_cache(facts, calibration)
    for path in (reuse, replay, None if fresh else cache):
        if path is not None and path.is_file():
            try:
                profile = read_served_profile(path)
            except (OSError, ValueError, pd.errors.ParserError) as error:
                if path == cache:
                    why = "the cached one could not be read"
                    break  # a damaged cache entry is measured again
                raise ScenarioError(f"{path}: not a served-pass profile "
                                    f"({str(error).strip().splitlines()[0]})") from None
            if not set(names) <= set(profile):
                continue
            if path == cache and (stale := served_profile_drift(profile, facts.profile_ms,
                                                                 scenario.profile.served_drift_pct)):
                say(f"served profile: {stale}; measuring it again", not quiet)
                why = stale
                break
            source: dict[str, Any] = {"source": "resumed"} if path == reuse else \
                {"source": "replayed", "from": str(path.parent)} if path == replay else {"source": "cached"}
            if path == cache and scenario.profile.served_probe:
                try:
                    probe = _serve_for_profile(scenario, facts, names, calibration, quiet, probe=True)
                except ScenarioError as error:  # too few lone passes in the probe's short stream: the whole
                    why = f"its probe could not tell ({error})"  # profile aims at many more
                    say(f"served profile: {why}; measuring it again", not quiet)
                    break
                if stale := served_probe_drift(profile, probe, scenario.profile.served_probe_pct):
                    say(f"served profile: {stale}; measuring it again", not quiet)
                    why = stale
                    break
                source["probe_change_pct"] = {name: round(100.0 * (now_ms / then_ms - 1.0), 2)
                                              for name, (then_ms, now_ms, _) in probe_changes(profile, probe).items()}
                say("served profile: the cached one, confirmed by a probe (its lowest level served again briefly)",
                    not quiet)
            return ServedProfile({name: profile[name] for name in names}, source)
    from testbed.host import ProcessTreeMeter

    say(f"served profile: serving {', '.join(names)} under traffic to time their passes (cached after)", not quiet)
    meter = ProcessTreeMeter()
    profile = _serve_for_profile(scenario, facts, names, calibration, quiet)
    load = meter.stop()
    busy = load.other_cores if load.wall_s >= 1.0 else None  # CPU time comes in 10 ms ticks: judge a second or more
    if busy is not None and busy > BUSY_CORES_LIMIT:  # served passes of a shared machine: this run's, not the cache's
        say(f"served profile: other processes kept {busy:.2f} cores busy while it was measured; used for this run "
            "but not cached (the isolated passes, timed with preempted rounds retried, cannot tell)", not quiet)
        return ServedProfile(profile, {"source": "measured", "why": why, "cached": False})
    atomic.write_with(cache, lambda path: to_frame(profile).to_csv(path, index=False))
    return ServedProfile(profile, {"source": "measured", "why": why, "cached": True})


def _serve_for_profile(scenario: Scenario, facts: NetworkFacts, names: list[str], calibration: Any, quiet: bool,
                       probe: bool = False) -> dict[str, Any]:
    """The served-pass profile of networks `names`, measured now by real server processes
    (`calibration.measure.measure_served_passes`), each network's entry carrying the isolated median pass it was
    measured at; with `probe`, only the lowest level, about PROBE_MIN_LONE lone passes per network (a check of a
    cached profile, not kept). ScenarioError when the servers cannot time enough passes."""
    from calibration.file import CalibrationError
    from calibration.measure import PROBE_MIN_LONE, PROBE_MS, REHEARSAL_UTILIZATION, measure_served_passes
    from scenarios.networks import save_networks, served_networks
    from scenarios.schema import ScenarioError
    from testbed.cluster import scratch_folder

    order = [name for name, _ in served_networks(facts)]
    device = "cuda" if facts.device.startswith("cuda") else "cpu"  # a server process takes the device kind
    short = {"utilizations": REHEARSAL_UTILIZATION[:1], "min_lone": PROBE_MIN_LONE, "span_ms": PROBE_MS} \
        if probe else {}
    with scratch_folder("coinsim-served-") as tmp:
        folders, inputs = save_networks(facts, Path(tmp))
        keep = [k for k, name in enumerate(order) if name in facts.profile_ms]
        try:
            profile = measure_served_passes([folders[k] for k in keep], inputs, [order[k] for k in keep],
                                            {n: float(np.mean(facts.profile_ms[n])) for n in names},
                                            device=device, calibration=calibration, seed=scenario.seed,
                                            progress=not quiet, **short)
        except CalibrationError as error:
            raise ScenarioError(f"served profile{' probe' if probe else ''}: {error}") from None
    return {name: profile[name].model_copy(update={"isolated_p50_ms": float(np.median(facts.profile_ms[name]))})
            for name in names}  # one order, measured or read back, with the isolated pass it was measured at


def served_probe_drift(profile: dict[str, Any], probe: dict[str, Any], limit_pct: float) -> str | None:
    """Why a cached served profile no longer describes this machine by its probe (`probe`: the same networks'
    lowest level served again, briefly), or None while it does: a network's mean lone pass as served (wake
    included) at the probe's level differs from the profile's at its lowest level by more than `limit_pct` plus
    the 95 % interval of the difference of the two means (the profile's spread of lone passes, over each one's
    count). Served passes can move while isolated ones hold (measured here: 20-30 % shorter served passes over
    hours, the isolated pass within 5 %), which the isolated check (`served_profile_drift`) cannot see; within
    minutes they move too (back-to-back probes: -13 to +5 %), which `limit_pct` is there to span."""
    for name, (then_ms, now_ms, noise_pct) in probe_changes(profile, probe).items():
        if moved := _moved(now_ms, then_ms, limit_pct, noise_pct, "profile.served_probe_pct",
                           "the two means' interval"):
            return f"{name}'s lone served pass is {now_ms:.3f} ms now, {then_ms:.3f} ms when the cached profile " \
                   f"was measured ({moved})"
    return None


def probe_changes(profile: dict[str, Any], probe: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """Per network both hold: the profile's and the probe's mean lone served pass at their lowest level (ms) and
    the noise of their difference in % of the profile's — the half-width of its 95 % interval, from the profile's
    spread of lone passes over each one's count."""
    out = {}
    for name, now in probe.items():
        if name not in profile:
            continue
        then_level, now_level = profile[name].levels[0], now.levels[0]
        then_ms = _served_mean(then_level)
        spread = float(np.std(then_level.samples_ms))
        noise_pct = 100.0 * 1.96 * spread * math.sqrt(1.0 / then_level.n_lone + 1.0 / now_level.n_lone) / then_ms
        out[name] = (then_ms, _served_mean(now_level), noise_pct)
    return out


def _served_mean(level: Any) -> float:
    """A served-profile level's mean lone pass as the passes ran (wake included), or its samples' mean in a
    profile that did not record it."""
    return level.served_mean_ms or float(np.mean(level.samples_ms))


def _moved(now: float, then: float, limit_pct: float, noise_pct: float, setting: str, noise: str) -> str | None:
    """How far `now` moved from `then`, said for the user, when that is beyond `limit_pct` (the `setting` that
    allows it) plus `noise_pct` (what `noise` spans on its own); None within."""
    change = 100.0 * (now / then - 1.0)
    if abs(change) <= limit_pct + noise_pct:
        return None
    return (f"{change:+.0f} %, more than the {limit_pct:g} % {setting} allows, beyond the ±{noise_pct:.1f} % "
            f"{noise} spans")


def served_profile_drift(profile: dict[str, Any], isolated_ms: dict[str, Any], limit_pct: float) -> str | None:
    """Why a cached served profile no longer describes this machine, or None while it does: a network's isolated
    median pass now (`isolated_ms`, this run's profile) differs from the one measured with the profile by more than
    `limit_pct` plus the half-width of the 95 % interval of this run's median (distribution-free, from its sample
    size: a short profile's median moves on its own), or the profile did not record it. Served passes move more
    than isolated ones when the machine changes (measured here: isolated passes 7 % slower came with served passes
    13-21 % slower)."""
    for name, samples in isolated_ms.items():
        if name not in profile:
            continue
        then = profile[name].isolated_p50_ms
        if then is None:
            return f"the cached profile of {name} does not say at which isolated pass it was measured"
        x = np.sort(np.asarray(samples, float))
        now = float(np.median(x))
        reach = 1.96 * math.sqrt(len(x)) / 2.0  # ranks of the median's 95 % interval: n/2 -+ 1.96 sqrt(n) / 2
        lo, hi = x[max(int(len(x) / 2 - reach), 0)], x[min(math.ceil(len(x) / 2 + reach), len(x) - 1)]
        noise_pct = 100.0 * (hi - lo) / (2.0 * now)
        if moved := _moved(now, then, limit_pct, noise_pct, "profile.served_drift_pct", "its median's interval"):
            return f"{name}'s isolated pass is {now:.3f} ms now, {then:.3f} ms when its served passes were measured " \
                   f"({moved})"
    return None


def served_frame(facts: NetworkFacts) -> pd.DataFrame:
    """The served-pass profile as ``served_profile.csv`` holds it."""
    return to_frame(facts.served_passes)


def _profile_frame(facts: NetworkFacts) -> pd.DataFrame:
    return pd.DataFrame([(name, ms) for name, times in facts.profile_ms.items() for ms in times],
                        columns=["model", "ms"])


class LiveForwardTimes:
    """Service 'distribution' whose every draw is a real forward pass, timed, on that query's own input.

    The simulator maps one uniform per (query, server) through `ppf`; here the uniform is ignored and query k's
    task costs what running the network on query k's sample took just now. Measured once per network and
    reused by every policy, so policies still see common service times.
    """

    def __init__(self, model: Any, inputs: Any, device: Any, mean_ms: float, threads: int = 1):
        self.model, self.inputs, self.device, self._mean, self.threads = model, inputs, device, mean_ms, threads
        self._times: np.ndarray | None = None

    def mean(self) -> float:
        return self._mean

    def ppf(self, u: np.ndarray) -> np.ndarray:
        from models.profile import time_forward, torch_threads

        if self._times is None or len(self._times) != len(u):
            with torch_threads(self.threads if self.device.type == "cpu" else None):
                self._times = np.array([time_forward(self.model, x[None].to(self.device), self.device)
                                        for x in self.inputs])
        return self._times


def live_config(config: SimConfig, facts: NetworkFacts, seed: int, threads: int = 1) -> SimConfig:
    """The same point with every service time measured live (see LiveForwardTimes)."""
    import torch

    from sim import draw

    draws = draw(config, seed)
    offsets = np.cumsum([0] + [len(x) for x in facts.test_inputs])
    union = torch.cat(facts.test_inputs)
    index = np.where(draws.model >= 0, offsets[np.maximum(draws.model, 0)] + draws.sample_id, draws.sample_id)
    inputs = union[torch.from_numpy(index)]
    device = torch.device(facts.device)
    live = {name: LiveForwardTimes(model, inputs, device, float(facts.profile_ms[name].mean()), threads)
            for name, model in facts.served.items()}
    service = config.service.model_copy(update={
        "experts": tuple(live[e["name"]] for e in facts.experts), "expert": live[facts.experts[0]["name"]],
        "coded": live["coded"], **({"backup": live["backup"]} if "backup" in live else {})})
    return config.model_copy(update={"service": service})


def live_check(scenario: Scenario, facts: NetworkFacts, config: SimConfig) -> dict[str, Any]:
    """Replay the first queries of the main point with live forward passes; compare with the profiled run.

    Also reports each network's mean service time both ways: when the tails disagree, a shift of the machine's
    speed between profiling and replay (near saturation, a few percent matter) is the first thing to check.
    """
    n = scenario.profile.live_check_queries
    short = config.model_copy(update={"n_queries": n})
    profiled = simulate(short, scenario.seed).summary
    live_short = live_config(short, facts, scenario.seed, scenario.profile.threads)
    live = simulate(live_short, scenario.seed).summary
    per_policy = {
        policy: {f"{kind}_{key}": float(source[policy][key]) for kind, source in (("profiled", profiled),
                                                                                     ("live", live))
                 for key in ("p50_ms", "p99_ms", "mean_ms")}
        for policy in profiled
    }
    service = {name: {"profiled_mean_ms": float(facts.profile_ms[name].mean()),
                      "live_mean_ms": float(np.mean(dist._times))}
               for name, dist in zip([e["name"] for e in facts.experts] + ["coded", "backup"],
                                     [*live_short.service.experts, live_short.service.coded,
                                      live_short.service.backup], strict=True)
               if dist is not None and dist._times is not None}
    first = next(iter(per_policy.values()))
    return {"n_queries": n, **first, "per_policy": per_policy, "service": service}


class PointStore:
    """Finished sweep points on disk, so an interrupted sweep resumes without redoing them.

    Lives in a hidden work folder next to the results, named by a hash of the resolved scenario; a point counts
    as finished once its summary JSON exists, which is written (atomically) after its records. The folder is
    only created when the first thing is saved into it.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def finished(self) -> int:
        """How many finished points the folder holds (intact or not)."""
        return len(list(self.folder.glob("point-*.json"))) if self.folder.is_dir() else 0

    def _paths(self, index: int) -> tuple[Path, Path]:
        return self.folder / f"point-{index:04d}.parquet", self.folder / f"point-{index:04d}.json"

    def done(self, index: int) -> bool:
        return self._paths(index)[1].is_file() and self.intact(index)

    def intact(self, index: int) -> bool:
        """Whether point `index`'s summary parses as a JSON object and its records' parquet footer reads: a
        file truncated or overwritten after the run stopped is not a finished point, and is run again."""
        import pyarrow.parquet as pq

        table, meta = self._paths(index)
        try:
            ok = isinstance(json.loads(meta.read_text()), dict)
            pq.read_metadata(table)
        except Exception:  # OSError, JSON errors, RecursionError and pyarrow's own
            return False
        return ok

    def damaged(self) -> list[int]:
        """Indexes of the points whose files are there but unreadable."""
        found = sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("point-*.json")
                       if p.stem.split("-")[1].isdigit()) if self.folder.is_dir() else []
        return [i for i in found if not self.intact(i)]

    def table(self, index: int) -> Path:
        """Where point `index`'s records go (`run_point` writes them there itself when given the path)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self._paths(index)[0]

    def save(self, index: int, records: pd.DataFrame | None, summary: dict[str, Any]) -> None:
        """Keep a finished point (without answer_mask, which servers_used spells out and no file holds: past 63
        servers it is a Python int wider than a parquet column); records None: already written to `table`."""
        table, meta = self._paths(index)
        self.folder.mkdir(parents=True, exist_ok=True)
        if records is not None:
            kept = records.drop(columns=["answer_mask"], errors="ignore")
            atomic.write_with(table, lambda path: kept.to_parquet(path, index=False))
        atomic.write_with(meta, lambda path: path.write_text(json.dumps(_jsonable(summary))))

    def summary(self, index: int) -> dict[str, Any]:
        return json.loads(self._paths(index)[1].read_text())

    def load(self, index: int) -> tuple[pd.DataFrame, dict[str, Any]]:
        table, meta = self._paths(index)
        return pd.read_parquet(table), json.loads(meta.read_text())


def _execute(points: list[tuple[dict[str, Any], SimConfig]], seed: int, answers: AnswerTables | None,
             scenario: Scenario, store: PointStore, quiet: bool) -> None:
    """Run every unfinished point — in this process, on local worker processes, or on a Dask cluster — and
    store each as soon as it is done."""
    from tqdm import tqdm

    todo = [i for i in range(len(points)) if not store.done(i)]
    if len(todo) < len(points):
        say(f"resuming: {len(points) - len(todo)} of {len(points)} point(s) already done", not quiet)
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc="sweep", unit="point", file=sys.stderr,
               disable=quiet or not sys.stderr.isatty() or len(points) == 1)
    sweep = scenario.sweep
    in_process = sweep is None or (sweep.executor == "local" and sweep.workers == 1) or len(todo) <= 1
    try:
        if in_process or scenario.profile.mode == "live":  # live forward passes need this process's networks
            for i in todo:  # records streamed to the point's file policy by policy
                store.save(i, *run_point(points[i][1], seed, answers, store.table(i)))
                bar.update(1)
        elif sweep.executor == "local":
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # never more workers than points: a fork-started pool starts every worker it is allowed at once
            # (--workers 100000 on two points forked until the machine's load average reached 1,140)
            with ProcessPoolExecutor(max_workers=min(sweep.workers, len(todo))) as pool:  # each writes its own
                futures = {pool.submit(run_point, points[i][1], seed, answers, store.table(i)): i for i in todo}
                for future in as_completed(futures):
                    store.save(futures[future], *future.result())
                    bar.update(1)
        else:
            _execute_on_dask(points, todo, seed, answers, sweep, store, bar)
    finally:
        bar.close()


def _execute_on_dask(points, todo, seed, answers, sweep, store: PointStore, bar) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if sweep.scheduler:
        client = Client(sweep.scheduler)
    else:
        cluster = LocalCluster(n_workers=min(sweep.workers, len(todo)), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        shared = client.scatter(answers, broadcast=True) if answers is not None else None
        futures = {client.submit(run_point, points[i][1], seed, shared, pure=False): i for i in todo}
        for future in as_completed(futures):
            store.save(futures[future], *future.result())
            bar.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def task_classes(zoo: Any, n_classes: int) -> np.ndarray:
    """(N, K) mask of the classes each expert's task covers: the labels of its training data (so trained and given
    experts with the same data agree); every class for an expert whose training labels are unknown."""
    mask = np.zeros((len(zoo.experts), n_classes), dtype=bool)
    for i, expert in enumerate(zoo.experts):
        train_y = getattr(expert, "train_y", None)
        if train_y is None:
            mask[i] = True
        else:
            mask[i, np.unique(np.asarray(train_y)).astype(int)] = True
    return mask


def _backup_accuracy(answers: AnswerTables, names: list[str], task: bool) -> dict[str, float]:
    """Per expert: the generalist's accuracy alone on that expert's test partition (task classes or every class)."""
    out = {}
    tables = answers if task else replace(answers, task_classes=None)
    for i, name in enumerate(names):
        rows = np.arange(answers.offsets[i], answers.offsets[i + 1])
        pred = tables.backup_answers(np.full(len(rows), i), rows)
        out[name] = float((pred == answers.labels[rows]).mean() * 100)
    return out


def latency_model_name(scenario: Scenario) -> str:
    """'served', 'compute', 'live' (real passes per task) or 'given' (a scenario without networks)."""
    if scenario.models is None:
        return "given"
    if scenario.profile.mode == "live":
        return "live"
    return scenario.profile.latency_model


def uses_calibration(scenario: Scenario) -> bool:
    """Does this scenario's run predict served latency (and so need the machine's serving calibration)?
    Live mode times real passes per task instead, and a scenario without networks gives its own service."""
    return (scenario.models is not None and scenario.profile.latency_model == "served"
            and scenario.profile.mode != "live")


def scenario_device(scenario: Scenario) -> str:
    """The device the scenario's networks run on ('cpu', 'cuda', 'cuda:N'), 'auto' resolved."""
    from models.networks import pick_device

    return str(pick_device(scenario.device))


def serving_calibration(scenario: Scenario, quiet: bool = False, reuse: Path | None = None) -> tuple[Any, Path | None]:
    """The machine's serving calibration this run uses, and where it came from: `reuse` (an interrupted run's
    copy), `profile.calibration`, or this machine's cached one — measured first when there is none or it can
    no longer be used (one line says why). (None, None) when the run does not predict served latency."""
    if not uses_calibration(scenario):
        return None, None
    from calibration import CalibrationError, default_path, load_calibration, machine_key, save_calibration

    device = scenario_device(scenario)
    machine = machine_key(device)
    if reuse is not None and reuse.is_file():
        return load_calibration(reuse, expect_machine=machine), reuse
    if scenario.profile.calibration is not None:  # a file the user named: used as is, or refused (preflight)
        path = Path(scenario.profile.calibration).expanduser()
        return load_calibration(path, expect_machine=machine), path
    path = default_path(device)
    if path.is_file():
        try:
            return load_calibration(path, expect_machine=machine), path
        except CalibrationError as error:
            say(f"calibration: {error}; measuring this machine again", not quiet)
    else:
        say("calibration: none for this machine and device yet; measuring how it serves, once", not quiet)
    from calibration.measure import calibrate

    calibration = calibrate(device, progress=not quiet)
    save_calibration(calibration, path)
    say(f"calibration: saved {path} (coinsim calibrate --show)", not quiet)
    return calibration, path


def build_point_configs(scenario: Scenario, facts: NetworkFacts | None, only: int | None = None,
                        calibration: Any = None) -> list[tuple[Any, SimConfig]]:
    """The SimConfig of every sweep point (or of point `only` alone), with measured service times and sample
    pools filled in; a point outside some policy's capacity region is refused (ScenarioError) unless the
    scenario allows unstable loads.

    With a `calibration` (the served latency model, scenarios.served) the service times are the served costs of
    the profiled passes, the physical options of serving are switched on, `traffic.load` and the capacity check
    are against the served capacity, and percentile hedge delays are of the primary's served response; without
    one, the bare profiled passes are the service times."""
    expert_service = coded_service = backup_service = pools = None
    physical: dict[str, Any] = {}
    measured = (getattr(facts, "served_passes", None) or {}) if calibration is not None else {}
    if facts is not None:
        if calibration is not None:
            physical = served_model.physical_table(calibration, facts.device, served_model.experts_pass_ms(facts))
            beside = served_model.experts_beside([measured.get(e["name"]) for e in facts.experts]) \
                if measured else None
            if beside is not None:  # the work beside the pass as the experts' own traffic showed it
                physical["service"].update(beside)
        overhead = physical.get("service", {}).get("overhead_ms", 0.0)  # beside every pass, never stretched

        def service_of(name: str) -> dict[str, Any]:
            samples = facts.profile_ms[name]
            if name in measured:  # at the busiest measured level until the point's utilization is known
                return {"kind": "empirical", "samples_ms": served_model.served_pass_samples(measured[name], None)}
            if calibration is not None:
                return {"kind": "empirical", "samples_ms": served_model.served_samples(calibration, samples, overhead)}
            return {"kind": "empirical", "samples_ms": samples.tolist()}

        expert_service = [service_of(e["name"]) for e in facts.experts]
        coded_service = service_of("coded")
        if "backup" in facts.profile_ms:  # a generalist other than the coded model, profiled on its own
            backup_service = service_of("backup")
        pools = facts.answers.pools
    configs = []
    points = scenario.sweep_points()
    for values, table in points if only is None else [points[only]]:
        own_cores = "cores" in table.get("service", {})  # a scenario's own service.cores wins
        own_network = "network" in table  # and its own one-way delays
        for key, value in physical.items():  # the scenario's own [sim] settings win over the calibration's
            if key in ("service", "stragglers"):
                table[key] = {**value, **table.get(key, {})}
            else:
                table.setdefault(key, value)
        capacity = served_model.routed_capacity(calibration, facts.device, served_model.experts_pass_ms(facts),
                                                measured=bool(measured)) \
            if calibration is not None and facts is not None else None
        if capacity is not None and measured:  # read at the passes as they ran at the busiest level (their wake in)
            capacity = served_model.at_means(capacity, [measured[e["name"]].busiest_mean_ms for e in facts.experts],
                                             [np.mean(s["samples_ms"]) for s in expert_service])
        config = sim_config_for(scenario, table, expert_service, coded_service, pools, check_capacity=False,
                                backup_service=backup_service, capacity=capacity)
        if calibration is not None and not own_cores:
            config = served_model.with_served_cores(config, calibration, facts.device if facts else "cpu")
        if calibration is not None and facts is not None:
            served_mean = float(np.mean([measured[e["name"]].busiest_mean_ms if measured else np.mean(s["samples_ms"])
                                         for e, s in zip(facts.experts, expert_service, strict=True)])) \
                + config.service.beside_pass_ms
            if not own_network:
                config = served_model.with_served_delays(config, calibration, facts.device, served_mean)
            if measured:  # the networks' own served passes (and their traffic's delays, unless the scenario's)
                config = served_model.with_measured_passes(config, calibration, facts, served_mean,
                                                           delays=not own_network)
            else:
                config = served_model.with_served_passes(config, calibration, facts.device,
                                                         served_model.experts_pass_ms(facts), served_mean)
        check_point_capacity(scenario, config, values, served=calibration is not None)
        if pools is not None:
            config = config.model_copy(update={"traffic": config.traffic.model_copy(
                update={"ensemble_sample_pool": int(sum(pools))})})
        if calibration is not None:
            config = served_model.resolve_served_delays(config, scenario.seed)
        if facts is not None and scenario.profile.mode == "live":
            config = live_config(config, facts, scenario.seed, scenario.profile.threads)
        configs.append((values, config))
    return configs


def check_point_capacity(scenario: Scenario, config: SimConfig, values: dict[str, Any], served: bool) -> None:
    """Refuse a point outside some policy's capacity region (ScenarioError naming the load and the capacity),
    unless the scenario allows unstable loads."""
    from scenarios.schema import ScenarioError
    from sim.layout import check_stability

    if scenario.allow_unstable:
        return
    problem = check_stability(config)
    if problem:
        load = scenario.sim.traffic.load
        load = values.get("traffic.load", load)
        where = f"sim.traffic.load = {load!r}: " if load is not None else ""
        note = (" (against the served capacity: latency model 'served', each task costing its server the "
                "calibration's served time, the servers sharing the cores the dispatcher leaves)") if served else ""
        raise ScenarioError(f"unstable load: {where}{problem}{note}; lower the load, or set allow_unstable = true "
                            "to simulate the transient")


def _versions() -> dict[str, str]:
    """Versions of what computed the numbers, and `engine`: 'compiled' or why the simulator ran as Python
    (accel.status(); the same numbers either way)."""
    out = {"python": platform.python_version(), "engine": accel.status()}
    for pkg in ("coinsim", "torch", "simpy", "numpy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing optional package just isn't listed
            continue
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _clean_toml(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean_toml(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_clean_toml(v) for v in value if v is not None]
    return value


def _work_folder(out_root: Path, scenario_name: str, raw: dict[str, Any]) -> Path:
    """Where an unfinished run keeps its finished points: keyed by the resolved scenario, hidden."""
    import hashlib

    digest = hashlib.sha256(json.dumps(_jsonable(raw), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return out_root / scenario_name / f".unfinished-{digest}"


def check_unfinished(out_root: Path, scenario_name: str, raw: dict[str, Any], resume: bool) -> None:
    """Refuse to start over when an interrupted run of the same resolved scenario left finished points."""
    from scenarios.schema import ScenarioError

    work = _work_folder(out_root, scenario_name, raw)
    done = PointStore(work).finished()
    if done and not resume:
        raise ScenarioError(f"{work} holds {done} finished point(s) of an interrupted run of this scenario: add "
                            "--resume to continue it, or delete that folder to start over")
    if resume:  # what the finished points were made with must still read, or they cannot be joined by new ones
        for name, read in ((PROFILE, pd.read_csv), (CALIBRATION, lambda p: json.loads(p.read_text())),
                           (SERVED_PROFILE, read_served_profile)):
            if (work / name).is_file():
                try:
                    read(work / name)
                except (OSError, ValueError, RecursionError, UnicodeDecodeError, pd.errors.ParserError):
                    raise ScenarioError(f"{work / name} of the interrupted run is damaged: delete {work} to start "
                                        "over") from None


def _remove_if_empty(folders: list[Path]) -> None:
    """rmdir each folder (deepest first) that exists and is empty; others are left alone."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            continue


def run_scenario(
    scenario: Scenario,
    raw: dict[str, Any],
    out_root: Path = Path("results"),
    quiet: bool = False,
    render: Callable[[Path], Path] | None = None,
    resume: bool = False,
) -> Path:
    """Run a validated scenario end to end and return its result folder (written atomically).

    Finished sweep points are kept in a hidden work folder until the whole run is assembled; with `resume`, a
    run of the same resolved scenario that was interrupted continues where it stopped (with the latency
    profile it had measured, so old and new points agree).
    """
    started = time.perf_counter()
    work = _work_folder(out_root, scenario.name, raw)
    check_unfinished(out_root, scenario.name, raw, resume)
    if not resume:  # no finished point in it (checked above): at most a profile from an earlier attempt
        shutil.rmtree(work, ignore_errors=True)
    created = [folder for folder in (work, *work.parents) if not folder.exists()]  # deepest first
    store = PointStore(work)
    if resume and (damaged := store.damaged()):
        say(f"resuming: the files of point(s) {', '.join(str(i) for i in damaged)} are damaged; they are run again",
            not quiet)
    try:
        scenario, calibration, calibration_path, facts = _prepare_run(scenario, work, resume, quiet)
        points = build_point_configs(scenario, facts, calibration=calibration)
        say(f"simulating {len(points)} point(s) × {len(points[0][1].policies)} policies", not quiet)
        sim_started = time.perf_counter()
        _execute(points, scenario.seed, facts.answers if facts else None, scenario, store, quiet)
        sim_seconds = time.perf_counter() - sim_started
    except BaseException:
        _remove_if_empty(created)  # a failure before anything was saved leaves no empty folders behind
        raise
    if facts is not None and facts.parity_models:  # parity-decoded answers, judged on the parity networks
        for i, (_, config) in enumerate(points):  # one point's records in memory at a time
            store.save(i, *judge_parity_answers(*store.load(i), config, facts.answers, facts.parity_models,
                                                facts.test_inputs, scenario.coding.parity_encoder))
    results = [(None, store.summary(i)) for i in range(len(points))]
    sweep = _sweep_table(points, results)
    queries = _queries_writer(points, store)
    summary = _run_summary(scenario, facts, calibration, calibration_path if calibration_path is None
                           or calibration_path.parent != work else None, points, results)
    summary["timings"] = {**(facts.timings if facts else {}), "simulation_s": sim_seconds,
                          "total_s": time.perf_counter() - started}
    if facts is not None and scenario.profile.live_check_queries > 0:
        say(f"live check: replaying {scenario.profile.live_check_queries} queries with real forward passes", not quiet)
        summary["live_check"] = {**live_check(scenario, facts, points[-1][1]), "point": summary["headline_point"]}
    if facts is not None:
        summary.update(networks_summary(scenario, facts))
    write = _result_writer(scenario, raw, summary, queries, sweep, calibration, facts)
    final = atomic.publish_folder(out_root / scenario.name / datetime.now().strftime("%Y%m%d-%H%M%S-%f"), write)
    shutil.rmtree(work, ignore_errors=True)
    render_or_warn(final, render)
    return final


def _prepare_run(scenario: Scenario, work: Path, resume: bool, quiet: bool
                 ) -> tuple[Scenario, Any, Path | None, NetworkFacts | None]:
    """The serving calibration, the networks (trained or loaded, coded, profiled) and their served profile, each
    kept in the work folder as soon as it exists so an interrupted run resumes with the same ones."""
    if scenario.models is not None and resume and (work / PROFILE).is_file():
        scenario = scenario.model_copy(update={"profile": scenario.profile.model_copy(update={"replay": work})})
    calibration, calibration_path = serving_calibration(scenario, quiet, reuse=work / CALIBRATION)
    facts = prepare_networks(scenario, quiet) if scenario.models is not None else None
    if facts is not None and not (work / PROFILE).is_file():
        work.mkdir(parents=True, exist_ok=True)
        atomic.write_with(work / PROFILE, lambda path: _profile_frame(facts).to_csv(path, index=False))
    if calibration is not None and not (work / CALIBRATION).is_file():
        atomic.write_with(work / CALIBRATION, lambda path: path.write_text(calibration.model_dump_json(
            indent=2)))
    if facts is not None:
        facts.served_passes, facts.served_source = served_pass_profile(scenario, facts, calibration, quiet,
                                                                       reuse=work / SERVED_PROFILE)
        if facts.served_passes and not (work / SERVED_PROFILE).is_file():
            atomic.write_with(work / SERVED_PROFILE, lambda path: served_frame(facts).to_csv(path, index=False))
    return scenario, calibration, calibration_path, facts


def _sweep_table(points: list[tuple[dict[str, Any], SimConfig]], results: list[tuple[Any, dict[str, Any]]]
                 ) -> pd.DataFrame:
    """One row per (point, policy) with the sweep coordinates and the policy's statistics."""
    rows = []
    for index, ((values, _), (_, summary)) in enumerate(zip(points, results, strict=True)):
        coords = {axis_column(axis): value for axis, value in values.items()}
        rows.extend({"point": index, **coords, "policy": policy, **stats} for policy, stats in summary.items())
    return pd.DataFrame(rows)


def _queries_writer(points: list[tuple[dict[str, Any], SimConfig]], store: PointStore) -> Callable[[Path], None]:
    """What writes queries.parquet: every point's records with `point` and the sweep coordinates in front,
    streamed from the points' files a row group at a time (never the whole run in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = [axis_column(axis) for axis in points[0][0]]
    coord_types = {c: pa.Array.from_pandas(pd.Series([values[a] for values, _ in points])).type
                   for c, a in zip(columns, points[0][0], strict=True)}

    def write(path: Path) -> None:
        writer, schema = None, None
        try:
            for index, (values, _) in enumerate(points):
                source = pq.ParquetFile(store.table(index))
                for group in range(source.num_row_groups):
                    table = source.read_row_group(group)
                    n = table.num_rows
                    front = [("point", pa.array(np.full(n, index, np.int64)))]
                    front += [(c, pa.repeat(pa.scalar(values[a], type=coord_types[c]), n))
                              for c, a in zip(columns, values, strict=True)]
                    table = pa.Table.from_arrays([a for _, a in front] + table.columns,
                                                 names=[c for c, _ in front] + table.column_names)
                    if writer is None:
                        schema = table.schema.remove_metadata()
                        writer = pq.ParquetWriter(path, schema)
                    writer.write_table(table.replace_schema_metadata(None).cast(schema))
        finally:
            if writer is not None:
                writer.close()

    return write


def _with_latency(policies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per policy: its statistics plus their latency keys grouped under `latency_ms` (p99_ms -> latency_ms.p99)."""
    return {policy: {**stats, "latency_ms": {key.removesuffix("_ms"): stats[key] for key in LATENCY_KEYS
                                             if key in stats}}
            for policy, stats in policies.items()}


def deployment_facts(config: SimConfig) -> dict[str, Any]:
    """What every policy runs on: each expert's instances and its balancer, the code groups, the extra servers, and
    how the policies share their random numbers (per (query, server) or per task: sim.draws)."""
    return {"instances": list(config.instance_counts), "balancer": config.deployment.balancer,
            "groups": [list(g) for g in config.code_groups], "cells": config.deployment.cells,
            "extra_servers": config.n_extra,
            "servers": config.n_servers, "draws": config.draws}


def _run_summary(scenario: Scenario, facts: NetworkFacts | None, calibration: Any, calibration_path: Path | None,
                 points: list[tuple[dict[str, Any], SimConfig]],
                 results: list[tuple[pd.DataFrame, dict[str, Any]]]) -> dict[str, Any]:
    """summary.json's simulation part: what ran, the latency model, every point's statistics per policy."""
    columns = scenario.sweep.columns if scenario.sweep else []
    headline = len(points) - 1  # the last sweep point, as before points were all written
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": scenario.seed,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "device": facts.device if facts else "n/a",
        "sweep_axis": columns[0] if columns else None,
        "sweep_axes": columns,
        "allow_unstable": scenario.allow_unstable,
        "deployment": deployment_facts(points[headline][1]),
        "latency_model": served_model.describe(
            calibration, calibration_path, latency_model_name(scenario),
            served_model.experts_pass_ms(facts) if facts else None, facts.served_passes if facts else None,
            facts.served_source if facts else None),
        "headline_point": headline,
        "policies": _with_latency(results[headline][1]),
        "points": [{"point": index, **{axis_column(axis): value for axis, value in values.items()},
                    "rate_per_ms": config.traffic.routed_rate(),  # routed queries per ms the load came to
                    "ensemble_rate_per_ms": config.traffic.ensemble_rate_per_ms,
                    "policies": _with_latency(point_summary)}
                   for index, ((values, config), (_, point_summary)) in enumerate(zip(points, results,
                                                                                        strict=True))],
    }


def networks_summary(scenario: Scenario, facts: NetworkFacts) -> dict[str, Any]:
    """summary.json's networks part: the experts, the coded and backup networks' accuracy, the coding matrix,
    every coding method's NDA and the latency profile."""
    percent = {"accuracy": "accuracy_pct", "nda": "nda_pct", "decoded_acc": "decoded_acc_pct",
               "expert_acc": "expert_acc_pct"}  # the networks side measures these in percent already
    a, names = facts.answers, [e["name"] for e in facts.experts]
    out: dict[str, Any] = {
        "experts": [{percent.get(k, k): v for k, v in e.items()} for e in facts.experts],
        "coded_method": facts.coded_name,
        "backup": {  # the generalist on each expert's own test partition, answering alone (argmax)
            "method": facts.backup_name,
            "network": "coded" if "backup" not in facts.profile_ms else "backup",
            "classes": "all" if a.task_classes is None else "task",
            "accuracy_pct": _backup_accuracy(a, names, task=True),  # as a backup answers a routed query
            "accuracy_all_classes_pct": _backup_accuracy(a, names, task=False),  # argmax over every class
        },
        "coding_matrix": a.matrix.tolist(),
    }
    if facts.parity:
        out["parity"] = facts.parity  # per parity network: k, expert, cost, degraded-mode accuracy
    if facts.multi_decode:
        from coin.multicode import worst_condition

        out["multi_decode"] = [{percent.get(k, k): v for k, v in row.items()} for row in facts.multi_decode]
        groups = code_groups(scenario, len(names))
        r = a.matrix.shape[0] // len(groups)  # the decoding systems that can arise: within one group's block
        out["coding_matrix_worst_condition"] = max(worst_condition(a.matrix[g * r:(g + 1) * r][:, members])
                                                   for g, members in enumerate(groups))
    out["coding"] = {
        method: {"nda_pct": dict(zip(g["expert"], g["nda_pct"], strict=True)),
                 "nda_avg_pct": float(g["nda_pct"].mean()),
                 "decoded_acc_pct": dict(zip(g["expert"], g["decoded_acc_pct"], strict=True)),
                 "expert_acc_pct": dict(zip(g["expert"], g["expert_acc_pct"], strict=True)),
                 "encode_s": float(g.drop_duplicates("code_group")["encode_s"].sum())}  # every group's coding
        for method, g in facts.nda.groupby("method", sort=False)
    }
    out["profile"] = {
        name: {"mean_ms": float(t.mean()), "p50_ms": float(np.percentile(t, 50)),
               "p99_ms": float(np.percentile(t, 99)), "batch_size": scenario.profile.batch_size,
               "device": facts.device, "n_samples": int(len(t))}
        for name, t in facts.profile_ms.items()
    }
    return out


def _result_writer(scenario: Scenario, raw: dict[str, Any], summary: dict[str, Any],
                   queries: Callable[[Path], None],
                   sweep: pd.DataFrame, calibration: Any, facts: NetworkFacts | None) -> Callable[[Path], None]:
    """What fills a result folder (given the temporary folder the atomic publish renames into place)."""

    def write(tmp: Path) -> None:
        resolved = dict(raw, seed=scenario.seed, coinsim_version=summary["versions"].get("coinsim", "?"))
        if scenario.models is not None and "architecture" in raw.get("models", {}):  # given networks: pin the
            resolved["models"] = dict(raw["models"], root=str(Path(scenario.models.root).resolve()))  # paths
        (tmp / SCENARIO).write_text(tomli_w.dumps(_clean_toml(_jsonable(resolved))))
        (tmp / SUMMARY).write_text(json.dumps(_jsonable(summary), indent=2, sort_keys=False))
        queries(tmp / QUERIES)
        sweep.to_parquet(tmp / SWEEP, index=False)
        if calibration is not None:
            (tmp / CALIBRATION).write_text(calibration.model_dump_json(indent=2))
        if facts is not None:
            facts.nda.to_csv(tmp / NDA, index=False)
            _profile_frame(facts).to_csv(tmp / PROFILE, index=False)
            if facts.served_passes:
                served_frame(facts).to_csv(tmp / SERVED_PROFILE, index=False)
            a = facts.answers
            np.savez_compressed(tmp / OUTPUTS, labels=a.labels, offsets=a.offsets,
                                expert_outputs=a.expert_outs, coded_outputs=a.coded_outs, coding_matrix=a.matrix,
                                backup_outputs=a.backup_outs,
                                **({} if a.task_classes is None else {"task_classes": a.task_classes}))

    return write


def render_or_warn(final: Path, render: Callable[[Path], Path] | None) -> None:
    """Render a finished folder's report; a failure is a warning — the results stand without their report."""
    if render is None:
        return
    try:
        render(final)
    except Exception as error:  # noqa: BLE001 - the results stand without their report
        print(f"warning: report not rendered ({error}); retry with `coinsim report {final}`", file=sys.stderr)
