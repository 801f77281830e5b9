"""The served latency model: from a network's isolated profile and the machine's serving calibration to what
serving that network on this machine costs.

`coinsim run` simulates bare forward passes only with `profile.latency_model = "compute"`. By default
(`"served"`) every simulated task is what a real server process on this machine would spend on it, and every
query travels as it would through a real dispatcher:

- a task holds its server for its network's pass as serving shows it plus the server's own per-task work (sending the
  output, reading its socket, being scheduled again: a busy server's cycle less its pass in service, measured by the
  calibration and read at the experts' isolated pass: `service.overhead_ms`, which a straggle does not stretch — a
  served straggler is held (f - 1) x its pass). The served pass is measured on the scenario's own networks
  (`with_measured_passes`, calibration.passes: real servers under Poisson traffic, lone passes per core utilization,
  read at the point's utilization) — a pass after other processes used the core runs longer, by an amount that
  depends on the network, not on its isolated time alone; and a pass runs longer the longer its server sat idle
  and the more the other servers computed meanwhile (they evict its caches), by the network's measured wake,
  added at what each simulated task's server saw (so a coded or backup server that sits idle between hedges
  while the experts work computes them slower than a busy expert's server). Without that
  profile (`profile.served_passes = "calibration"`), the isolated sample on the calibration's line plus what
  serving adds to a pass of that isolated time in the calibration's own random-weight networks (`with_served_passes`);
- each task takes a one-way dispatch delay to reach its server and a return delay to come back: the calibration's
  samples measured under serving traffic, interpolated to the point's core utilization (`with_served_delays`:
  a busier machine answers later, a sleeping one wakes slower), and a cancelled pass runs to its end, as a real
  pass cannot be interrupted;
- the servers share the cores, time-sliced in the quantum the calibration measured the OS to give competing
  processes; the dispatcher's CPU work per task (the calibration's, half at the send and half when the output
  comes back; a cancel costs it a send, and a reply when it finds the task live) runs on them with priority,
  preempting a server, as a real-time frontend does — so a burst of arrivals takes a core from the servers exactly
  when their queues grow; and servers computing side by side on different cores slow each other by the
  calibration's co-running stretch (shared caches, memory bandwidth, SMT siblings);
- `traffic.load` is a fraction of the *served* capacity: the largest rate both the expert servers (at their
  served cost) and the cores the dispatcher leaves can sustain (`routed_capacity`),
  and a hedge or backup delay given as a percentile ('p95') is that percentile of the primary's served
  response: the latency of the uncoded policy, the expert alone, simulated at the same point on the same draws.

Pure numpy/pandas/sim: the calibration is read from its file here, measured elsewhere (calibration.measure).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sim import SimConfig

LATENCY_MODELS = ("served", "compute")
PRIMARY = "primary-alone"
MEANINGS = {
    "compute": "bare compute: forward passes timed in isolation, no dispatch, transport, per-task serving work or "
               "time slicing (not what serving shows)",
    "live": "a real forward pass timed per simulated task in this process (bare compute, not served)",
    "given": "the scenario's own service distributions",
}  # the pilot policy whose latency defines a served percentile delay


def served_samples(calibration: Any, pass_ms: np.ndarray, overhead_ms: float = 0.0) -> list[float]:
    """The served cost of every isolated pass sample, less the per-task work `overhead_ms` the simulator adds to
    every task beside it: the empirical service distribution's samples."""
    served = np.asarray(calibration.served_ms(np.asarray(pass_ms, float)), float) - overhead_ms
    if served.shape != np.shape(pass_ms) or not np.all(np.isfinite(served)) or np.any(served <= 0):
        raise ValueError("calibration: the served cost of a pass must be finite and > 0")
    return served.tolist()


def served_pass_samples(passes: Any, utilization: float | None) -> list[float]:
    """A network's served passes (`calibration.passes.ServedPasses`) at this core utilization (None: the busiest
    measured level), as the empirical service distribution's samples; the server's work beside the pass is
    `service.overhead_ms` (`Calibration.work_beside_pass_ms`)."""
    level = passes.levels[-1].samples_ms if utilization is None else passes.samples_at(utilization)
    served = np.asarray(level, float)
    if not np.all(np.isfinite(served)) or np.any(served <= 0):
        raise ValueError("served profile: the served cost of a pass must be finite and > 0")
    return served.tolist()


def with_measured_passes(config: SimConfig, calibration: Any, facts: Any, served_mean_ms: float,
                         delays: bool = True) -> SimConfig:
    """The point's config with every network's service the served passes measured for it
    (`facts.served_passes`) at this point's core utilization (the per-task work beside the pass is the config's
    `service.overhead_ms`); and with
    `delays`, the one-way delays measured in the experts' own traffic at that utilization (their quantiles
    averaged over the experts) where the profile has them."""
    from sim.config import Network, PassCorrelation

    cores = 1.0 if facts.device.startswith("cuda") else float(calibration.machine.cpu_count)
    u = core_utilization(config, served_mean_ms, cores)
    service = config.service
    experts = [facts.served_passes.get(e["name"]) for e in facts.experts]
    if delays and all(p is not None and p.has_delays for p in experts):
        out, back = (np.mean(parts, axis=0) for parts in zip(*(p.delays_at(u) for p in experts), strict=True))
        network: dict[str, Any] = {"out": {"kind": "empirical", "samples_ms": out.tolist()},
                                   "back": {"kind": "empirical", "samples_ms": back.tolist()}}
        for way in ("out", "back"):
            by_busy = experts_busy_tables(experts, way)
            if by_busy and config.service.cores is not None:
                network[f"{way}_by_busy"] = [{"kind": "empirical", "samples_ms": table} for table in by_busy]
        config = config.model_copy(update={"network": Network.model_validate(network)})

    def at(name: str, dist: Any) -> Any:
        if dist is None or getattr(dist, "kind", None) != "empirical" or name not in facts.served_passes:
            return dist
        samples = served_pass_samples(facts.served_passes[name], u)
        return dist.model_copy(update={"samples_ms": tuple(samples)})

    names = [e["name"] for e in facts.experts]
    update = {"coded": at("coded", service.coded), "backup": at("backup", service.backup),
              "experts": tuple(at(n, d) for n, d in zip(names, service.experts, strict=True))
              if service.experts is not None else None}
    wake = experts_wake(experts)
    if wake is not None:
        update["wake"] = wake
    joined = experts_joined(experts)
    if joined is not None and service.quantum_ms is not None:
        update["joined_share"] = joined
    service = service.model_copy(update=update)
    corr = experts_pass_correlation(experts)
    if corr is not None and service.max_batch == 1 and all(d.kind == "empirical" for d in service.used_dists()):
        service = service.model_copy(update={"pass_correlation": PassCorrelation(**corr)})
    return config.model_copy(update={"service": service})


def experts_joined(experts: list[Any]) -> float | None:
    """The chance that a server starting on a free core holds a computing one off its core
    (`ServedPasses.joined_share`), averaged over the experts; None when any expert has none."""
    shares = [p.joined_share if p is not None else None for p in experts]
    if not shares or any(h is None for h in shares):
        return None
    return float(np.mean(shares))


def experts_pass_correlation(experts: list[Any]) -> dict[str, list[float]] | None:
    """How a server's consecutive passes move together as the experts' served profiles measured it
    (`ServedPasses.pass_correlation`), the correlation per idle-time range averaged over the experts; None when any
    expert has none or their ranges differ."""
    tables = [p.pass_correlation if p is not None else None for p in experts]
    if not tables or any(t is None for t in tables) or len({tuple(t["idle_ms"]) for t in tables}) != 1:
        return None
    return {"idle_ms": list(tables[0]["idle_ms"]),
            "rho": [round(float(x), 4) for x in np.mean([t["rho"] for t in tables], axis=0)]}


def experts_beside(experts: list[Any]) -> dict[str, float] | None:
    """The server's own work per task beside the pass as the experts' served profiles measured it in their
    traffic (`ServedPasses.before_output_ms` / `after_output_ms`), averaged over the experts, as the simulator's
    `service.overhead_ms` (before the output leaves: in the answer's latency) and `service.after_ms` (after: the
    server's next task waits it out); None when any expert has none (the calibration's busy-server cycle then
    stands in, all of it before the output)."""
    if not experts or any(p is None or p.before_output_ms is None for p in experts):
        return None
    return {"overhead_ms": float(np.mean([p.before_output_ms for p in experts])),
            "after_ms": float(np.mean([p.after_output_ms for p in experts]))}


def experts_busy_tables(experts: list[Any], way: str) -> list[list[float]]:
    """The `way` ('out' or 'back') delay by how many other servers compute (`ServedPasses.out_by_busy_ms` /
    `back_by_busy_ms`), the experts' tables averaged quantile by quantile, as many counts as every expert has;
    empty when any has none."""
    tables = [getattr(p, f"{way}_by_busy_ms") if p is not None else () for p in experts]
    counts = min((len(t) for t in tables), default=0)
    return [np.mean([t[k] for t in tables], axis=0).tolist() for k in range(counts)]


def experts_wake(experts: list[Any]) -> Any:
    """The wake every simulated server draws on (`service.wake`, one for all servers: extra pass after an idle time
    plus extra after the other servers' busy time meanwhile): the experts' measured curves (`ServedPasses.wake`)
    averaged part by part at the union of their points; None when any expert has none."""
    from calibration.passes import wake_extra
    from sim.config import Wake

    curves = [p.wake if p is not None else None for p in experts]
    if not curves or any(c is None for c in curves):
        return None

    def mean(at: str, extra: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        points = np.unique(np.concatenate([c[at] for c in curves]))
        values = np.mean([wake_extra((tuple(c[at]), tuple(c[extra])), points) for c in curves], axis=0)
        return tuple(points.tolist()), tuple(np.maximum(values, 0.0).tolist())

    idle, busy = mean("idle_ms", "extra_ms"), mean("others_busy_ms", "others_extra_ms")
    return Wake(idle_ms=idle[0], extra_ms=idle[1], others_busy_ms=busy[0], others_extra_ms=busy[1])


def experts_pass_ms(facts: Any) -> float:
    """The experts' isolated pass (median over their profiled samples): where the calibration's per-size tables
    are read for this scenario's networks."""
    return float(np.median(np.concatenate([np.asarray(facts.profile_ms[e["name"]], float) for e in facts.experts])))


def physical_table(calibration: Any, device: str, pass_ms: float) -> dict[str, Any]:
    """What a served run adds to a point's sim table besides service times: the server's per-task work beside
    the pass (`Calibration.work_beside_pass_ms` at the experts' isolated pass `pass_ms`; no straggle stretches it:
    a testbed server holds a straggler (f - 1) x its forward pass, not x its bookkeeping), the measured one-way
    delays, finish-the-pass cancels and the cores (less the dispatcher's steady share, filled in per point by
    `with_served_cores`), time-sliced in the measured quantum with the dispatcher's CPU per task run on them ahead
    of the servers, servers computing side by side slowed as the calibration measured for a network whose
    isolated pass is `pass_ms` (on a CPU)."""
    service: dict[str, Any] = {"cancel_in_service": "finish_pass",
                               "overhead_ms": calibration.work_beside_pass_ms(pass_ms),
                               "cores": 1.0 if device.startswith("cuda") else float(calibration.server_cores(0.0))}
    wake = calibration.wake_table(pass_ms)
    if not calibration.passes_under_load and any(extra > 0 for extra in wake["extra_ms"]):
        service["wake"] = wake  # an older calibration: the idle-time curve (what serving adds is in it, partly)
    if not device.startswith("cuda"):
        quantum = calibration.quantum_ms
        if quantum is not None and math.isfinite(quantum) and quantum > 0:
            service["quantum_ms"] = float(quantum)
            service["dispatcher"] = dispatcher_work(calibration)
        corun = calibration.corun_slowdown(pass_ms)
        if any(factor > 1.0 for factor in corun):
            service["corun_slowdown"] = corun
    return {
        "stragglers": {"extra_of": "pass"},  # a served straggler holds (f - 1) x its pass as it ran (the testbed's)
        "network": {"out": {"kind": "empirical", "samples_ms": list(map(float, calibration.out_ms_samples()))},
                    "back": {"kind": "empirical", "samples_ms": list(map(float, calibration.back_ms_samples()))}},
        "service": service,
    }


def dispatcher_work(calibration: Any) -> dict[str, Any]:
    """The dispatcher's CPU work per task as the simulator takes it (`service.dispatcher`): the calibration's
    CPU per task (frontend process, all threads), half when the task is sent and half when its output is taken
    back — the calibration measures the sum, not the split; a frontend that ran at real-time priority wakes on
    its own last core (placement 'own_core'), preempting the server there even with a core free."""
    per_task = max(float(calibration.dispatcher.cpu_ms_per_task), 0.0)
    placement = "own_core" if calibration.dispatcher.frontend_priority == "realtime" else "free_core"
    return {"send_ms": per_task / 2.0, "return_ms": per_task / 2.0, "placement": placement}


def core_utilization(config: SimConfig, served_mean_ms: float, cores: float) -> float:
    """The busy share of the machine's `cores` that the primary tasks of this point keep computing: task rate ×
    mean served cost / cores (the quantity the calibration's delay levels and the served profile's levels are
    indexed by: every pass the cores ran). A straggler held by computing (`stragglers.hold = "compute"`) runs
    passes for (f − 1) × its pass after it, so the cost counts the stragglers' mean factor on the pass part (the
    served cost less the work beside the pass); one held as a stall leaves the cores."""
    work = served_mean_ms
    strag = config.stragglers
    if strag.hold == "compute" and strag.p > 0:
        on_pass = max(served_mean_ms - config.service.beside_pass_ms, 0.0)
        work += (strag.task_factor_mean() - 1.0) * on_pass
    return float(task_rate_per_ms(config) * work / max(cores, 1e-9))


def with_served_delays(config: SimConfig, calibration: Any, device: str, served_mean_ms: float) -> SimConfig:
    """The point's config with one-way delays drawn from the calibration's samples at this point's core
    utilization (interpolated between its measured levels; its idle-server samples when it has none)."""
    from sim.config import Network

    cores = 1.0 if device.startswith("cuda") else float(calibration.machine.cpu_count)
    u = core_utilization(config, served_mean_ms, cores)
    network = Network.model_validate({
        "out": {"kind": "empirical", "samples_ms": list(map(float, calibration.out_ms_samples(u)))},
        "back": {"kind": "empirical", "samples_ms": list(map(float, calibration.back_ms_samples(u)))}})
    return config.model_copy(update={"network": network})


def with_served_passes(config: SimConfig, calibration: Any, device: str, pass_ms: float,
                       served_mean_ms: float) -> SimConfig:
    """The point's config with what serving traffic adds to a pass (the calibration's lone passes under traffic,
    read at the experts' isolated pass and this point's core utilization) added to every served sample of every
    network: wake-ups after idling and the interruptions of the dispatcher and the I/O threads, which an isolated
    or a busy server's pass does not show. Unchanged where the calibration has no such measurement."""
    cores = 1.0 if device.startswith("cuda") else float(calibration.machine.cpu_count)
    extra = calibration.serving_extra_ms(pass_ms, core_utilization(config, served_mean_ms, cores))
    if not extra:
        return config
    service = config.service

    def shifted(dist: Any) -> Any:  # the profiled (empirical) ones; `expert` is an unused default beside `experts`
        if getattr(dist, "kind", None) != "empirical":
            return dist
        return dist.model_copy(update={"samples_ms": tuple(float(x) + extra for x in dist.samples_ms)})

    update = {"expert": shifted(service.expert), "coded": shifted(service.coded), "backup": shifted(service.backup),
              "experts": tuple(shifted(d) for d in service.experts) if service.experts is not None else None}
    return config.model_copy(update={"service": service.model_copy(update=update)})


def routed_capacity(calibration: Any, device: str, pass_ms: float, measured: bool = False) -> Any:
    """The served capacity `traffic.load` is a fraction of: the largest routed rate (even split over the experts)
    that both the expert servers (1 / mean served cost each) and the shared cores can sustain, every task at a
    busy server's cost plus what serving traffic adds to a pass at the busiest level the calibration measured, the
    dispatcher taking its share of the cores at that rate and servers that compute side by side slowing each
    other (the calibration's co-running stretch at an isolated pass of `pass_ms`). `measured`: the means given
    are of the networks' measured served passes at their busiest level, so nothing is added to them."""
    from sim.config import Service

    # held at the busiest measured level; with measured served passes, the means given are already at it
    extra = 0.0 if measured else (calibration.serving_extra_ms(pass_ms, 1.0) or 0.0)

    def capacity(means: list[float], counts: list[int] | None = None) -> float:
        """`means`: each expert's mean served cost; `counts`: its instances (one each by default)."""
        means = [m + extra for m in means]
        servers = sum(k / m for m, k in zip(means, counts or [1] * len(means), strict=True))
        if device.startswith("cuda"):
            return servers
        work = float(np.mean(means))  # core-ms per routed query, queries split evenly
        left = max(calibration.machine.cpu_count - calibration.dispatcher.base_cores, 1e-9)
        corun = calibration.corun_slowdown(pass_ms)
        cores = Service(cores=left, corun_slowdown=corun or None).effective_cores()  # servers slowing each other
        per_task = calibration.dispatcher.cpu_ms_per_task
        return min(servers, cores / (work + max(per_task, 0.0)))

    return capacity


def at_means(capacity: Any, means_ms: list[float], samples_means_ms: list[float]) -> Any:
    """The capacity function read, expert by expert, at `means_ms` (the experts' passes as they ran at the busiest
    measured level, wake included) instead of the means of the samples it is given (`samples_means_ms`, the same
    order; the per-task work beside the pass is kept): a load stays the fraction of the rate the servers sustained
    at that level, whatever part of their passes the wake curve explains."""
    shifts = [float(m - s) for m, s in zip(means_ms, samples_means_ms, strict=True)]

    def read(means: list[float], counts: list[int] | None = None) -> float:
        return float(capacity([m + d for m, d in zip(means, shifts, strict=True)], counts))

    return read


def task_rate_per_ms(config: SimConfig) -> float:
    """Tasks the dispatcher sends per ms at the least: one per routed query, N per ensemble query (the primary
    path of every policy)."""
    return float(config.traffic.routed_rate() + config.n_experts * config.traffic.ensemble_rate_per_ms)


def server_cores(calibration: Any, config: SimConfig, device: str) -> float:
    """Cores the servers share at this point: the machine's, less the dispatcher's share — its steady part only
    when the simulator runs its per-task work on the cores (`service.dispatcher`), else its share at the point's
    task rate; on a GPU, the one device every server's kernels share."""
    if device.startswith("cuda"):
        return 1.0
    rate = 0.0 if config.service.dispatcher is not None else task_rate_per_ms(config)
    return float(calibration.server_cores(rate))


def with_served_cores(config: SimConfig, calibration: Any, device: str) -> SimConfig:
    """The point's config with the servers sharing the cores the dispatcher leaves them."""
    cores = server_cores(calibration, config, device)
    service = config.service.model_copy(update={"cores": cores})
    if service.quantum_ms is not None and service.dispatcher is None and cores >= config.n_servers:
        service = service.model_copy(update={"quantum_ms": None})  # a core per server: nothing to slice
    return config.model_copy(update={"service": service})


def resolve_served_delays(config: SimConfig, seed: int) -> SimConfig:
    """Every delay given as a percentile ('pNN') becomes milliseconds: that percentile, per expert, of the
    latency of routed queries answered by their expert alone (the uncoded policy) at this point, on the same
    draws — the primary's served response, dispatch, queueing and return included."""
    from sim import PolicySpec, simulate

    pending = [p for p in config.policies if isinstance(p.delay_ms, str)]
    if not pending:
        return config
    pilot = config.model_copy(update={"policies": (PolicySpec(kind="uncoded", name=PRIMARY),)})
    records = simulate(pilot, seed).records
    routed = records[(~records["warmup"]) & (records["model"] >= 0)]
    if routed.empty:
        routed = records[records["model"] >= 0]
    everyone = routed["latency_ms"].to_numpy()
    policies = []
    for spec in config.policies:
        if isinstance(spec.delay_ms, str):
            q = float(spec.delay_ms[1:])
            delays = []
            for i in range(config.n_experts):
                mine = routed.loc[routed["model"] == i, "latency_ms"].to_numpy()
                sample = mine if len(mine) >= 20 else everyone
                delays.append(float(np.percentile(sample, q)) if len(sample) else 0.0)
            spec = PolicySpec.model_validate({**spec.model_dump(), "delay_ms": tuple(delays)})
        policies.append(spec)
    return config.model_copy(update={"policies": tuple(policies)})


def describe(calibration: Any, path: Path | None, latency_model: str, pass_ms: float | None = None,
             served_passes: dict[str, Any] | None = None, served_source: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """What summary.json, the CLI and the report say about the latency model and its calibration (the co-running
    slowdown as read for an isolated pass of `pass_ms`), and the networks' measured served passes when the run
    has them (`served_passes`: name -> calibration.passes.ServedPasses) with where they came from
    (`served_source`, scenarios.runner.ServedProfile.source)."""
    if latency_model != "served" or calibration is None:
        return {"name": latency_model, "calibration": None, "meaning": MEANINGS.get(latency_model, latency_model)}
    if served_passes:
        meaning = ("predicted served latency: the networks' own passes and one-way delays served under traffic, "
                   "the delays by how many servers compute when a message leaves, the chance that a server waking "
                   "on a free core holds a computing one off its core, each server's own work per task before and "
                   "after its output leaves, how a server's consecutive passes move together (served_profile.csv) "
                   "+ this "
                   "machine's serving calibration (per-task serving cost, the dispatcher's CPU per task and per cancel "
                   "run on the cores ahead of the servers, time slicing, co-running slowdown)")
    else:
        meaning = ("predicted served latency: isolated profile + this machine's serving calibration (per-task "
                   "serving cost, one-way delays under traffic, the dispatcher's CPU per task and per cancel run on "
                   "the cores ahead of the servers, time slicing, co-running slowdown, what serving traffic adds to a "
                   "pass)")
    out = {"name": "served", "meaning": meaning,
           "calibration": {"path": str(path) if path is not None else None, **brief(calibration, pass_ms)}}
    if served_passes:
        out["served_passes"] = {name: [{"utilization": level.utilization, "rate_per_ms": level.rate_per_ms,
                                        "n_lone": level.n_lone,  # the mean as the passes ran; the rest: warm
                                        "mean_ms": float(level.served_mean_ms if level.served_mean_ms is not None
                                                         else np.mean(level.samples_ms)),
                                        "warm_mean_ms": float(np.mean(level.samples_ms)),
                                        "p50_ms": float(np.median(level.samples_ms)),
                                        "p99_ms": float(np.quantile(level.samples_ms, 0.99))}
                                       for level in passes.levels]
                                for name, passes in served_passes.items()}
        out["served_wake"] = {name: passes.wake for name, passes in served_passes.items() if passes.wake}
        out["served_beside"] = {name: {"before_output_ms": passes.before_output_ms,
                                       "after_output_ms": passes.after_output_ms}
                                for name, passes in served_passes.items() if passes.before_output_ms is not None}
        out["served_pass_correlation"] = {name: passes.pass_correlation for name, passes in served_passes.items()
                                          if passes.pass_correlation is not None}
        if served_source:
            out["served_profile"] = dict(served_source)
    return out


def brief(calibration: Any, pass_ms: float | None = None) -> dict[str, Any]:
    """The calibration's key numbers, as summary.json and the report quote them (the co-running slowdown for an
    isolated pass of `pass_ms`; none without one)."""
    out, back = calibration.out_ms_samples(), calibration.back_ms_samples()
    levels = [{"utilization": level.utilization, "out_ms_median": level.out.median_ms,
               "out_ms_p99": level.out.p99_ms, "back_ms_median": level.back.median_ms, "back_ms_p99": level.back.p99_ms}
              for level in calibration.delays.under_load]
    return {"machine": calibration.machine.model_dump(), "created": calibration.created,
            "served_overhead_ms": calibration.serving.overhead_ms, "served_slope": calibration.serving.slope,
            "work_beside_pass_ms": calibration.work_beside_pass_ms(pass_ms) if pass_ms else None,
            "out_ms_median": float(np.median(out)), "back_ms_median": float(np.median(back)),
            "delays_under_load": levels,
            "quantum_ms": calibration.quantum_ms,
            "corun_slowdown": calibration.corun_slowdown(pass_ms) if pass_ms else [],
            "corun_pass_ms": pass_ms,
            "dispatcher_base_cores": calibration.dispatcher.base_cores,
            "dispatcher_cpu_ms_per_task": calibration.dispatcher.cpu_ms_per_task}
