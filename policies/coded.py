"""coded: the r extra servers host coded models. A routed query for expert i goes to expert i and/or to its
decode group (the other N - 1 experts and `fanout` coded servers, same input), and is decoded once N outputs of
the group are back: both at once (redundant), the group after `delay_ms` (hedged), or only the path with the
shorter expected delay (sed). An ensemble query goes to all N + r servers (sed: the N least loaded; hedged: the
N experts, then the coded servers) and is done once any N are back."""

from __future__ import annotations

from collections.abc import Sequence

from policies.codes import CODED, HOW_DECODED, HOW_DIRECT, ROLE_DIRECT, ROLE_GROUP
from policies.rules import Offered, Query, Rules, coded_pick


class Coded(Rules):
    kind = "coded"
    dispatches = ("redundant", "hedged", "sed")
    delayed = frozenset({"hedged"})
    extra_host = CODED

    @classmethod
    def least_work_ms(cls, offered: Offered, model: int, work_ms: Sequence[float]) -> float:
        """Its expert's one task, or decoded: N tasks on the other experts and the coded servers."""
        own = super().least_work_ms(offered, model, work_ms)
        return min(own, sum(sorted(work_ms[:model] + work_ms[model + 1:])[: offered.n_experts]))

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
        s, i = self.s, q.model
        if s.dispatch == "redundant":
            s.send(q, self.expert(q, i), ROLE_DIRECT)
            self.send_group(q)
        elif s.dispatch == "hedged":
            s.send(q, self.expert(q, i), ROLE_DIRECT)
            s.hedge_after(q, s.delay_ms[i])  # type: ignore[index]
        else:  # sed: only the path with the shorter expected delay (each expert's instance as the balancer picks)
            picks = [self.expert(q, j) for j in range(s.n_experts)]
            group = [t for j, t in enumerate(picks) if j != i] + list(coded_pick(s))
            if max((s.expected_ms(t) for t in group), default=0.0) < s.expected_ms(picks[i]):
                for t in group:
                    s.send(q, t, ROLE_GROUP)
            else:
                s.send(q, picks[i], ROLE_DIRECT)

    def ensemble(self, q: Query) -> None:
        s = self.s
        picks = [self.expert(q, i) for i in range(s.n_experts)]  # one instance of each expert
        if s.dispatch == "redundant":
            for t in [*picks, *s.coded]:
                s.send(q, t, ROLE_GROUP)
        elif s.dispatch == "hedged":
            for t in picks:
                s.send(q, t, ROLE_GROUP)
            s.hedge_after(q, max(s.delay_ms))  # type: ignore[arg-type]
        else:  # sed: the N of them and the coded targets with the shortest expected delay
            order = sorted([*picks, *s.coded], key=lambda t: (s.expected_ms(t), s.index(t)))
            for t in order[: s.n_experts]:
                s.send(q, t, ROLE_GROUP)

    def hedge(self, q: Query) -> None:
        s = self.s
        if q.model >= 0:
            self.send_group(q)
        else:
            for t in s.coded:
                s.send(q, t, ROLE_GROUP)

    def output(self, q: Query, role: int, server: int, host: int) -> None:
        s, bit = self.s, 1 << server
        if q.model >= 0 and role == ROLE_DIRECT:
            s.answer(q, HOW_DIRECT, bit)
            return
        q.got += 1
        q.mask |= bit
        if q.model >= 0:
            if q.got >= s.n_experts:
                s.answer(q, HOW_DECODED, q.mask)
            return
        if host == CODED:
            q.how = HOW_DECODED
        if q.got >= s.n_experts:
            s.answer(q, q.how, q.mask)
