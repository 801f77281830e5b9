"""Idiomatic SimPy implementation (a process per query and per copy, Resource, AnyOf, Interrupt).

Slow but obviously shaped like the textbook model; it runs from the same Plan and Draws as the fast engine,
so the tests can demand identical records from both. Server failures are not modelled here.

With service.max_batch > 1 a copy is a ticket in its station's FIFO list instead of a Resource request: a
server that frees (or a ticket arriving at an idle station) takes up to max_batch live tickets and serves
them in one process; cancelling a ticket leaves its batch running unless every ticket of it is cancelled,
then the batch process is interrupted.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from policies import rules_for
from policies.codes import HOW_DIRECT, mask_dtype
from policies.rules import ServingView
from sim.draws import EPISODES, Draws, Timeline, stream
from sim.engine import RunOutput
from sim.plan import Plan


class _Q:
    def __init__(self, qid: int, model: int, done: simpy.Event) -> None:
        self.qid, self.model, self.done = qid, model, done
        self.got, self.mask, self.cover, self.how = 0, 0, 0, HOW_DIRECT
        self.copies: list[Any] = []  # copy processes, or _Tickets when batching
        self.hedge_ms: float | None = None  # the hedge timer the policy armed on arrival
        self.carrier = False  # a carrier (policies.Serving.carrier) has no process of its own


class _Ticket:
    """A copy waiting for (or in) a batch."""

    def __init__(self, q: _Q, role: int, k: int) -> None:
        self.q, self.role, self.active, self.k = q, role, True, k
        self.batch: _Batch | None = None


class _Batch:
    def __init__(self, tickets: list[_Ticket]) -> None:
        self.tickets = tickets
        self.proc: simpy.Process | None = None


class ReferenceEngine(ServingView):
    def __init__(self, plan: Plan, draws: Draws) -> None:
        if plan.failures is not None:
            raise NotImplementedError("the reference engine does not model server failures")
        if any(x is not None for x in (plan.out_ms, plan.out_busy_ms, plan.back_ms, plan.back_busy_ms, plan.pass_ms,
                                       plan.cores, plan.quantum, plan.wake, plan.dispatcher)) or plan.extra_of_pass \
                or plan.after_ms or plan.pass_correlation is not None:
            raise NotImplementedError("the reference engine does not model network delays, finish_pass cancels, "
                                      "shared cores, time slicing, wake-up costs, a server's work after its output, "
                                      "passes moving together or the dispatcher's CPU work")
        self.plan, self.draws = plan, draws
        self.env = simpy.Environment()
        self.N = plan.n_experts
        self.res = [simpy.Resource(self.env, capacity=len(m)) for m in plan.stations]
        self.free = [sorted(m) for m in plan.stations]
        self.st_mean = [float(np.mean([plan.mean_ms[s] for s in m])) / len(m) for m in plan.stations]
        # the policy's view (policies.Serving): targets are station indices
        self.bind_view(hosts=plan.hosts, n_base=plan.base, groups=plan.groups, n_experts=self.N,
                       dispatch=plan.dispatch, fanout=plan.fanout, balancer=plan.balancer, delay_ms=plan.delay_ms,
                       delay_quantile=plan.delay_quantile, delay_window=plan.delay_window,
                       station_of=plan.station_of, targets=range(len(plan.stations)), options=plan.options,
                       backups_per_group=plan.backups_per_group, cells=plan.cells)
        self.balance = plan.balance_u
        self.rules = rules_for(plan.kind)(self)
        n, S = draws.n, plan.n_servers
        self.out = {
            "finish": np.zeros(n),
            "how": np.zeros(n, np.int8),
            "mask": np.zeros(n, mask_dtype(S)),
            "ntask": np.zeros(n, np.int32),
            "ms": np.zeros(n),
        }
        self.busy, self.cancelled = np.zeros(S), np.zeros(S)
        self.batching = plan.max_batch > 1
        self.waiting: list[deque[_Ticket]] = [deque() for _ in plan.stations]
        self.serving: list[list[_Batch]] = [[] for _ in plan.stations]
        self.slow: dict[int, Timeline] = {}
        if plan.episodes is not None:
            for s in plan.affected:
                self.slow[s] = Timeline(stream(plan.seed, EPISODES, s), plan.episodes[0], plan.episodes[1])

    def _load(self, st: int) -> int:
        if self.batching:  # live tickets, queued or in a running batch
            queued = sum(t.active for t in self.waiting[st])
            return queued + sum(t.active for b in self.serving[st] for t in b.tickets)
        r = self.res[st]
        return len(r.queue) + r.count

    def _ed(self, st: int) -> float:
        return (self._load(st) + 1) * self.st_mean[st]

    # ---------------------------------------------------------------------------------------- processes
    def _source(self) -> Generator[Any, Any, None]:
        arr, models = self.draws.arrival_ms, self.draws.model
        for k in range(self.draws.n):
            yield self.env.timeout(float(arr[k]) - self.env.now)
            self.env.process(self._query(k, int(models[k])))

    def _svc(self, qid: int, k: int, srv: int) -> float:
        """The drawn time of query qid's k-th task on server srv: its (query, server) draw, or its per-task one."""
        if self.plan.tasks is not None:
            return self.plan.tasks.task_ms(k, qid, srv)[0]
        return float(self.plan.service_ms[qid, srv])  # type: ignore[index]

    def _copy(self, q: _Q, st: int, role: int, k: int) -> Generator[Any, Any, None]:
        env = self.env
        with self.res[st].request() as req:
            try:
                yield req
            except simpy.Interrupt:
                return  # cancelled while queued
            srv = self.free[st].pop(0)
            svc = self._svc(q.qid, k, srv)  # the draw of the server that serves it
            start = env.now
            if srv in self.slow and self.slow[srv].state_at(start):
                svc *= self.plan.episodes[2]  # type: ignore[index]
            try:
                yield env.timeout(svc)
            except simpy.Interrupt:
                self._spent(q, srv, env.now - start, cancelled=True)
                bisect.insort(self.free[st], srv)
                return
            self._spent(q, srv, env.now - start, cancelled=False)
            bisect.insort(self.free[st], srv)
            if not q.done.triggered:
                self._result(q, srv, role)

    def _dispatch(self, st: int) -> None:
        """Batching: every free server of the station takes up to max_batch live tickets, lowest index first."""
        wait, free = self.waiting[st], self.free[st]
        while free:
            tickets: list[_Ticket] = []
            while wait and len(tickets) < self.plan.max_batch:
                t = wait.popleft()
                if t.active:
                    tickets.append(t)
            if not tickets:
                return
            b = _Batch(tickets)
            for t in tickets:
                t.batch = b
            self.serving[st].append(b)
            b.proc = self.env.process(self._serve(st, free.pop(0), b))

    def _serve(self, st: int, srv: int, b: _Batch) -> Generator[Any, Any, None]:
        env, plan = self.env, self.plan
        start = env.now
        size = len(b.tickets)
        svc = max(self._svc(t.q.qid, t.k, srv) for t in b.tickets)
        svc *= 1 + plan.batch_cost_per_extra * (size - 1)
        if srv in self.slow and self.slow[srv].state_at(start):
            svc *= plan.episodes[2]  # type: ignore[index]
        try:
            yield env.timeout(svc)
            cancelled = False
        except simpy.Interrupt:
            cancelled = True
        dt = env.now - start
        self.busy[srv] += dt
        if cancelled:
            self.cancelled[srv] += dt
        for t in b.tickets:  # the batch's work is shared equally, cancelled tickets included
            self.out["ms"][t.q.qid] += dt / size
        self.serving[st].remove(b)
        if not cancelled:
            for t in b.tickets:
                if t.active:
                    t.active = False
                    if not t.q.done.triggered:
                        self._result(t.q, srv, t.role)
        bisect.insort(self.free[st], srv)
        self._dispatch(st)

    def _cancel_ticket(self, t: _Ticket) -> None:
        if not t.active:
            return
        t.active = False
        b = t.batch
        if b is not None and b.proc is not None and not any(x.active for x in b.tickets):
            b.proc.interrupt()  # nobody needs this batch any more

    def _spent(self, q: _Q, srv: int, dt: float, cancelled: bool) -> None:
        self.busy[srv] += dt
        self.out["ms"][q.qid] += dt
        if cancelled:
            self.cancelled[srv] += dt

    def _result(self, q: _Q, srv: int, role: int) -> None:
        self.rules.output(q, role, srv, self.plan.hosts[srv])

    def answer(self, q: _Q, how: int, mask: int) -> None:
        o = self.out
        o["finish"][q.qid], o["how"][q.qid], o["mask"][q.qid] = self.env.now, how, mask
        self.rules.answered(q, how, self.env.now - self.draws.arrival_ms[q.qid])
        q.done.succeed()

    def send(self, q: _Q, st: int, role: int) -> None:
        k = int(self.out["ntask"][q.qid])  # the task's slot (per-task draws)
        self.out["ntask"][q.qid] = k + 1
        if self.batching:
            t = _Ticket(q, role, k)
            q.copies.append(t)
            self.waiting[st].append(t)
            self._dispatch(st)
            return
        q.copies.append(self.env.process(self._copy(q, st, role, k)))

    # ------------------------------------------------------------------- the policy's view (policies.Serving)
    def load(self, st: int) -> int:
        return self._load(st)

    def expected_ms(self, st: int) -> float:
        return self._ed(st)

    def index(self, st: int) -> int:
        return st

    def balance_u(self, q: _Q) -> Any:
        return self.balance[q.qid]  # type: ignore[index]

    def hedge_after(self, q: _Q, delay_ms: float) -> None:
        if q.carrier:
            self.env.process(self._timer(q, delay_ms))
        else:
            q.hedge_ms = delay_ms  # the query's process waits for it after the arrival rules ran

    def _timer(self, q: _Q, delay_ms: float) -> Generator[Any, Any, None]:
        yield self.env.timeout(delay_ms)
        self.rules.hedge(q)

    def carrier(self, q: _Q) -> _Q:
        c = _Q(q.qid, q.model, self.env.event())  # never answered: its copies outlive q's answer
        c.carrier = True
        return c

    def _query(self, k: int, model: int) -> Generator[Any, Any, None]:
        env, plan = self.env, self.plan
        q = _Q(k, model, env.event())
        if model >= 0:
            self.rules.routed(q)
        else:
            self.rules.ensemble(q)
        if q.hedge_ms is not None:
            yield q.done | env.timeout(q.hedge_ms)
            if not q.done.triggered:
                self.rules.hedge(q)
        yield q.done
        if plan.cancel:
            for p in q.copies:
                if self.batching:
                    self._cancel_ticket(p)
                elif p.is_alive:
                    p.interrupt()

    def run(self) -> RunOutput:
        self.env.process(self._source())
        self.env.run()
        o = self.out
        return RunOutput(
            finish_ms=o["finish"],
            how=o["how"],
            mask=o["mask"],
            n_tasks=o["ntask"],
            server_ms=o["ms"],
            busy_ms=self.busy,
            cancelled_ms=self.cancelled,
            lost_ms=np.zeros_like(self.busy),
            end_ms=float(self.env.now),
            delay_end_ms=self.rules.delays_now(),
            notes=self.rules.notes(),
        )
