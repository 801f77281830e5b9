"""hedged: an instance of the expert first; after `delay_ms`, if still unanswered, a copy to the least-loaded
replica (the r extra servers hold replicas, as under replication)."""

from __future__ import annotations

from policies.codes import ROLE_DIRECT, ROLE_HEDGE
from policies.rules import Query, Rules, least_loaded


class Hedged(Rules):
    kind = "hedged"
    dispatches = ("hedged",)
    delayed = frozenset({"hedged"})
    extra_host = None  # replicas

    def routed(self, q: Query) -> None:
        s = self.at(q)
        s.send(q, self.expert(q, q.model), ROLE_DIRECT)
        if len(s.hosts[q.model]) > len(s.instances[q.model]):  # it has replicas to hedge to
            s.hedge_after(q, self.hedge_delay(q.model))

    def ensemble(self, q: Query) -> None:
        s = self.at(q)
        for i in range(s.n_experts):
            s.send(q, self.expert(q, i), ROLE_DIRECT)
        s.hedge_after(q, self.hedge_delay(-1))

    def hedge(self, q: Query) -> None:
        s = self.at(q)
        models = [q.model] if q.model >= 0 else [m for m in range(s.n_experts) if not (q.cover >> m) & 1]
        for m in models:
            replicas = s.replicas[m]
            if replicas:
                s.send(q, least_loaded(s, replicas), ROLE_HEDGE)
