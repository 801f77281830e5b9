"""replication: the r extra servers hold replicas of experts; a task goes to every host (redundant), to the
host with the fewest live tasks (jsq), or to the hosts' shared queue (pool)."""

from __future__ import annotations

from policies.codes import ROLE_DIRECT
from policies.rules import Query, Rules, least_loaded


class Replication(Rules):
    kind = "replication"
    dispatches = ("redundant", "jsq", "pool")
    pooled = frozenset({"pool"})
    extra_host = None  # replicas

    @property
    def one_task_routed(self) -> bool:
        return self.s.dispatch != "redundant"

    def _expert(self, q: Query, i: int) -> None:
        s = self.at(q)
        if s.dispatch == "redundant":
            for t in s.hosts[i]:
                s.send(q, t, ROLE_DIRECT)
        else:  # jsq (ties -> the expert's own server) or pool (one shared station)
            s.send(q, least_loaded(s, s.hosts[i]), ROLE_DIRECT)

    def routed(self, q: Query) -> None:
        self._expert(q, q.model)

    def ensemble(self, q: Query) -> None:
        for i in range(self.s.n_experts):
            self._expert(q, i)
