"""Which model each of the N + r servers hosts under a policy, and the necessary stability conditions.

Servers 0..N-1 always host experts 0..N-1; servers N..N+r-1 are the policy's extra resources (spares,
replicas, coded servers or generalist backups). Keeping the indices fixed is what lets every policy share the
per-server random numbers (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: config checks stability through this module
    from sim.config import PolicySpec, SimConfig

BACKUP = -3
SPARE = -2
CODED = -1
# what each kind of policy puts on the r extra servers (replication: replicas, see replica_models)
EXTRA_HOST = {"uncoded": SPARE, "coded": CODED, "backup": BACKUP}


@dataclass(frozen=True)
class Layout:
    hosts: tuple[int, ...]  # per server: model index, CODED, SPARE or BACKUP
    mean_ms: tuple[float, ...]  # per server: mean service time incl. scale and stragglers

    def servers_of(self, model: int) -> list[int]:
        return [s for s, h in enumerate(self.hosts) if h == model]


def replica_models(cfg: SimConfig, spec: PolicySpec) -> list[int]:
    n, r = cfg.n_experts, cfg.r
    if isinstance(spec.replica_of, tuple):
        return list(spec.replica_of)
    if spec.replica_of == "hot":
        hot = int(np.argmax(cfg.traffic.mean_shares(n)))
        return [hot] * r
    return [k % n for k in range(r)]


def layout(cfg: SimConfig, spec: PolicySpec) -> Layout:
    n, r = cfg.n_experts, cfg.r
    hosts = list(range(n))
    if spec.kind in EXTRA_HOST:
        hosts += [EXTRA_HOST[spec.kind]] * r
    else:
        hosts += replica_models(cfg, spec)
    scale = cfg.service.scale or (1.0,) * (n + r)
    strag = cfg.stragglers
    means = []
    overhead = cfg.service.overhead_ms
    for s, h in enumerate(hosts):
        m = server_dist(cfg, h).mean() * scale[s]
        if strag.servers is None or s in strag.servers:
            m = m * strag.task_factor_mean() + overhead
            if strag.episodes is not None:
                m *= strag.episodes.mean_factor()
        else:
            m += overhead
        means.append(m)
    return Layout(tuple(hosts), tuple(means))


def server_dist(cfg: SimConfig, host: int) -> Any:
    """The service distribution of a server hosting `host` (a model index, CODED, SPARE or BACKUP)."""
    if host == BACKUP:
        return cfg.service.backup_dist()
    if host in (CODED, SPARE):
        return cfg.service.coded_dist()
    return cfg.service.expert_dist(host)


def backup_demand(lam_routed: np.ndarray, lam_ens: float, cap_expert: list[float]) -> float:
    """The least rate of queries (per ms) the backup servers must answer because the experts cannot.

    Model i's routed queries (rate lam_routed[i]) are answered by expert i or by a backup; an ensemble query
    (rate lam_ens) by all N experts or by one backup. With a share y of ensemble queries sent to the backups,
    expert i can keep at most cap_expert[i] of its demand lam_routed[i] + (1 - y) lam_ens and the rest goes to
    the backups, so the backups need g(y) = Σᵢ max(0, lam_routed[i] + (1 - y) lam_ens - cap_expert[i]) + y lam_ens
    below the backups' capacity for some y in [0, 1]: min g is what this returns. g is convex and piecewise
    linear, so its minimum is at y = 0, y = 1 or a kink.
    """
    candidates = {0.0, 1.0}
    if lam_ens > 0:
        for lam, cap in zip(lam_routed, cap_expert, strict=True):
            y = 1.0 - (cap - lam) / lam_ens
            if 0.0 < y < 1.0:
                candidates.add(y)

    def g(y: float) -> float:
        return sum(max(0.0, lam + (1 - y) * lam_ens - cap) for lam, cap in zip(lam_routed, cap_expert, strict=True)) \
            + y * lam_ens

    return min(g(y) for y in candidates)


def _availability(cfg: SimConfig, s: int) -> float:
    f = cfg.stragglers.failures
    if f is None or (cfg.stragglers.servers is not None and s not in cfg.stragglers.servers):
        return 1.0
    return f.availability()


def _cores_problem(cfg: SimConfig, spec: PolicySpec, lay: Layout) -> str | None:
    """With `service.cores`, the servers' computing must fit on the shared cores: every routed query computes at
    least one pass on a server of its model, every ensemble query at least N (the N cheapest servers). A
    straggle held as a stall is spent off the cores, so it does not count then."""
    cores = cfg.service.cores
    if cores is None:
        return None
    strag, n = cfg.stragglers, cfg.n_experts
    scale = cfg.service.scale or (1.0,) * len(lay.hosts)

    def on_core(s: int) -> float:
        m = server_dist(cfg, lay.hosts[s]).mean() * scale[s]
        if strag.hold == "compute" and (strag.servers is None or s in strag.servers):
            m *= strag.task_factor_mean()
        return m + cfg.service.overhead_ms

    per_server = [on_core(s) for s in range(len(lay.hosts))]
    routed = cfg.traffic.routed_rate() * cfg.traffic.mean_shares(n)

    def least(i: int) -> float:  # the cheapest way a routed query for model i can be answered
        own = min(per_server[s] for s in lay.servers_of(i))
        if spec.kind == "backup":
            return min(own, *per_server[n:])
        if spec.kind == "coded":  # decoded: N outputs of the other experts and the coded servers
            return min(own, sum(sorted(per_server[:i] + per_server[i + 1:])[:n]))
        return own

    work = sum(routed[i] * least(i) for i in range(n))
    work += cfg.traffic.ensemble_rate_per_ms * sum(sorted(per_server)[:n])
    effective = cfg.service.effective_cores()
    if not work < effective:
        slowed = (f" (worth {effective:.3g} cores of work with servers slowing each other, "
                  "service.corun_slowdown)") if effective < cores else ""
        return (f"policy {spec.name!r}: its servers compute {work:.3g} core-ms per ms, but they share "
                f"service.cores = {cores:.3g} cores{slowed}")
    return None


def check_stability(cfg: SimConfig) -> str | None:
    """Necessary conditions for stability of each policy (capacity region); a message if one fails.

    Necessary, not sufficient: a dispatch rule can still be unstable inside the region (e.g. redundant
    copies without cancellation); such loads show up as growing latency in the records.
    """
    tr = cfg.traffic
    if tr.kind == "trace":
        return None
    n = cfg.n_experts
    lam = tr.routed_rate() * tr.mean_shares(n) + tr.ensemble_rate_per_ms
    for spec in cfg.policies:
        lay = layout(cfg, spec)
        problem = _cores_problem(cfg, spec, lay)
        if problem:
            return problem
        b, extra = cfg.service.max_batch, cfg.service.batch_cost_per_extra
        boost = b / (1 + extra * (b - 1))  # upper bound on the batching speed-up (E[max] >= E[S])
        cap = [
            boost * _availability(cfg, s) / m if np.isfinite(m) and m > 0 else 0.0 for s, m in enumerate(lay.mean_ms)
        ]
        if spec.kind == "backup":
            # the backups take what the experts cannot: a necessary condition whatever the dispatch rule
            routed = tr.routed_rate() * tr.mean_shares(n)
            cap_backup = sum(cap[n:])
            left = backup_demand(routed, tr.ensemble_rate_per_ms, cap[:n])
            if left > 0 and not left < cap_backup:
                return (f"policy {spec.name!r}: the experts leave at least {left:.4g}/ms of queries to the backup, "
                        f"but its {cfg.r} server(s) serve at most {cap_backup:.4g}/ms")
            continue
        if spec.kind == "coded":
            # every routed query needs >= 1 task, every ensemble query >= N tasks of the N + r servers
            work = sum(tr.routed_rate() * tr.mean_shares(n)[i] * lay.mean_ms[i] for i in range(n))
            work += tr.ensemble_rate_per_ms * sum(sorted(lay.mean_ms)[:n])
            if not work < sum(c * m for c, m in zip(cap, lay.mean_ms, strict=True)):
                return f"policy {spec.name!r}: offered work {work:.3g} >= {n + cfg.r} servers"
            continue
        for i in range(n):
            hosts = lay.servers_of(i)
            c = sum(cap[s] for s in hosts)
            if not lam[i] < c:
                rho = lam[i] * lay.mean_ms[i]
                return (
                    f"policy {spec.name!r}: model {i} gets {lam[i]:.4g}/ms but its {len(hosts)} server(s) "
                    f"serve at most {c:.4g}/ms (load {rho:.3g})"
                )
    return None
