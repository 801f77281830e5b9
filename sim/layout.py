"""Which model each of the N + r servers hosts under a policy, and the necessary stability conditions.

Servers 0..N-1 always host experts 0..N-1; servers N..N+r-1 are the policy's extra resources (spares,
replicas, coded servers or generalist backups). Keeping the indices fixed is what lets every policy share the
per-server random numbers (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from policies import RULES
from policies.codes import BACKUP, CODED, PARITY, SPARE
from policies.rules import Offered
from sim.config import PolicySpec, SimConfig


@dataclass(frozen=True)
class Layout:
    hosts: tuple[int, ...]  # per server: model index, CODED, SPARE or BACKUP
    mean_ms: tuple[float, ...]  # per server: mean service time incl. scale and stragglers

    def servers_of(self, model: int) -> list[int]:
        return [s for s, h in enumerate(self.hosts) if h == model]


def replica_models(cfg: SimConfig, spec: PolicySpec) -> list[int]:
    """The expert each extra server holds a replica of: given, all the hottest expert's, or spread over the experts
    (with cells, within each cell: the extra servers come r per code group and cell, cell by cell in a group)."""
    n, r = cfg.n_experts, cfg.n_extra
    if isinstance(spec.replica_of, tuple):
        return list(spec.replica_of)
    if spec.replica_of == "hot":
        hot = int(np.argmax(cfg.traffic.mean_shares(n)))
        return [hot] * r
    per, cells = cfg.r, cfg.deployment.cells  # the k-th extra server: the (k % per)-th of block k // per, whose
    blocks = r // per  # group is block // cells and cell block % cells; counted cell by cell, each cell's extra
    return [((k // per % cells) * blocks // cells * per + (k // per // cells) * per + k % per) % n  # servers
            for k in range(r)]  # continue the spread where the previous cell's ended


def base_hosts(cfg: SimConfig) -> list[int]:
    """What the base deployment's servers host: each expert's first instance (servers 0..N-1), then the further
    instances expert by expert."""
    return list(range(cfg.n_experts)) + [i for i, k in enumerate(cfg.instance_counts) for _ in range(k - 1)]


def layout(cfg: SimConfig, spec: PolicySpec) -> Layout:
    r = cfg.n_extra  # r per code group, group by group
    hosts = base_hosts(cfg)
    extra = RULES[spec.kind].extra_host  # what the policy puts on the r extra servers (None: replicas)
    hosts += replica_models(cfg, spec) if extra is None else [extra] * r
    strag = cfg.stragglers
    straggled = _straggled(cfg, len(hosts))
    factor = np.where(straggled, strag.task_factor_mean(), 1.0)
    means = _host_means(cfg, hosts) * factor + cfg.service.beside_pass_ms
    if strag.episodes is not None:
        means = np.where(straggled, means * strag.episodes.mean_factor(), means)
    return Layout(tuple(hosts), tuple(means.tolist()))


def _straggled(cfg: SimConfig, n_servers: int) -> np.ndarray:
    """Per server: whether the stragglers (and failures) reach it."""
    servers = cfg.stragglers.servers
    if servers is None:
        return np.ones(n_servers, dtype=bool)
    return np.isin(np.arange(n_servers), np.asarray(servers, dtype=np.int64))


def _host_means(cfg: SimConfig, hosts: list[int] | tuple[int, ...]) -> np.ndarray:
    """Per server: the mean drawn service time of what it hosts, times its `service.scale` (one distribution
    mean per kind of host, however many servers)."""
    kinds, which = np.unique(np.asarray(hosts, dtype=np.int64), return_inverse=True)
    per_kind = np.array([server_dist(cfg, int(h)).mean() for h in kinds], dtype=float)
    means = per_kind[which.reshape(-1)]
    scale = cfg.service.scale
    return means if scale is None else means * np.asarray(scale, dtype=float)


def server_dist(cfg: SimConfig, host: int) -> Any:
    """The service distribution of a server hosting `host` (a model index, CODED, SPARE, BACKUP or PARITY: a
    parity model, of the experts' architecture, draws its passes as a coded model's)."""
    if host == BACKUP:
        return cfg.service.backup_dist()
    if host in (CODED, SPARE, PARITY):
        return cfg.service.coded_dist()
    return cfg.service.expert_dist(host)


def _availability(cfg: SimConfig, n_servers: int) -> np.ndarray:
    """Per server: the fraction of time it is up (1 where failures do not reach it)."""
    f = cfg.stragglers.failures
    if f is None:
        return np.ones(n_servers)
    return np.where(_straggled(cfg, n_servers), f.availability(), 1.0)


def _offered(cfg: SimConfig, spec: PolicySpec, lay: Layout) -> Offered:
    """The policy's servers and the mean traffic offered to them, as the policy's capacity rules read them."""
    tr = cfg.traffic
    routed = tr.routed_rate() * tr.mean_shares(cfg.n_experts)
    return Offered(str(spec.name), lay.hosts, [float(x) for x in routed], float(tr.ensemble_rate_per_ms),
                   cfg.n_base, cfg.code_groups if cfg.deployment.groups is not None else (), spec.options,
                   dispatch=spec.dispatch or "", random_arrivals=tr.kind != "trace",
                   backups_per_group=cfg.deployment.backups == "per_group", cells=cfg.deployment.cells)


def _cores_problem(cfg: SimConfig, spec: PolicySpec, lay: Layout) -> str | None:
    """With `service.cores`, the servers' computing must fit on the shared cores: every routed query computes at
    least one pass on a server of its model, every ensemble query at least N (the N cheapest servers). A
    straggle held as a stall is spent off the cores, so it does not count then."""
    cores = cfg.service.cores
    if cores is None:
        return None
    strag, n = cfg.stragglers, cfg.n_experts
    on_core = _host_means(cfg, lay.hosts)
    if strag.hold == "compute":
        on_core = on_core * np.where(_straggled(cfg, len(lay.hosts)), strag.task_factor_mean(), 1.0)
    per_server = (on_core + cfg.service.beside_pass_ms).tolist()
    routed = cfg.traffic.routed_rate() * cfg.traffic.mean_shares(n)

    rules, offered = RULES[spec.kind], _offered(cfg, spec, lay)
    # each routed query at the cheapest answer its policy allows
    work = sum(routed[i] * rules.least_work_ms(offered, i, per_server) for i in range(n))
    work += cfg.traffic.ensemble_rate_per_ms * sum(sorted(per_server)[:n])
    effective = cfg.service.effective_cores()
    if not work < effective:
        slowed = (f" (worth {effective:.3g} cores of work with servers slowing each other, "
                  "service.corun_slowdown)") if effective < cores else ""
        return (f"policy {spec.name!r}: its servers compute {work:.3g} core-ms per ms, but they share "
                f"service.cores = {cores:.3g} cores{slowed}")
    return None


def check_settings(cfg: SimConfig) -> str | None:
    """A policy setting that cannot work with the config's traffic (Rules.settings_problem), as a message."""
    for spec in cfg.policies:
        problem = RULES[spec.kind].settings_problem(_offered(cfg, spec, layout(cfg, spec)))
        if problem:
            return problem
    return None


def check_stability(cfg: SimConfig) -> str | None:
    """Necessary conditions for stability of each policy (capacity region); a message if one fails.

    Necessary, not sufficient: a dispatch rule can still be unstable inside the region (e.g. redundant
    copies without cancellation); such loads show up as growing latency in the records.
    """
    tr = cfg.traffic
    if tr.kind == "trace":
        return None
    for spec in cfg.policies:
        lay = layout(cfg, spec)
        problem = _cores_problem(cfg, spec, lay)
        if problem:
            return problem
        b, extra = cfg.service.max_batch, cfg.service.batch_cost_per_extra
        boost = b / (1 + extra * (b - 1))  # upper bound on the batching speed-up (E[max] >= E[S])
        means = np.asarray(lay.mean_ms, dtype=float)
        usable = np.isfinite(means) & (means > 0)
        cap = np.where(usable, boost * _availability(cfg, len(means)) / np.where(usable, means, 1.0), 0.0).tolist()
        problem = RULES[spec.kind].capacity_problem(_offered(cfg, spec, lay), cap, lay.mean_ms)
        if problem:
            return problem
    return None
