"""backup: the r extra servers each host one generalist network that answers any query on its own. A routed
query goes to its expert and to the least-loaded backup (after `delay_ms` if hedged, at once if redundant); an
ensemble query to the N experts and one backup copy, whose single output answers it. First answer wins. With
code groups and per-group backups, a routed query's copy goes to the least-loaded of its own group's r backups
(whose generalist covers that group's experts)."""

from __future__ import annotations

from collections.abc import Sequence

from policies.codes import BACKUP, ROLE_BACKUP, ROLE_DIRECT
from policies.rules import Offered, Query, Rules, least_loaded


class Backup(Rules):
    kind = "backup"
    dispatches = ("hedged", "redundant")
    delayed = frozenset({"hedged"})
    extra_host = BACKUP

    @classmethod
    def least_work_ms(cls, offered: Offered, model: int, work_ms: Sequence[float]) -> float:
        """Its expert's one task, or one task on a backup server."""
        backups = [work_ms[s] for s, h in enumerate(offered.hosts) if h == BACKUP]
        return min(super().least_work_ms(offered, model, work_ms), *backups)

    @classmethod
    def capacity_problem(cls, offered: Offered, cap_per_ms: Sequence[float], mean_ms: Sequence[float]) -> str | None:
        """The backups take what the experts cannot: a necessary condition whatever the dispatch rule."""
        n = offered.n_experts
        backups = [s for s, h in enumerate(offered.hosts) if h == BACKUP]
        cap_backup = sum(cap_per_ms[s] for s in backups)
        cap_expert = [sum(cap_per_ms[s] for s in offered.servers_of(i)) for i in range(n)]  # every instance
        left = backup_demand(offered.routed_per_ms, offered.ensemble_per_ms, cap_expert)
        if left > 0 and not left < cap_backup:
            return (f"policy {offered.name!r}: the experts leave at least {left:.4g}/ms of queries to the backup, "
                    f"but its {len(backups)} server(s) serve at most {cap_backup:.4g}/ms")
        if not offered.backups_per_group:
            return None
        for g, members in enumerate(offered.groups):  # each group's backups take what its own experts cannot
            mine = [s for s in backups if offered.server_group(s) == g]
            left = backup_demand([offered.routed_per_ms[i] for i in members], 0.0, [cap_expert[i] for i in members])
            cap = sum(cap_per_ms[s] for s in mine)
            if left > 0 and not left < cap:
                return (f"policy {offered.name!r}: the experts of code group {g} leave at least {left:.4g}/ms of "
                        f"queries to its backup, but its {len(mine)} server(s) serve at most {cap:.4g}/ms")
        return None

    def _backup(self, q: Query) -> None:
        s = self.at(q)
        pool = s.backups_in[s.group_of[q.model]] if s.backups_per_group and q.model >= 0 else s.backups
        s.send(q, least_loaded(s, pool), ROLE_BACKUP)

    def routed(self, q: Query) -> None:
        s = self.at(q)
        s.send(q, self.expert(q, q.model), ROLE_DIRECT)
        if s.dispatch == "redundant":
            self._backup(q)
        else:
            s.hedge_after(q, self.hedge_delay(q.model))

    def ensemble(self, q: Query) -> None:
        s = self.at(q)
        for i in range(s.n_experts):
            s.send(q, self.expert(q, i), ROLE_DIRECT)
        if s.dispatch == "redundant":
            self._backup(q)
        else:
            s.hedge_after(q, self.hedge_delay(-1))

    def hedge(self, q: Query) -> None:
        self._backup(q)  # one copy to a backup answers a routed or an ensemble query alike


def backup_demand(lam_routed: Sequence[float], lam_ens: float, cap_expert: Sequence[float]) -> float:
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
