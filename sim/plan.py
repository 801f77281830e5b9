"""A policy's concrete plan: server roles, queues (stations), per-task service times and hedge delays.

Both engines (the fast callback engine and the idiomatic SimPy reference) run from the same Plan, which is
what makes their records comparable one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies import RULES
from sim.config import PolicySpec, SimConfig
from sim.draws import Draws
from sim.layout import layout, server_dist
from sim.tasks import TaskTimes


@dataclass
class Plan:
    name: str
    kind: str
    dispatch: str
    cancel: bool
    fanout: int
    n_experts: int
    hosts: tuple[int, ...]  # per server: model, CODED, SPARE or BACKUP (the experts' instances first)
    mean_ms: tuple[float, ...]  # per server, for expected-delay dispatch
    stations: list[list[int]]  # servers sharing one FIFO queue (one per server unless dispatch='pool')
    station_of: list[int]  # server -> station
    service_ms: np.ndarray | None  # (n, S) task time before slow-episode factor (None: per-task draws, `tasks`)
    delay_ms: list[float] | None  # per model hedge delay (a running delay's start)
    seed: int
    episodes: tuple[float, float, float] | None  # mean_normal, mean_slow, slowdown
    failures: tuple[float, float] | None  # mean_up, mean_down
    affected: frozenset[int]  # servers subject to episodes/failures
    max_batch: int = 1
    batch_cost_per_extra: float = 0.0
    pass_ms: np.ndarray | None = None  # (n, S) task time without the straggle factor (pass + overhead_ms), when
    # cancels finish the pass
    out_ms: np.ndarray | None = None  # (n, S) dispatcher → server delay per (query, server)
    back_ms: np.ndarray | None = None  # (n, S) server → dispatcher delay
    out_busy_ms: tuple[np.ndarray, ...] | None = None  # network.out_by_busy: per entry k, (n, S) delays with k
    # other servers computing (out_ms is then None)
    back_busy_ms: tuple[np.ndarray, ...] | None = None  # network.back_by_busy, the same (back_ms then None)
    cores: float | None = None  # servers share this many cores (processor sharing); None = one each
    quantum: float | None = None  # with cores: round robin in quanta of this many ms instead of sharing
    corun: tuple[float, ...] | None = None  # with cores: slowdown of each computing server by how many others do
    wake: Any = None  # sim.config.Wake: extra compute of a task that starts on a server that sat idle
    joined: float | None = None  # time slicing: chance a start on a free core holds a server off the cores
    dispatcher: tuple[float, float] | None = None  # with time slicing: the dispatcher's CPU ms per send, per return
    dispatcher_own_core: bool = False  # ... waking on its own last core (service.dispatcher.placement)
    finish_pass: bool = False  # a cancel lets the task's pass (pass_ms) end
    stall: bool = False  # with cores: a straggle's extra time (beyond pass_ms) holds the server off the cores
    delay_quantile: float | None = None  # the hedge delay runs at this percentile of direct answers (policies.delays)
    delay_window: int = 1000  # ... over this many routed queries per expert
    extra_of_pass: bool = False  # a straggle's extra time is (f - 1) x the pass's own time on its server
    overhead_ms: float = 0.0  # in every task time: the server's work beside the pass, never stretched
    after_ms: float = 0.0  # the server's work after an output leaves: its next task waits out what is left
    n_base: int = 0  # servers of the experts' own instances (0: n_experts); the extra servers follow
    balancer: str = "jsq"  # which instance of an expert gets a task: jsq | round_robin | power_of_d
    balance_u: np.ndarray | None = None  # (n, d) power_of_d's uniforms per query
    options: dict[str, Any] = field(default_factory=dict)  # the policy kind's own settings (PolicySpec.options)
    groups: tuple[tuple[int, ...], ...] = ()  # code groups of experts (empty: one group of all)
    backups_per_group: bool = False  # a query's backup copy goes to its own code group's backup servers
    cells: int = 1  # the servers split into cells; a query is served in cell qid mod cells
    # service.pass_correlation: per server, its passes' distribution (sorted samples, ms) and scale; and the rule
    pass_tables: tuple[tuple[tuple[float, ...], float], ...] | None = None
    pass_correlation: Any = None
    tasks: TaskTimes | None = None  # per-task draws (sim.draws = "task"): task times and delays drawn per task,
    # in place of service_ms, pass_ms, out_ms, back_ms and their by-busy tables

    @property
    def n_servers(self) -> int:
        return len(self.hosts)

    @property
    def base(self) -> int:
        """Servers 0..base-1 are the experts' own instances."""
        return self.n_base or self.n_experts

    @property
    def code_groups(self) -> tuple[tuple[int, ...], ...]:
        return self.groups or (tuple(range(self.n_experts)),)


def _resolve_delay(spec: PolicySpec, service: np.ndarray | TaskTimes, n: int, n_queries: int) -> list[float] | None:
    """Each expert's hedge delay: given, or a percentile of its first server's task times (per-task draws: of its
    queries' first tasks there)."""
    d = spec.delay_ms
    if d is None:
        return None
    if isinstance(d, str):
        q = float(d[1:])
        if isinstance(service, TaskTimes):
            return [float(np.percentile(service.column(i, n_queries), q)) for i in range(n)]
        return [float(np.percentile(service[:, i], q)) for i in range(n)]
    if isinstance(d, tuple):
        return [float(x) for x in d]
    return [float(d)] * n


def make_plan(cfg: SimConfig, spec: PolicySpec, draws: Draws) -> Plan:
    n, s_tot = cfg.n_experts, cfg.n_servers
    lay = layout(cfg, spec)
    overhead = cfg.service.overhead_ms  # beside the pass: never stretched by a straggle
    tasks = None
    if draws.service_u is None:  # per-task draws
        tasks = TaskTimes(cfg, lay.hosts, draws.seed)
        svc = base = None
    else:
        scale = np.asarray(cfg.service.scale or (1.0,) * s_tot)
        base = np.empty_like(draws.service_u)
        for s, h in enumerate(lay.hosts):
            base[:, s] = server_dist(cfg, h).ppf(draws.service_u[:, s]) * scale[s]
        svc = base * draws.task_factor + overhead
    net = cfg.network
    finish_pass = cfg.service.cancel_in_service == "finish_pass"
    stall = cfg.service.cores is not None and cfg.stragglers.hold == "stall"
    of_pass = cfg.stragglers.extra_of == "pass"
    corr = cfg.service.pass_correlation
    scales = cfg.service.scale or (1.0,) * s_tot
    if spec.dispatch in RULES[spec.kind].pooled:  # an expert's servers share one queue (one station)
        stations = [[s for s, h in enumerate(lay.hosts) if h == i] for i in range(n)]
    else:
        stations = [[s] for s in range(s_tot)]
    station_of = [0] * s_tot
    for k, members in enumerate(stations):
        for s in members:
            station_of[s] = k
    st = cfg.stragglers
    ep = st.episodes
    fl = st.failures
    return Plan(
        name=str(spec.name),
        kind=spec.kind,
        dispatch=str(spec.dispatch),
        cancel=spec.cancel,
        fanout=spec.fanout,
        options=spec.options,
        n_experts=n,
        hosts=lay.hosts,
        mean_ms=lay.mean_ms,
        stations=stations,
        station_of=station_of,
        service_ms=svc,
        delay_ms=_resolve_delay(spec, svc if tasks is None else tasks, n, draws.n),
        delay_quantile=spec.delay_quantile,
        delay_window=spec.delay_window,
        seed=draws.seed,
        episodes=None if ep is None else (ep.mean_normal_ms, ep.mean_slow_ms, ep.slowdown),
        failures=None if fl is None else (fl.mean_up_ms, fl.mean_down_ms),
        affected=frozenset(range(s_tot) if st.servers is None else st.servers),
        max_batch=cfg.service.max_batch,
        batch_cost_per_extra=cfg.service.batch_cost_per_extra,
        pass_ms=base + overhead if base is not None and (finish_pass or stall or of_pass or cfg.service.joined_share
                                                                  or corr is not None)
        else None,
        out_ms=_delays(net.out, draws.net_out_u, base) if net.out_by_busy is None else None,
        out_busy_ms=None if net.out_by_busy is None or base is None else tuple(
            _delays(dist, draws.net_out_u, base) for dist in net.out_by_busy),
        back_ms=_delays(net.back, draws.net_back_u, base) if net.back_by_busy is None else None,
        back_busy_ms=None if net.back_by_busy is None or base is None else tuple(
            _delays(dist, draws.net_back_u, base) for dist in net.back_by_busy),
        cores=cfg.service.cores,
        quantum=cfg.service.quantum_ms,
        corun=cfg.service.corun_slowdown,
        wake=cfg.service.wake,
        joined=cfg.service.joined_share,
        dispatcher=None if cfg.service.dispatcher is None else (cfg.service.dispatcher.send_ms,
                                                                cfg.service.dispatcher.return_ms),
        dispatcher_own_core=cfg.service.dispatcher is not None and cfg.service.dispatcher.placement == "own_core",
        finish_pass=finish_pass,
        stall=stall,
        extra_of_pass=of_pass,
        overhead_ms=overhead,
        after_ms=cfg.service.after_ms,
        n_base=cfg.n_base,
        balancer=cfg.deployment.balancer,
        balance_u=draws.balance_u,
        groups=cfg.code_groups if cfg.deployment.groups is not None else (),
        backups_per_group=cfg.deployment.backups == "per_group",
        cells=cfg.deployment.cells,
        tasks=tasks,
        pass_correlation=corr,
        pass_tables=None if corr is None else tuple((server_dist(cfg, h).samples_ms, float(scales[s]))
                                                    for s, h in enumerate(lay.hosts)),
    )


def _delays(dist, u: np.ndarray | None, base: np.ndarray | None) -> np.ndarray | None:
    """Per-(query, server) network delays, or None when the scenario has none in that direction (or draws them
    per task: base None)."""
    if dist is None or base is None:
        return None
    if u is None or u.shape != base.shape:
        raise ValueError("draws lack the network-delay uniforms this config needs (draw them with sim.draw)")
    return dist.ppf(u)
