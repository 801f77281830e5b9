"""The rules of a serving policy, written once for every system that serves it: the fast engine, the reference
engine and the testbed's frontend. Standard library only.

A policy's rules say what to send where when a query arrives (routed to one expert, or an ensemble query for
all N), what to send when its hedge timer fires, and whether an output that came back answers the query. They
act only through the `Serving` view the system hands them — its servers (stations), their loads, and the
send / timer / answer operations — so the three systems differ only in their clocks and in how they count a
server's load.

Adding a policy is one new module with a `Rules` subclass, named in `policies/__init__.py`'s registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from math import inf as INF
from typing import Any, ClassVar, Protocol

from policies.codes import (
    BACKUP,
    CODED,
    HOW_BACKUP,
    HOW_DIRECT,
    HOW_HEDGE,
    HOW_REPLICA,
    PARITY,
    ROLE_BACKUP,
    ROLE_GROUP,
    ROLE_HEDGE,
)
from policies.delays import RunningDelay


class Query(Protocol):
    """What rules read and keep on a query (each system's query object has these)."""

    qid: int  # its index in the run's arrivals
    model: int  # the expert it is routed to; -1 for an ensemble query
    got: int  # outputs counted towards the answer so far
    mask: int  # bitmask of the servers whose outputs are counted
    cover: int  # ensemble queries: bitmask of the experts whose outputs are in
    how: int  # ensemble queries: how the answer is being made (a HOW_* code)


class Serving(Protocol):
    """What a policy sees of the system serving it. A target is whatever the system sends tasks to (a station of
    the fast or reference engine, a server of the testbed); `index` orders targets for ties."""

    n_experts: int
    n_base: int  # servers 0..n_base-1 are the experts' own instances; the extra servers come after them
    dispatch: str
    fanout: int
    delay_ms: Sequence[float] | None  # per expert: the hedge delay (a running delay's start)
    delay_quantile: float | None  # a running delay's percentile (policies.delays); None: delay_ms stays fixed
    delay_window: int  # a running delay's window, in routed queries per expert
    balancer: str  # how a query picks one of its expert's instances: jsq | round_robin | power_of_d
    instances: Sequence[Sequence[Any]]  # per expert: the targets of its own instances
    hosts: Sequence[Sequence[Any]]  # per expert: every target holding it, its instances first, then replicas
    replicas: Sequence[Sequence[Any]]  # per expert: its replicas (hosts after its instances)
    coded: Sequence[Any]
    backups: Sequence[Any]
    parity: Sequence[Any]  # the targets hosting parity models
    options: dict[str, Any]  # a policy kind's own settings (parity: k, group_timeout_ms, partial)
    group_of: Sequence[int]  # per expert: its code group
    members: Sequence[Sequence[int]]  # per code group: its experts
    coded_in: Sequence[Sequence[Any]]  # per code group: its coded targets
    backups_in: Sequence[Sequence[Any]]  # per code group: its backup targets
    backups_per_group: bool  # a query's backup copy goes to its own group's backups (else to any backup)
    group_masks: Sequence[int]  # per code group: bitmask of its servers (its experts' instances, its coded servers)

    def load(self, target: Any) -> int: ...  # tasks live at the target, as the dispatcher counts them

    # optional: least_of(targets), the least loaded of one of the view's own lists (ties: the earliest) when the
    # system keeps an index of it, else None (the rules then scan the list)

    def expected_ms(self, target: Any) -> float: ...  # (load + 1) x the target's mean task time

    def index(self, target: Any) -> int: ...

    def balance_u(self, q: Any) -> Sequence[float]: ...  # power_of_d: the query's d uniforms

    def send(self, q: Any, target: Any, role: int) -> None: ...

    def hedge_after(self, q: Any, delay_ms: float) -> None: ...  # call Rules.hedge(q) then, unless answered

    def carrier(self, q: Any) -> Any: ...  # a new query no one answers, drawing as q (for work beside the queries)

    def answer(self, q: Any, how: int, mask: int) -> None: ...


def server_groups(hosts: Sequence[int], n_base: int, groups: Sequence[Sequence[int]], n_experts: int,
                  cells: int = 1) -> list[int]:
    """Each server's code group — with cells, its (group, cell) as group × cells + cell: its expert's group (and
    the cell of its instance, instance j of an expert in cell j mod cells) for one of the experts' own instances
    (servers 0..n_base-1); for an extra server, its place among the extra servers, which come r per group and
    cell, group by group and, within a group, cell by cell."""
    groups = groups or [range(n_experts)]
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    blocks = len(groups) * cells
    per_block = max(1, (len(hosts) - n_base) // blocks)
    seen = [0] * n_experts
    out = []
    for s, h in enumerate(hosts):
        if s < n_base:
            out.append(group_of[h] * cells + seen[h] % cells)
            seen[h] += 1
        else:
            out.append(min((s - n_base) // per_block, blocks - 1))
    return out


def coded_rows(n_coded: int, n_groups: int, cells: int = 1) -> list[int]:
    """The coded model (row of the coding matrix: r per code group, group by group) that each of `n_coded` coded
    servers runs, in server order: the extra servers come r per (group, cell), so every cell of a group repeats
    its group's r models."""
    blocks = max(1, n_groups) * cells
    r = n_coded // blocks
    return [(b // cells) * r + j for b in range(blocks) for j in range(r)] + list(range(blocks * r, n_coded))


@dataclass(frozen=True)
class GroupView:
    """The code groups as a system's policy view holds them (`Serving.group_of`, `members`, `group_masks`, and
    which servers are each group's coded ones); with cells, one block per (group, cell), group × cells + cell."""

    group_of: list[int]
    members: list[list[int]]
    group_masks: list[int]
    coded_servers: list[list[int]]  # per group: its coded servers (indices)
    backup_servers: list[list[int]]  # per group: its backup servers (indices)

    @classmethod
    def of(cls, hosts: Sequence[int], n_base: int, groups: Sequence[Sequence[int]], n_experts: int,
           cells: int = 1) -> GroupView:
        members = [list(g) for g in groups] or [list(range(n_experts))]
        sg = server_groups(hosts, n_base, members, n_experts, cells)
        group_of = [0] * n_experts
        for g, m in enumerate(members):
            for i in m:
                group_of[i] = g
        blocks = range(len(members) * cells)
        bits: list[bytearray] = [bytearray((len(hosts) + 7) // 8) for _ in blocks]  # one pass, not one per block
        coded: list[list[int]] = [[] for _ in blocks]
        backup: list[list[int]] = [[] for _ in blocks]
        for s, (h, b) in enumerate(zip(hosts, sg, strict=True)):
            bits[b][s >> 3] |= 1 << (s & 7)
            if h == CODED:
                coded[b].append(s)
            elif h == BACKUP:
                backup[b].append(s)
        masks = [int.from_bytes(m, "little") for m in bits]  # bit s for server s
        return cls(group_of, [members[b // cells] for b in blocks], masks, coded, backup)


class _CellView:
    """One cell's part of a system's `Serving` view: its instances, replicas, coded and backup servers and its
    blocks of the code groups; everything else (send, loads, timers, answers) is the system's own."""

    def __init__(self, system: Any, **own: Any) -> None:
        self._system = system
        self.__dict__.update(own)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._system, name)


class ServingView:
    """The part of the `Serving` view every system fills the same way, from a policy's plain facts: a system
    inherits it and calls `bind_view` with how it names its targets (`targets[station_of[server]]`: stations of an
    engine, where servers sharing a queue share one; a testbed server's own index)."""

    def least_of(self, targets: Any) -> Any:
        """No index of the view's lists: the rules scan them (a system that keeps one overrides this)."""
        return None

    def bind_view(self, *, hosts: Sequence[int], n_base: int, groups: Sequence[Sequence[int]], n_experts: int,
                  dispatch: str, fanout: int, balancer: str, delay_ms: Sequence[float] | None,
                  delay_quantile: float | None, delay_window: int, station_of: Sequence[int],
                  targets: Sequence[Any], options: dict[str, Any] | None = None,
                  backups_per_group: bool = False, cells: int = 1) -> None:
        def holding(own_only: bool, cell: int | None = None) -> list[list[Any]]:
            """Per expert, the targets holding it (its own instances first), in one pass over the servers."""
            out: list[list[Any]] = [[] for _ in range(n_experts)]
            seen: list[set[Any]] = [set() for _ in range(n_experts)]  # (a list's `in` made this quadratic)
            for s, h in enumerate(hosts):
                if h >= 0 and (s < n_base or not own_only) and (cell is None or cell_of[s] == cell):
                    t = targets[station_of[s]]
                    if t not in seen[h]:
                        seen[h].add(t)
                        out[h].append(t)
            return out

        cell_of = [b % cells for b in server_groups(hosts, n_base, groups, n_experts, cells)] if cells > 1 else []

        self.n_experts, self.n_base, self.dispatch, self.fanout = n_experts, n_base, dispatch, fanout
        self.balancer = balancer
        self.delay_ms, self.delay_quantile, self.delay_window = delay_ms, delay_quantile, delay_window
        self.hosts = holding(False)
        self.instances = holding(True)
        self.replicas = [h[len(own):] for h, own in zip(self.hosts, self.instances, strict=True)]
        self.coded = [targets[station_of[s]] for s, h in enumerate(hosts) if h == CODED]
        self.backups = [targets[station_of[s]] for s, h in enumerate(hosts) if h == BACKUP]
        self.parity = [targets[station_of[s]] for s, h in enumerate(hosts) if h == PARITY]
        self.options = dict(options or {})
        gv = GroupView.of(hosts, n_base, groups, n_experts)
        self.group_of, self.members, self.group_masks = gv.group_of, gv.members, gv.group_masks
        self.coded_in = [[targets[station_of[s]] for s in servers] for servers in gv.coded_servers]
        self.backups_in = [[targets[station_of[s]] for s in servers] for servers in gv.backup_servers]
        self.backups_per_group = backups_per_group
        self.cell_views: list[Any] = []
        if cells > 1:  # each cell a view of its own; the rules pick a query's (Rules.at)
            cv = GroupView.of(hosts, n_base, groups, n_experts, cells)
            for c in range(cells):
                blocks = range(c, len(cv.members), cells)  # this cell's block of every code group
                hosts_c = holding(False, c)
                instances_c = holding(True, c)
                self.cell_views.append(_CellView(
                    self,
                    instances=instances_c,
                    hosts=hosts_c,
                    replicas=[h[len(own):] for h, own in zip(hosts_c, instances_c, strict=True)],
                    coded=[targets[station_of[s]] for s, h in enumerate(hosts) if h == CODED and cell_of[s] == c],
                    backups=[targets[station_of[s]] for s, h in enumerate(hosts) if h == BACKUP and cell_of[s] == c],
                    parity=[],
                    group_masks=[cv.group_masks[b] for b in blocks],
                    coded_in=[[targets[station_of[s]] for s in cv.coded_servers[b]] for b in blocks],
                    backups_in=[[targets[station_of[s]] for s in cv.backup_servers[b]] for b in blocks]))


@dataclass(frozen=True)
class Offered:
    """A policy's servers and the traffic offered to them, in plain numbers (rates per ms), for the necessary
    conditions of stability a policy states about itself."""

    name: str  # the policy's name, for messages
    hosts: Sequence[int]  # per server: an expert index, or CODED / SPARE / BACKUP
    routed_per_ms: Sequence[float]  # per expert: its routed queries' mean rate
    ensemble_per_ms: float
    n_base: int = 0  # servers of the experts' own instances (0: one each); the extra servers follow, r per group
    groups: Sequence[Sequence[int]] = ()  # code groups of experts (empty: one group of all)
    options: dict[str, Any] = field(default_factory=dict)  # the policy kind's own settings
    dispatch: str = ""  # the policy's dispatch rule ("": its kind's default)
    backups_per_group: bool = False  # backup copies stay in the query's code group
    random_arrivals: bool = True  # False for a given trace: its mean rates say little about its bursts
    cells: int = 1  # the instances and extra servers split into cells (each code group coded per cell)

    @property
    def n_experts(self) -> int:
        return len(self.routed_per_ms)

    def servers_of(self, model: int) -> list[int]:
        return [s for s, h in enumerate(self.hosts) if h == model]

    def members(self, group: int) -> Sequence[int]:
        return self.groups[group] if self.groups else range(self.n_experts)

    def group_of(self, model: int) -> int:
        return next((g for g, m in enumerate(self.groups) if model in m), 0)

    def server_group(self, server: int) -> int:
        """The code group of a server (whichever cell it is in: the necessary conditions are stated over all
        cells, which take equal shares of the queries)."""
        return self._server_groups[server] // self.cells

    @cached_property
    def _server_groups(self) -> list[int]:  # once per policy check, not once per server asked about
        return server_groups(self.hosts, self.n_base or self.n_experts, self.groups, self.n_experts, self.cells)


class Rules:
    """One policy kind's rules, bound to the system serving it. Subclasses set the class facts and override the
    events that differ; the defaults are an uncoded expert's (one output per expert answers)."""

    kind: ClassVar[str]
    dispatches: ClassVar[tuple[str, ...]]  # the dispatch rules it knows; the first is the default
    delayed: ClassVar[frozenset[str]] = frozenset()  # dispatches that wait `delay_ms` before their second path
    pooled: ClassVar[frozenset[str]] = frozenset()  # dispatches under which an expert's servers share one queue
    extra_host: ClassVar[int | None] = None  # what the r extra servers host (None: replicas of experts)

    def __init__(self, serving: Serving) -> None:
        self.s = serving
        self._cells: list[Any] = list(getattr(serving, "cell_views", None) or [])
        self._turn: dict[tuple[int, int], int] = {}  # round robin: each (cell, expert)'s next instance
        running = serving.delay_quantile is not None and serving.delay_ms is not None
        self.running_delay: RunningDelay | None = (
            RunningDelay(serving.delay_ms, serving.delay_quantile, serving.delay_window)  # type: ignore[arg-type]
            if running else None)
        budget = (getattr(serving, "options", None) or {}).get("hedge_budget_pct")  # (a bare view may have none)
        if budget is not None:  # every system calls routed / ensemble / hedge: the budget stands in front of them
            self.budget = HedgeBudget(float(budget) / 100.0, int(serving.options["hedge_budget_burst"]))
            self.routed, self.ensemble, self.hedge = (  # type: ignore[method-assign]
                self.budget.on_arrival(self.routed), self.budget.on_arrival(self.ensemble),
                self.budget.on_hedge(self.hedge))

    def release(self) -> None:
        """Let go of the system (a finished run): the view, the cell views and the budget's wrappers, which hold
        these rules in a cycle of their own."""
        for name in ("routed", "ensemble", "hedge"):
            vars(self).pop(name, None)
        self.s, self._cells = None, []  # type: ignore[assignment]

    def cell(self, q: Query) -> int:
        """The cell q is served in: queries go to the cells in turn, by arrival index (0 without cells)."""
        return q.qid % len(self._cells) if self._cells else 0

    def at(self, q: Query) -> Serving:
        """The view q is served in: its cell's, or the whole system's."""
        return self._cells[self.cell(q)] if self._cells else self.s

    # ---- hedge delays
    def hedge_delay(self, model: int) -> float:
        """The hedge delay for a query of `model` now (-1, an ensemble query: the largest of the experts')."""
        if self.running_delay is not None:
            return self.running_delay.delay(model)
        d = self.s.delay_ms
        return max(d) if model < 0 else d[model]  # type: ignore[index,arg-type]

    def delays_now(self) -> list[float] | None:
        """Each expert's hedge delay now (a running delay's latest; None for a policy without one)."""
        if self.running_delay is not None:
            return self.running_delay.delays()
        return None if self.s.delay_ms is None else list(self.s.delay_ms)

    def notes(self) -> dict[str, Any]:
        """What the rules kept about the run beyond each query's answer (a hedge budget: the queries whose hedge it
        denied; parity: which queries each decode used)."""
        budget = getattr(self, "budget", None)
        return {} if budget is None else {"hedges_denied": list(budget.denied)}

    def answered(self, q: Query, how: int, latency_ms: float) -> None:
        """The system answered q after `latency_ms` (every system calls it from every answer): a running delay
        observes its expert's direct answers, and the others as not answered directly."""
        if q.model >= 0 and self.running_delay is not None:
            self.running_delay.observe(q.model, latency_ms if how == HOW_DIRECT else INF)

    # ---- what the policy needs of the servers (class level: checked before anything runs)
    @classmethod
    def least_work_ms(cls, offered: Offered, model: int, work_ms: Sequence[float]) -> float:
        """The least server time (work_ms: each server's per task) a routed query for `model` can be answered
        with. Default: one task on a server holding the model."""
        return min(work_ms[s] for s in offered.servers_of(model))

    @classmethod
    def capacity_problem(cls, offered: Offered, cap_per_ms: Sequence[float], mean_ms: Sequence[float]) -> str | None:
        """A necessary condition of stability, as a message when it fails (cap_per_ms: each server's most tasks
        per ms; mean_ms: its mean task time). Default: each expert's queries, routed and ensemble, within the
        summed capacity of the servers holding it."""
        for i in range(offered.n_experts):
            hosts = offered.servers_of(i)
            lam = offered.routed_per_ms[i] + offered.ensemble_per_ms
            c = sum(cap_per_ms[s] for s in hosts)
            if not lam < c:
                return (f"policy {offered.name!r}: model {i} gets {lam:.4g}/ms but its {len(hosts)} server(s) "
                        f"serve at most {c:.4g}/ms (load {lam * mean_ms[i]:.3g})")
        return None

    @classmethod
    def settings_problem(cls, offered: Offered) -> str | None:
        """A setting of the policy that cannot work with this traffic, whatever the load (a message), checked for
        every run. Default: none."""
        return None

    @property
    def one_task_routed(self) -> bool:
        """True when a routed query only ever gets one task, answered by whichever output it is (so a system may
        take a shortcut: nothing to cancel, no answer rule to ask)."""
        return False

    def expert(self, q: Query, i: int) -> Any:
        """The instance of expert i that gets q's task, by the deployment's balancer."""
        s = self.at(q)
        instances = s.instances[i]
        if len(instances) == 1:
            return instances[0]
        if s.balancer == "jsq":
            return least_loaded(s, instances)
        if s.balancer == "round_robin":
            key = (self.cell(q), i)
            k = self._turn.get(key, 0)
            self._turn[key] = (k + 1) % len(instances)
            return instances[k]
        # power of d: d distinct instances drawn with the query's uniforms, the least loaded (ties: first drawn)
        left, drawn = list(instances), []
        for u in s.balance_u(q)[: len(instances)]:
            drawn.append(left.pop(min(int(u * len(left)), len(left) - 1)))
        return least_loaded(s, drawn)

    def decode_group(self, q: Query) -> list[Any]:
        """The decode group of a routed query: an instance of each other expert of its code group (by the balancer)
        and the picked coded targets of that group."""
        s = self.at(q)
        g = s.group_of[q.model]
        return [self.expert(q, j) for j in s.members[g] if j != q.model] + list(coded_pick(s, g))

    def send_group(self, q: Query) -> None:
        """Send q to its decode group, same input."""
        for t in self.decode_group(q):
            self.at(q).send(q, t, ROLE_GROUP)

    def routed(self, q: Query) -> None:
        """A query for expert q.model arrives."""
        raise NotImplementedError

    def ensemble(self, q: Query) -> None:
        """A query for all N experts arrives."""
        raise NotImplementedError

    def hedge(self, q: Query) -> None:
        """The hedge timer of an unanswered query fires."""

    def output(self, q: Query, role: int, server: int, host: int) -> None:
        """An output of an unanswered query came back from `server` (hosting `host`), sent with `role`.

        Default: the output of a backup answers on its own; a routed query is answered by its first output; an
        ensemble query once one output of each expert is in."""
        s, bit = self.at(q), 1 << server
        if role == ROLE_BACKUP:  # the generalist's one output answers a routed or an ensemble query
            s.answer(q, HOW_BACKUP, bit)
            return
        n = s.n_experts
        if q.model >= 0:
            s.answer(q, HOW_HEDGE if role == ROLE_HEDGE else HOW_DIRECT if server < s.n_base else HOW_REPLICA, bit)
            return
        if (q.cover >> host) & 1:
            return
        q.cover |= 1 << host
        q.got += 1
        q.mask |= bit
        if role == ROLE_HEDGE:
            q.how = HOW_HEDGE
        elif server >= s.n_base and q.how == HOW_DIRECT:
            q.how = HOW_REPLICA
        if q.got == n:
            s.answer(q, q.how, q.mask)


class HedgeBudget:
    """A token bucket of hedges counted in queries, not time, so that every system spends it alike: each arriving
    query adds `per_query` of a hedge (up to `burst`), a hedge timer spends one or, with less than one left, sends
    nothing."""

    def __init__(self, per_query: float, burst: int) -> None:
        self.per_query, self.burst = per_query, float(burst)
        self.tokens = self.burst
        self.denied: list[int] = []  # the queries whose hedge found less than one token (by query id)

    def on_arrival(self, rule: Any) -> Any:
        def arrive(q: Query) -> None:
            self.tokens = min(self.burst, self.tokens + self.per_query)
            rule(q)
        return arrive

    def on_hedge(self, rule: Any) -> Any:
        def hedge(q: Query) -> None:
            if self.tokens < 1.0:
                self.denied.append(q.qid)
                return
            self.tokens -= 1.0
            rule(q)
        return hedge


# ------------------------------------------------------------------------------------------- shared choices
def least_loaded(s: Serving, targets: Sequence[Any]) -> Any:
    """The target with the fewest live tasks; ties to the earliest in `targets` (the system's own index of that
    list, when it keeps one: Serving.least_of)."""
    index = getattr(s, "least_of", None)  # optional: a system without one is scanned
    best = index(targets) if index is not None else None
    if best is not None:
        return best
    best = targets[0]
    for t in targets:
        if s.load(t) < s.load(best):
            best = t
    return best


def coded_pick(s: Serving, group: int = 0) -> Sequence[Any]:
    """The `fanout` least-loaded coded targets of a code group (ties -> lower index)."""
    coded = s.coded_in[group]
    if s.fanout >= len(coded):
        return coded
    if s.fanout == 1:  # the least loaded, ties to the lowest index: the coded targets are in index order
        return [least_loaded(s, coded)]
    return _least_first(s, coded)[: s.fanout]


def _least_first(s: Serving, targets: Sequence[Any]) -> list[Any]:
    """Targets by load, ties by index (apart from `coded_pick`: a key function inside it would cost every call a
    closure, the fanout-1 path included)."""
    return sorted(targets, key=lambda t: (s.load(t), s.index(t)))
