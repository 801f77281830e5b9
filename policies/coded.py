"""coded: the r extra servers host coded models. A routed query for expert i goes to expert i and/or to its
decode group (the other N - 1 experts and `fanout` coded servers, same input), and is decoded once N outputs of
the group are back: both at once (redundant), the group after `delay_ms` (hedged), or only the path with the
shorter expected delay (sed). An ensemble query goes to all N + r servers (sed: the N least loaded; hedged: the
N experts, then the coded servers) and is done once any N are back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.codes import CODED, HOW_DECODED, HOW_DIRECT, ROLE_DIRECT, ROLE_GROUP
from policies.rules import Offered, Query, Rules, Serving


class Coded(Rules):
    kind = "coded"
    dispatches = ("redundant", "hedged", "sed")
    delayed = frozenset({"hedged"})
    extra_host = CODED

    @classmethod
    def least_work_ms(cls, offered: Offered, model: int, work_ms: Sequence[float]) -> float:
        """Its expert's one task, or decoded: as many tasks as its code group has experts, on the group's other
        experts and coded servers."""
        own = super().least_work_ms(offered, model, work_ms)
        g = offered.group_of(model)
        others = [w for s, w in enumerate(work_ms) if s != model and offered.server_group(s) == g
                  and offered.hosts[s] != model]
        return min(own, sum(sorted(others)[: len(offered.members(g))]))

    @classmethod
    def capacity_problem(cls, offered: Offered, cap_per_ms: Sequence[float], mean_ms: Sequence[float]) -> str | None:
        """Every routed query needs at least one task and every ensemble query at least N, of all N + r servers."""
        n = offered.n_experts
        work = sum(offered.routed_per_ms[i] * mean_ms[i] for i in range(n))
        work += offered.ensemble_per_ms * sum(sorted(mean_ms)[:n])
        if not work < sum(c * m for c, m in zip(cap_per_ms, mean_ms, strict=True)):
            return f"policy {offered.name!r}: offered work {work:.3g} >= {len(mean_ms)} servers"
        return None

    def routed(self, q: Query) -> None:
        s, i = self.at(q), q.model
        if s.dispatch == "redundant":
            s.send(q, self.expert(q, i), ROLE_DIRECT)
            self.send_group(q)
        elif s.dispatch == "hedged":
            s.send(q, self.expert(q, i), ROLE_DIRECT)
            s.hedge_after(q, self.hedge_delay(i))
        else:  # sed: only the path with the shorter expected delay (each expert's instance as the balancer picks)
            own, group = self.expert(q, i), self.decode_group(q)
            if _slowest_ms(s, group) < s.expected_ms(own):
                for t in group:
                    s.send(q, t, ROLE_GROUP)
            else:
                s.send(q, own, ROLE_DIRECT)

    def ensemble(self, q: Query) -> None:
        s = self.at(q)
        picks = [self.expert(q, i) for i in range(s.n_experts)]  # one instance of each expert
        if s.dispatch == "redundant":
            for t in [*picks, *s.coded]:
                s.send(q, t, ROLE_GROUP)
        elif s.dispatch == "hedged":
            for t in picks:
                s.send(q, t, ROLE_GROUP)
            s.hedge_after(q, self.hedge_delay(-1))
        else:  # sed: per code group, as many of its experts' picks and its coded targets as it has experts, the
            for g, members in enumerate(s.members):  # ones with the shortest expected delay
                order = sorted([picks[i] for i in members] + list(s.coded_in[g]),
                               key=lambda t: (s.expected_ms(t), s.index(t)))
                for t in order[: len(members)]:
                    s.send(q, t, ROLE_GROUP)

    def hedge(self, q: Query) -> None:
        s = self.at(q)
        if q.model >= 0:
            self.send_group(q)
        else:
            for t in s.coded:
                s.send(q, t, ROLE_GROUP)

    def output(self, q: Query, role: int, server: int, host: int) -> None:
        s, bit = self.at(q), 1 << server
        if q.model >= 0 and role == ROLE_DIRECT:
            s.answer(q, HOW_DIRECT, bit)
            return
        q.got += 1
        q.mask |= bit
        if q.model >= 0:  # decoded once as many outputs of its decode group are in as its code group has experts
            if q.got >= len(s.members[s.group_of[q.model]]):
                s.answer(q, HOW_DECODED, q.mask)
            return
        if host == CODED:
            q.how = HOW_DECODED
        if q.got >= s.n_experts and _decodable(s, q.mask):
            s.answer(q, q.how, q.mask)


def _slowest_ms(s: Serving, group: list[Any]) -> float:
    """The longest expected delay among a decode group's targets (0 for none)."""
    return max((s.expected_ms(t) for t in group), default=0.0)


def _decodable(s: Serving, mask: int) -> bool:
    """Whether the outputs in `mask` decode every code group (as many of each group's servers as it has experts).
    This and `_slowest_ms` are functions of their own: a generator inside a rule would cost every call a closure."""
    return all(bin(mask & m).count("1") >= len(s.members[g]) for g, m in enumerate(s.group_masks))
