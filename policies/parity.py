"""parity: coding over queries (the learned-parity family), not over models. Each routed query goes to its expert;
the frontend also gathers routed queries into groups of k — in arrival order (`dispatch = "any"`) or per expert
(`"expert"`) — and sends each full group's encoded query to the least-loaded of the r parity servers. A parity
server's output stands for the sum of the group's k outputs, so once it and k - 1 of the members' own outputs are
back, the one missing output is decoded (parity minus the others) and answers its query.

A group still open `group_timeout_ms` after its first member arrived is closed as it is: with `partial = "send"`
a group of at least two is encoded and sent (a lone query is left to its expert), with `"drop"` no parity is sent.
Without a timeout a group waits for its k-th member. Ensemble queries have no parity rule (refused in sim.config).

The parity task and the group timer each travel on a carrier query of their own (`Serving.carrier`: a query no
one answers, drawing as the member it is made from), so answering the members never cancels the parity task and
the timer fires whatever the members do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from policies.codes import HOW_DECODED, HOW_DIRECT, PARITY, ROLE_DIRECT, ROLE_PARITY
from policies.rules import Offered, Query, Rules, least_loaded

FILL_CHANCE = 1e-3  # below this chance of filling within its timeout, a group of k is refused as a setting


class _Group:
    __slots__ = ("key", "members", "carrier", "closed", "parity_server", "out_server")

    def __init__(self, key: int) -> None:
        self.key = key
        self.members: list[Any] = []
        self.carrier: Any = None  # the parity task's carrier, once sent
        self.closed = False  # its parity was sent (or dropped): no more members
        self.parity_server: int | None = None  # set when the parity output is back
        self.out_server: dict[int, int] = {}  # id(member) -> the server whose own output came back (and answered it)


class Parity(Rules):
    kind = "parity"
    dispatches = ("any", "expert")  # what a group gathers: routed queries in arrival order, or one expert's
    extra_host = PARITY

    def __init__(self, serving: Any) -> None:
        super().__init__(serving)
        options = serving.options
        self.k: int = options["k"]
        self.timeout_ms: float | None = options["group_timeout_ms"]
        self.send_partial: bool = options["partial"] == "send"
        self.open: dict[int, _Group] = {}  # group key (0, or the expert) -> the group gathering members
        self.group_of: dict[int, _Group] = {}  # id(member or carrier) -> its group, while it is unresolved
        self.decodes: dict[int, tuple[int, ...]] = {}  # qid of a decoded query -> the qids of its group's others

    @classmethod
    def capacity_problem(cls, offered: Offered, cap_per_ms: Sequence[float], mean_ms: Sequence[float]) -> str | None:
        """Every routed query's own task on its expert, and at least one parity task per k routed queries on the
        parity servers."""
        problem = super().capacity_problem(offered, cap_per_ms, mean_ms)
        if problem:
            return problem
        parity = [s for s, h in enumerate(offered.hosts) if h == PARITY]
        k = offered.options.get("k", 2)
        lam = sum(offered.routed_per_ms) / k
        cap = sum(cap_per_ms[s] for s in parity)
        if parity and not lam < cap:
            return (f"policy {offered.name!r}: groups of {k} send {lam:.4g} parity queries/ms but its "
                    f"{len(parity)} parity server(s) serve at most {cap:.4g}/ms")
        return None

    @classmethod
    def settings_problem(cls, offered: Offered) -> str | None:
        """With a group timeout, a group must be able to fill: refused when the k - 1 further members it needs
        arrive within the timeout with a probability below FILL_CHANCE (Poisson arrivals at the busiest expert's
        mean rate, or all routed queries' with dispatch 'any'), so that nearly every group would close partial."""
        k = int(offered.options.get("k") or 2)
        timeout = offered.options.get("group_timeout_ms")
        rates = offered.routed_per_ms
        if timeout is None or not rates or not offered.random_arrivals:
            return None
        rate = sum(rates) if (offered.dispatch or cls.dispatches[0]) == "any" else max(rates)
        mean = rate * float(timeout)  # further members expected within the timeout
        fills = 1.0 - sum(math.exp(-mean) * mean ** j / math.factorial(j) for j in range(k - 1))
        if fills < FILL_CHANCE:
            return (f"policy {offered.name!r}: a group of k = {k} fills within group_timeout_ms = {timeout:g} with "
                    f"probability {fills:.2g} ({mean:.3g} further queries arrive in that time on average): nearly "
                    "every group would close partial; raise the timeout or lower k")
        return None

    # ---- arrivals and the group timer
    def routed(self, q: Query) -> None:
        s = self.s
        s.send(q, self.expert(q, q.model), ROLE_DIRECT)
        key = q.model if s.dispatch == "expert" else 0
        group = self.open.get(key)
        if group is None:
            group = self.open[key] = _Group(key)
            if self.timeout_ms is not None:
                timer = s.carrier(q)
                self.group_of[id(timer)] = group
                s.hedge_after(timer, self.timeout_ms)
        group.members.append(q)
        self.group_of[id(q)] = group
        if len(group.members) == self.k:
            self._close(group, q)

    def ensemble(self, q: Query) -> None:
        raise ValueError("the parity policy has no rule for ensemble queries")

    def hedge(self, q: Query) -> None:
        """The group timer of a carrier fires: close its group if it is still gathering."""
        group = self.group_of.pop(id(q), None)
        if group is not None and not group.closed:
            self._close(group, group.members[-1])

    def _close(self, group: _Group, last: Query) -> None:
        group.closed = True
        if self.open.get(group.key) is group:
            del self.open[group.key]
        if len(group.members) == self.k or (self.send_partial and len(group.members) >= 2):
            group.carrier = self.s.carrier(last)  # the parity task draws as the closing member's would
            self.group_of[id(group.carrier)] = group
            self.s.send(group.carrier, least_loaded(self.s, self.s.parity), ROLE_PARITY)
        else:
            self._forget(group)

    # ---- outputs
    def output(self, q: Query, role: int, server: int, host: int) -> None:
        s = self.s
        group = self.group_of.get(id(q))
        if role == ROLE_PARITY:
            if group is not None:
                group.parity_server = server
                self._decode(group)
            return
        s.answer(q, HOW_DIRECT, 1 << server)  # its own task went to one of its expert's instances
        if group is not None:
            group.out_server[id(q)] = server
            self._decode(group)

    def _decode(self, group: _Group) -> None:
        """With the parity output and all but one member's own output back, that member is decoded (a member
        without its own output is unanswered: only a decode answers it otherwise, and the group ends there)."""
        if group.parity_server is None:
            return
        waiting = [m for m in group.members if id(m) not in group.out_server]
        if len(waiting) == 1:
            mask = 1 << group.parity_server
            for server in group.out_server.values():
                mask |= 1 << server
            self.decodes[waiting[0].qid] = tuple(m.qid for m in group.members if m is not waiting[0])
            self.s.answer(waiting[0], HOW_DECODED, mask)
        if len(waiting) <= 1:  # nothing more can happen in this group
            self._forget(group)

    def members_of(self, carrier: Any) -> list[int]:
        """The qids of the group a parity task's carrier stands for (empty once the group is resolved): what a
        system that encodes real inputs puts into the parity query."""
        group = self.group_of.get(id(carrier))
        return [m.qid for m in group.members] if group is not None else []

    def notes(self) -> dict[str, Any]:
        """`parity_decodes`: each decoded query's group companions (their own outputs and the group's parity output
        made its answer), for judging the decoded answer on the real networks."""
        return {**super().notes(), "parity_decodes": dict(self.decodes)}

    def _forget(self, group: _Group) -> None:
        for m in group.members:
            self.group_of.pop(id(m), None)
        if group.carrier is not None:
            self.group_of.pop(id(group.carrier), None)


def companions_column(decodes: dict[int, Sequence[int]], n: int) -> list[str]:
    """Per query of a run of n: its decode's companions as "q1,q2,..." ('' when it was not decoded by parity) — the
    records' `parity_others` column, from `Parity.notes()['parity_decodes']`."""
    others = [""] * n
    for qid, companions in decodes.items():
        others[qid] = ",".join(map(str, companions))
    return others
