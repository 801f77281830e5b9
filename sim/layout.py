"""Which model each of the N + r servers hosts under a policy, and the necessary stability conditions.

Servers 0..N-1 always host experts 0..N-1; servers N..N+r-1 are the policy's extra resources (spares,
replicas or coded servers). Keeping the indices fixed is what lets every policy share the per-server random
numbers (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import PolicySpec, SimConfig

SPARE = -2
CODED = -1


@dataclass(frozen=True)
class Layout:
    hosts: tuple[int, ...]  # per server: model index, CODED or SPARE
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
    if spec.kind == "uncoded":
        hosts += [SPARE] * r
    elif spec.kind == "coded":
        hosts += [CODED] * r
    else:
        hosts += replica_models(cfg, spec)
    scale = cfg.service.scale or (1.0,) * (n + r)
    strag = cfg.stragglers
    means = []
    for s, h in enumerate(hosts):
        dist = cfg.service.coded_dist() if h in (CODED, SPARE) else cfg.service.expert_dist(h)
        m = dist.mean() * scale[s]
        if strag.servers is None or s in strag.servers:
            m *= strag.task_factor_mean()
            if strag.episodes is not None:
                m *= strag.episodes.mean_factor()
        means.append(m)
    return Layout(tuple(hosts), tuple(means))


def _availability(cfg: SimConfig, s: int) -> float:
    f = cfg.stragglers.failures
    if f is None or (cfg.stragglers.servers is not None and s not in cfg.stragglers.servers):
        return 1.0
    return f.availability()


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
        b, extra = cfg.service.max_batch, cfg.service.batch_cost_per_extra
        boost = b / (1 + extra * (b - 1))  # upper bound on the batching speed-up (E[max] >= E[S])
        cap = [
            boost * _availability(cfg, s) / m if np.isfinite(m) and m > 0 else 0.0 for s, m in enumerate(lay.mean_ms)
        ]
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
