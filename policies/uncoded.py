"""uncoded: each expert on its own server; the r extra servers stay idle (spares)."""

from __future__ import annotations

from policies.codes import ROLE_DIRECT, SPARE
from policies.rules import Query, Rules


class Uncoded(Rules):
    kind = "uncoded"
    dispatches = ("direct",)
    extra_host = SPARE

    @property
    def one_task_routed(self) -> bool:
        return True

    def routed(self, q: Query) -> None:
        self.at(q).send(q, self.expert(q, q.model), ROLE_DIRECT)

    def ensemble(self, q: Query) -> None:
        for i in range(self.s.n_experts):
            self.at(q).send(q, self.expert(q, i), ROLE_DIRECT)
