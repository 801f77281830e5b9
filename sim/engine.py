"""The fast engine: a bare event loop (`sim.clock`) with long-lived, callback-driven servers and lazy
cancellation.

No process per customer: arrivals are merged into the loop without events; a server is an object whose
completion event calls back into it. Cancelling a queued task only flips its `active` flag (it is
skipped when it reaches the head of the queue); cancelling a task in service makes the server drop its
pending completion (identity check on the event) and pull the next task at once.
"""

from __future__ import annotations

import gc
import heapq
import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from policies import rules_for
from policies.codes import HOW_DIRECT, HOW_REPLICA, ROLE_DIRECT, mask_dtype
from policies.rules import ServingView
from sim.clock import Clock, Due
from sim.draws import DISPATCH_CORE, EPISODES, FAILURES, JOINED, Draws, Timeline, stream
from sim.plan import Plan


@dataclass
class RunOutput:
    """Raw per-query and per-server results of one policy run."""

    finish_ms: np.ndarray
    how: np.ndarray
    mask: np.ndarray  # bitmask of the servers whose outputs formed the answer
    n_tasks: np.ndarray
    server_ms: np.ndarray  # all work spent for the query, cancelled and lost work included
    busy_ms: np.ndarray  # per server
    cancelled_ms: np.ndarray  # per server: work thrown away by cancellation
    lost_ms: np.ndarray  # per server: work lost to failures
    end_ms: float
    delay_end_ms: list[float] | None = None  # per expert: the hedge delay at the end (a running delay's last)
    notes: dict[str, Any] = field(default_factory=dict)  # the policy rules' own record of the run (Rules.notes)


def _view(column: np.ndarray) -> memoryview:
    """Index-by-index access to a numpy column (strided or not) without a Python object per element."""
    return memoryview(column)


class _Query:
    __slots__ = ("qid", "model", "done", "got", "mask", "cover", "how", "tasks")

    def __init__(self, qid: int, model: int) -> None:
        self.qid = qid
        self.model = model
        self.done = False
        self.got = 0
        self.mask = 0
        self.cover = 0
        self.how = HOW_DIRECT
        self.tasks: list[_Task] = []


class _Task:
    """One copy of a query's work at a station. Its service time is not fixed here: the server that starts
    it uses its own (query, server) draw, or (per-task draws) the task's slot's on its kind of server, which
    matters for pooled stations of unequal servers."""

    __slots__ = ("q", "station", "role", "active", "server", "uncounted", "k")

    def __init__(self, q: _Query, station: _Station, role: int, k: int = 0) -> None:
        self.k = k  # its slot: the query's tasks sent before it (per-task draws, sim.tasks)
        self.q = q
        self.station = station
        self.role = role
        self.active = True  # queued or in service at its server (the server's view)
        self.server: _Server | None = None
        self.uncounted = False  # with network delays: the dispatcher no longer counts it as live


class _Timer(Due):
    """A hedge timer's event, carrying its query (no closure made per query)."""

    __slots__ = ("q",)

    def __init__(self, callback: Callable[[Any], None], q: _Query) -> None:
        self.callbacks = [callback]
        self.q = q


_NORMAL = NormalDist()  # service.pass_correlation: scores of ranks and back
_YOUNG = 100_000  # allocations between the cyclic collector's young collections while a run goes (FastEngine.run)
_INDEXED = 8  # lists of this many stations or more get a least-loaded index (a shorter one is scanned faster)


class _Least:
    """The least-loaded of a fixed list of stations (ties: the earliest in the list) in O(log k): a heap of
    load * k + position, pushed whenever a member's load changes; an entry whose load is no longer its station's
    is dropped when it comes to the top (every station's current load is always in the heap, so the top valid
    entry is the least), and the heap is rebuilt when stale entries pile up."""

    __slots__ = ("heap", "members", "k")

    def __init__(self, members: list[_Station]) -> None:
        self.members, self.k = members, len(members)
        self.heap = [st.n_live * self.k + pos for pos, st in enumerate(members)]
        heapq.heapify(self.heap)

    def push(self, pos: int, load: int) -> None:
        heap = self.heap
        heapq.heappush(heap, load * self.k + pos)
        if len(heap) > 8 * self.k + 64:
            self.__init__(self.members)  # type: ignore[misc]

    def least(self) -> _Station:
        heap, k, members = self.heap, self.k, self.members
        while True:
            load, pos = divmod(heap[0], k)
            st = members[pos]
            if st.n_live == load:
                return st
            heapq.heappop(heap)


def _touch(st: _Station) -> None:
    """A station's load changed: tell every least-loaded index it is in."""
    for ix, pos in st.heaps:
        ix.push(pos, st.n_live)


class _Station:
    """One FIFO queue served by one server (or by several, for pooled replicas)."""

    __slots__ = ("idx", "queue", "servers", "n_live", "mean_ms", "single", "heaps")

    def __init__(self, idx: int, mean_ms: float) -> None:
        self.heaps: list[tuple[_Least, int]] = []  # the least-loaded indexes it is in, and its position there
        self.idx = idx
        self.queue: deque[_Task] = deque()
        self.servers: list[_Server] = []
        self.n_live = 0  # tasks queued or in service and not cancelled (what JSQ/SED look at)
        self.mean_ms = mean_ms
        self.single: _Server | None = None  # set when exactly one server serves this queue

    def submit(self, task: _Task) -> None:
        self.n_live += 1
        if self.heaps:
            _touch(self)
        if self.single is not None:
            srv = self.single
            if srv.cur is None and srv.up:
                srv.start(task)
            else:
                self.queue.append(task)
            return
        for srv in self.servers:
            if srv.cur is None and srv.up:
                srv.start(task)
                return
        self.queue.append(task)

    def kick(self) -> None:
        for srv in self.servers:
            if srv.cur is None and srv.up:
                srv.pull()


class _Server:
    __slots__ = (
        "idx",
        "bit",
        "on_finish",
        "env",
        "eng",
        "station",
        "cur",
        "ev",
        "t0",
        "up",
        "slow",
        "slowdown",
        "host",
        "draw",
        "pass_draw",
        "cur_pass",
        "work",
        "mark",
        "total",
        "extra",
        "rr",
        "q0",
        "qev",
        "free_at",
        "seen",
        "woke",
        "factor",
        "share",
        "hold",
        "lone",
        "left_at",
        "score",
        "table",
    )

    def __init__(
        self, idx: int, env: Clock, eng: FastEngine, station: _Station, host: int, draw: list[float]
    ) -> None:
        self.idx = idx
        self.bit = 1 << idx  # its bit in an answer's mask (a Python int: past 63 servers wider than 64 bits)
        self.on_finish = self.finish  # bound once: a task's completion event calls it (no bound method per task)
        self.env = env
        self.eng = eng
        self.station = station
        self.cur: _Task | None = None
        self.ev: Due | None = None
        self.t0 = 0.0
        self.up = True
        self.slow: Timeline | None = None
        self.slowdown = 1.0
        self.host = host
        self.draw = draw  # this server's task times, by query id
        self.pass_draw: list[float] | None = None  # the same without the straggle factor (finish_pass)
        self.cur_pass: float | None = None  # the current task's drawn time without its straggle, when known
        self.work = self.mark = self.total = 0.0  # shared cores: work left at time `mark`, the task's full work
        self.extra = 0.0  # shared cores, stalling stragglers: the stall that follows the pass
        self.rr = 0  # time slicing: 0 not runnable (idle or stalled), 1 holds a CPU slot, 2 in the run queue, 3 held
        # off the cores by another server's start (service.joined_share)
        self.hold: Due | None = None  # ... until this event
        self.lone = 0.0  # the current task's work without its straggle (what its start holds another server for)
        self.q0 = 0.0  # time slicing: start of the current quantum (while holding a slot)
        self.qev: Due | None = None  # time slicing: pending end of the current quantum, if one is armed
        self.free_at = 0.0  # when the server last became free (wake-up costs: how long it sat idle)
        self.left_at = -math.inf  # when its last output left (service.after_ms: its work after that holds it)
        self.score = 0.0  # service.pass_correlation: the normal score of its last pass's rank
        self.table: tuple[tuple[float, ...], float] | None = None  # ... and its passes' samples and scale
        self.woke = 0.0  # wake-up cost added to the current task's pass
        self.seen = 0.0  # every server's busy time so far when this one became free (wake by the others' work)
        self.factor = 1.0  # stragglers.extra_of = "pass": the current task's straggle factor
        self.share = 1.0  # ... and its pass's share of its work on the cores (the rest: overhead, not stretched)

    def start(self, task: _Task) -> None:
        env = self.env
        now = env.now
        self.cur = task
        task.server = self
        self.t0 = now
        qid = task.q.qid
        tasks = self.eng.tasks
        if tasks is None:
            d = d0 = self.draw[qid]
            p0 = self.cur_pass = None if self.pass_draw is None else self.pass_draw[qid]
        else:
            d, p0 = d0, self.cur_pass = tasks.task_ms(task.k, qid, self.idx)
        if self.eng.corr is not None:  # its pass moves with its previous one
            d = d0 = self._correlate(now, d, p0)  # type: ignore[arg-type]
            p0 = self.cur_pass = self.eng.corr_pass
        if self.slow is not None and self.slow.state_at(now):
            d *= self.slowdown
        lead = 0.0  # service.after_ms: what is left of the work after its previous output, done first
        if self.eng.after:
            lead = self.eng.after - (now - self.left_at)
            if lead < 0.0:
                lead = 0.0
        wake = self.eng.wake
        if wake is None:
            woke = 0.0
        else:
            woke = wake.extra(now - self.free_at)  # 0 straight on
            if self.eng.wake_others:  # and the others' busy time meanwhile (cache eviction)
                if now > self.free_at:
                    woke += wake.extra_others(self.eng.busy_clock() - self.seen)
                self.eng.busy_n += 1  # this server's service period is under way from now
                self.eng.busy_t0 += now
        self.woke = woke + lead  # before the pass ends: its wake-up, and the previous task's work after its output
        ev = self.ev = Due(self.on_finish)
        if self.eng.joined is not None:  # its work without a straggle's: how long its start may hold another server
            self.lone = (d if p0 is None else d * p0 / d0) + woke + lead
        if self.eng.of_pass:  # the straggle stretches the pass as it really runs, wake-up included, and not the
            ov = self.eng.overhead  # server's work beside it (both slowed alike by an episode)
            pass_ms = d * (p0 - ov) / d0 + woke  # type: ignore[operator]
            ov = ov * d / d0 if ov else 0.0
            self.factor = (d - ov) / (pass_ms - woke) if pass_ms > woke else 1.0
            ov += lead
            self.share = pass_ms / (pass_ms + ov) if ov else 1.0
            work = pass_ms + ov
            d, woke = pass_ms * self.factor + ov, 0.0
        else:
            woke += lead
        if self.eng.sharing:  # the task's work is done at the shared cores' current speed
            if self.eng.stall:  # ... and a straggle's extra time is spent off the cores
                if self.eng.of_pass:
                    pass_ms = work
                else:
                    pass_ms = d * p0 / d0 + woke  # type: ignore[operator]
                    d += woke
                    woke = 0.0
                if d - pass_ms > 1e-12:
                    self.extra = d - pass_ms  # of_pass: set again when the pass ends, from its wall time
                    ev = self.ev = Due(self._stall)
                    d = pass_ms
            self.eng.busy_up(self, d + woke, ev)
            return
        self.env.at(now + d + woke, ev)

    def _correlate(self, now: float, d: float, p0: float) -> float:
        """service.pass_correlation: the task time with its pass moved to the rank that the score rule gives (its
        own drawn rank's score mixed with this server's previous pass's, by how long the server sat idle); the
        straggle factor and the work beside the pass kept. Sets `eng.corr_pass`, the pass (with the work beside)
        without the straggle."""
        samples, scale = self.table  # type: ignore[misc]
        ov = self.eng.overhead
        base = p0 - ov
        n = len(samples)
        x = base / scale
        lo, hi = bisect_left(samples, x * (1 - 1e-12)), bisect_right(samples, x * (1 + 1e-12))
        u = (lo + hi) / (2.0 * n) if hi > lo else (lo + 0.5) / n
        rho = self.eng.corr.at(now - self.left_at)  # its first pass: no previous one (left_at -inf)
        z = _NORMAL.inv_cdf(min(max(u, 1e-9), 1 - 1e-9))
        if rho:
            z = rho * self.score + math.sqrt(1.0 - rho * rho) * z
        self.score = z
        moved = samples[min(int(_NORMAL.cdf(z) * n), n - 1)] * scale
        self.eng.corr_pass = moved + ov
        if base <= 0.0:
            return d
        return (d - ov) * moved / base + ov

    def pull(self) -> None:
        q = self.station.queue
        while q:
            t = q.popleft()
            if t.active:
                self.start(t)
                return

    def _stop(self) -> float:
        self.free_at = self.left_at = self.env.now
        dt = self.env.now - self.t0
        self.eng.busy[self.idx] += dt
        self.eng.busy_done += dt
        self.eng.ms[self.cur.q.qid] += dt  # type: ignore[union-attr]
        self.cur = None
        self.ev = None
        if self.eng.wake_others:
            self.eng.busy_n -= 1
            self.eng.busy_t0 -= self.t0
            self.seen = self.eng.busy_clock()
        if self.eng.sharing:
            self.eng.busy_down(self)
        return dt

    def finish(self, ev: Due) -> None:
        if ev is not self.ev:
            return  # stale completion of preempted work
        task: _Task = self.cur  # type: ignore[assignment]
        eng = self.eng
        now = self.free_at = self.left_at = self.env.now  # _stop(), inlined on the hot path
        dt = now - self.t0
        eng.busy[self.idx] += dt
        eng.busy_done += dt
        eng.ms[task.q.qid] += dt
        self.cur = None
        self.ev = None
        if eng.wake_others:
            eng.busy_n -= 1
            eng.busy_t0 -= self.t0
            self.seen = eng.busy_clock()
        if eng.sharing:
            eng.busy_down(self)
        task.active = False
        eng.live -= 1
        q = task.q
        if eng.net:  # the dispatcher learns of it a network delay later
            eng.returned(task, self)
        elif eng.single_task and q.model >= 0:  # the query's only task: answer inline, nothing to cancel
            qid = q.qid
            q.done = True
            eng.finish_ms[qid] = self.env.now
            eng.how[qid] = HOW_DIRECT if self.idx < eng.n_base else HOW_REPLICA
            eng.mask[qid] = self.bit
            eng.n_done += 1
            self.station.n_live -= 1
        else:
            self.station.n_live -= 1
            eng.complete(task, self)
        if self.station.heaps:
            _touch(self.station)
        if self.cur is None and self.up:
            q = self.station.queue  # pull(), inlined
            while q:
                t = q.popleft()
                if t.active:
                    self.start(t)
                    break
        if eng.live == 0 and eng.n_done == eng.n and not eng.finishing:
            eng.stop = True

    def preempt(self) -> None:
        """Cancel the task in service: its work so far is spent, the server moves on — at once, or (finish_pass)
        once the task's forward pass is over, only the straggle being cut."""
        if self.eng.finish_pass:
            factor = self.slowdown if self.slow is not None and self.slow.state_at(self.t0) else 1.0
            pass_ms = self.cur_pass * factor + self.woke  # type: ignore[operator]
            if self.eng.sharing:
                self.eng.finish_pass_shared(self, pass_ms)
                return
            end = self.t0 + pass_ms
            if self.env.now < end:
                self.eng.finishing += 1
                ev = self.ev = Due(self._pass_done)
                self.env.at(end, ev)
                return
        self.eng.cancelled[self.idx] += self._stop()
        if self.up:
            self.pull()

    def _stall(self, ev: Due) -> None:
        """Shared cores, stalling straggler: the pass is over, the server holds the task without computing."""
        if ev is not self.ev:
            return
        self.eng.busy_down(self)
        if self.eng.of_pass:  # held (f - 1) x as long as the pass took on its server, waits for the cores included
            # (the pass's share of the wall time its work took: the overhead beside it is not stretched)
            self.extra = (self.factor - 1.0) * (self.env.now - self.t0) * self.share
        ev = self.ev = Due(self.finish)
        self.env.at(self.env.now + self.extra, ev)

    def _slice_end(self, ev: Due) -> None:
        if ev is self.qev:
            self.eng.slice_over(self)

    def _pass_done(self, ev: Due) -> None:
        if ev is not self.ev:
            return  # rescheduled (shared cores) or the server failed meanwhile
        eng = self.eng
        eng.finishing -= 1
        eng.cancelled[self.idx] += self._stop()
        if self.up:
            self.pull()
        if eng.live == 0 and eng.n_done == eng.n and not eng.finishing:
            eng.stop = True

    def fail(self) -> None:
        self.up = False
        if self.ev is not None and self.ev.callbacks[0] == self._pass_done:
            self.eng.finishing -= 1  # a cancelled task's pass dies with the server
        if self.cur is not None:
            task = self.cur
            self.eng.lost[self.idx] += self._stop()
            self.station.queue.appendleft(task)  # restarted (same draw) when a server of the station is up
            self.station.kick()

    def recover(self) -> None:
        self.up = True
        if self.cur is None:
            self.pull()


class _BatchServer(_Server):
    """Dynamic batching: a free server takes up to `max_batch` queued tasks at once (no waiting to fill).

    Batch time = max of the tasks' drawn times * (1 + cost_per_extra * (b - 1)); all finish together and
    the work is split equally between them. Cancelling one task leaves the batch running (the others
    still need it); only when every task of the batch is cancelled is the batch preempted.
    """

    __slots__ = ("batch", "max_batch", "extra")

    def start(self, task: _Task) -> None:
        self._run([task])

    def _run(self, tasks: list[_Task]) -> None:
        now = self.env.now
        self.batch = tasks
        self.cur = tasks[0]
        for t in tasks:
            t.server = self
        self.t0 = now
        draw, per_task = self.draw, self.eng.tasks
        d = max(draw[t.q.qid] if per_task is None else per_task.task_ms(t.k, t.q.qid, self.idx)[0] for t in tasks) \
            * (1.0 + self.extra * (len(tasks) - 1))
        if self.slow is not None and self.slow.state_at(now):
            d *= self.slowdown
        ev = self.ev = Due(self.finish)
        self.env.at(now + d, ev)

    def pull(self) -> None:
        q = self.station.queue
        got: list[_Task] = []
        while q and len(got) < self.max_batch:
            t = q.popleft()
            if t.active:
                got.append(t)
        if got:
            self._run(got)

    def _stop(self) -> float:
        dt = self.env.now - self.t0
        eng = self.eng
        eng.busy[self.idx] += dt
        share = dt / len(self.batch)
        for t in self.batch:
            eng.ms[t.q.qid] += share
        self.cur = None
        self.ev = None
        return dt

    def holds(self, task: _Task) -> bool:
        return self.cur is not None and task in self.batch

    def finish(self, ev: Due) -> None:
        if ev is not self.ev:
            return
        eng = self.eng
        batch = self.batch
        self._stop()
        for task in batch:
            if not task.active:
                continue  # cancelled while the batch ran
            task.active = False
            self.station.n_live -= 1
            if self.station.heaps:
                _touch(self.station)
            eng.live -= 1
            eng.complete(task, self)
        self.batch = []
        if self.cur is None and self.up:
            self.pull()
        if eng.live == 0 and eng.n_done == eng.n and not eng.finishing:
            eng.stop = True

    def cancel_task(self, task: _Task) -> None:
        if not any(t.active for t in self.batch):
            self.preempt()

    def fail(self) -> None:
        self.up = False
        if self.cur is not None:
            batch = [t for t in self.batch if t.active]
            self.eng.lost[self.idx] += self._stop()
            self.batch = []
            self.station.queue.extendleft(reversed(batch))
            self.station.kick()


class FastEngine(ServingView):
    """Runs one Plan over one Draws; `run()` returns a RunOutput."""

    def __init__(self, plan: Plan, draws: Draws) -> None:
        self.plan = plan
        self.draws = draws
        self.env = env = Clock()
        self.n = draws.n
        self.N = plan.n_experts
        self.kind = plan.kind
        self.dispatch = plan.dispatch
        self.cancel_on = plan.cancel
        self.batching = plan.max_batch > 1
        self.tasks = plan.tasks  # per-task draws (sim.tasks), or None: per-(query, server) arrays in the plan
        tt = plan.tasks
        self.has_out = plan.out_ms is not None or plan.out_busy_ms is not None or (
            tt is not None and tt.out is not None)
        self.has_back = plan.back_ms is not None or plan.back_busy_ms is not None or (
            tt is not None and tt.back is not None)
        self.net = self.has_out or self.has_back
        self.sharing = plan.cores is not None  # servers share `cores` cores: processor sharing between them
        if self.sharing and self.batching:
            raise ValueError("shared cores (service.cores) are not modelled together with batching")
        self.cores = float(plan.cores or 0.0)
        self.finish_pass = plan.finish_pass
        self.stall = plan.stall
        self.rate = 1.0  # speed of every busy server while sharing
        self.wake = plan.wake  # extra compute of a task that starts on a server that sat idle
        self.wake_others = plan.wake is not None and bool(plan.wake.others_busy_ms)
        self.busy_done = 0.0  # every server's busy time in ended service periods
        self.busy_n = 0  # wake by the others' work: service periods under way, and the sum of their starts
        self.busy_t0 = 0.0
        self.of_pass = plan.extra_of_pass  # a straggle is (f - 1) x the pass as it ran, not as drawn
        self.overhead = plan.overhead_ms  # each task's work beside its pass (in its draw), never stretched
        self.corr = plan.pass_correlation  # a server's consecutive passes move together (service.pass_correlation)
        self.corr_pass = 0.0  # ... the last moved pass (with the work beside), for _Server.start
        if self.corr is not None and (plan.max_batch > 1 or plan.pass_tables is None):
            raise ValueError("pass_correlation needs one task per pass (no batching) and the servers' pass samples")
        self.after = plan.after_ms  # a server's work after each output left: its next task waits out the rest
        # (not with batching: service.after_ms refuses max_batch > 1)
        if plan.wake is not None and plan.max_batch > 1:
            raise ValueError("wake-up costs (service.wake) are not modelled with batching")
        self.quantum = plan.quantum  # time slicing: round robin in quanta instead of processor sharing
        self.corun = plan.corun or None  # co-running slowdown by the number of other computing servers
        self.slots_max = math.ceil(self.cores) if self.sharing else 0  # servers that can be on the cores at once
        self.slicing = self.sharing and plan.quantum is not None
        if plan.quantum is not None and not self.sharing:
            raise ValueError("time slicing (service.quantum_ms) needs shared cores (service.cores)")
        slots = math.ceil(self.cores) if self.slicing else 0
        self.free_slots = slots  # time slicing: CPU slots nobody holds
        # k slot holders each run at min(1, C / k): a fractional core count (the cores a dispatcher leaves) slows
        # the holders only when they are more than C, as processor sharing does
        self.slot_speed = 1.0
        self.runq: deque[_Server] = deque()  # time slicing: runnable servers waiting for a slot, FIFO
        self.disp = plan.dispatcher  # (send_ms, return_ms): the dispatcher's CPU work, with priority on a slot
        if self.disp is not None and not self.slicing:
            raise ValueError("the dispatcher's CPU work (service.dispatcher) needs time slicing (service.quantum_ms)")
        # a real-time dispatcher wakes on its own last core, held by a server with probability holders / slots
        self.disp_core = stream(plan.seed, DISPATCH_CORE) if self.disp is not None and plan.dispatcher_own_core \
            else None
        # service.joined_share: a server that starts on a free core may wake on a held one, whose server then waits
        self.joined = plan.joined if self.slicing and plan.joined else None
        self.join_u = stream(plan.seed, JOINED) if self.joined is not None else None
        self.n_held = 0  # servers held off the cores by a join (runnable, counted as computing)
        self.disp_end = 0.0  # when the dispatcher's work so far is done (it holds a slot until then)
        self.disp_on = False
        self.running: list[_Server] = []  # busy servers, while sharing (slot holders, while slicing)
        if self.net and self.batching:
            raise ValueError("network delays are not modelled together with batching (service.max_batch > 1)")
        # per-query and per-task numbers are read and written through memoryviews of numpy arrays: a Python float
        # in a list costs 32 bytes, a float64 8, for ~10 ns more per access
        self.out = _view(plan.out_ms.ravel()) if plan.out_ms is not None else None  # flat: [qid * S + server]
        # network.out_by_busy / back_by_busy: the delay read from the table of the other servers computing
        self.out_busy = None if plan.out_busy_ms is None else [_view(a.ravel()) for a in plan.out_busy_ms]
        self.back_busy = None if plan.back_busy_ms is None else [_view(a.ravel()) for a in plan.back_busy_ms]
        self.back = _view(plan.back_ms.ravel()) if plan.back_ms is not None else None
        self.S = plan.n_servers
        self.stations = [_Station(k, 0.0) for k in range(len(plan.stations))]
        self.servers: list[_Server] = []
        for s in range(plan.n_servers):
            st = self.stations[plan.station_of[s]]
            draw = _view(plan.service_ms[:, s]) if plan.service_ms is not None else None
            if plan.max_batch > 1:
                srv = _BatchServer(s, env, self, st, plan.hosts[s], draw)
                srv.batch, srv.max_batch, srv.extra = [], plan.max_batch, plan.batch_cost_per_extra
            else:
                srv = _Server(s, env, self, st, plan.hosts[s], draw)
            if plan.pass_ms is not None:
                srv.pass_draw = _view(plan.pass_ms[:, s])
            if plan.pass_tables is not None:
                srv.table = plan.pass_tables[s]
            st.servers.append(srv)
            self.servers.append(srv)
        for st in self.stations:
            st.single = st.servers[0] if len(st.servers) == 1 else None
            # a lone server's mean as it is (np.mean per station took 9 s of a 12,500-server validate)
            st.mean_ms = (float(plan.mean_ms[st.single.idx]) if st.single is not None
                          else float(np.mean([plan.mean_ms[s.idx] for s in st.servers])) / len(st.servers))
        # the policy's view of the system (policies.Serving): targets are stations
        self.bind_view(hosts=plan.hosts, n_base=plan.base, groups=plan.groups, n_experts=self.N,
                       dispatch=plan.dispatch, fanout=plan.fanout, balancer=plan.balancer, delay_ms=plan.delay_ms,
                       options=plan.options,
                       delay_quantile=plan.delay_quantile, delay_window=plan.delay_window,
                       station_of=plan.station_of, targets=self.stations,
                       backups_per_group=plan.backups_per_group, cells=plan.cells)
        self.balance = plan.balance_u
        self._least = self._index_lists()
        self.experts = [self.stations[plan.station_of[i]] for i in range(self.N)]
        self.rules = rules_for(plan.kind)(self)  # what to send where, and which output answers (policies/)
        self.observe = self.rules.answered if self.rules.running_delay is not None else None  # hot path: bound once
        self.on_hedge = self._hedge  # a hedge timer's callback, bound once
        inline = not self.batching and not self.net and self.disp is None  # sends and answers need no hooks
        # the uncoded rules, inlined on the hot path (one instance per expert: nothing to balance)
        self.uncoded = plan.kind == "uncoded" and inline and plan.base == plan.n_experts
        # routed queries that only ever get one task (no copies to cancel, any completion answers)
        self.single_task = inline and self.rules.one_task_routed
        # uncoded routed queries, each expert on one FIFO server, nothing coupling the servers or moving a task's
        # time once drawn (no shared cores, wake-ups, slow episodes, failures, straggles of the pass alone): every
        # server is Lindley's recursion, run without events (`_recursion`: the event loop's own operations)
        self.recursion = (self.uncoded and not self.sharing and plan.wake is None and plan.episodes is None
                          and not plan.after_ms and plan.pass_correlation is None
                          and plan.failures is None and not plan.extra_of_pass and plan.tasks is None
                          and bool(np.all(np.asarray(draws.model) >= 0)))
        self.arr = _view(draws.arrival_ms)
        self.models = _view(draws.model)
        n, S = self.n, plan.n_servers
        wide = mask_dtype(S) == np.dtype(object)  # past 63 servers a mask is a Python int: kept in a list
        self._out = {"finish_ms": np.zeros(n), "how": np.zeros(n, np.int8), "n_tasks": np.zeros(n, np.int32),
                     "server_ms": np.zeros(n), "mask": None if wide else np.zeros(n, mask_dtype(S))}
        self.finish_ms = _view(self._out["finish_ms"])
        self.how = _view(self._out["how"])
        self.ntask = _view(self._out["n_tasks"])
        self.ms = _view(self._out["server_ms"])
        self.mask = [0] * n if wide else _view(self._out["mask"])
        self.busy = [0.0] * S
        self.cancelled = [0.0] * S
        self.lost = [0.0] * S
        self.live = 0
        self.finishing = 0  # cancelled tasks whose forward pass is still running (finish_pass)
        self.n_done = 0
        self.stop = False
        if plan.episodes is not None:
            m0, m1, f = plan.episodes
            for s in plan.affected:
                srv = self.servers[s]
                srv.slow = Timeline(stream(plan.seed, EPISODES, s), m0, m1)
                srv.slowdown = f
        if plan.failures is not None:
            up, down = plan.failures
            for s in sorted(plan.affected):
                tl = Timeline(stream(plan.seed, FAILURES, s), up, down)
                self._schedule_toggle(self.servers[s], tl, 1)

    # -------------------------------------------------------------------------------------- plumbing
    def _schedule_toggle(self, srv: _Server, tl: Timeline, k: int) -> None:
        def toggle(_ev: Due) -> None:
            if k & 1:
                srv.fail()
            else:
                srv.recover()
            self._schedule_toggle(srv, tl, k + 1)

        self.env.later(tl.switch_after(k) - self.env.now, toggle)

    def send(self, q: _Query, st: _Station, role: int) -> None:
        k = self.ntask[q.qid]
        t = _Task(q, st, role, k)
        q.tasks.append(t)
        self.ntask[q.qid] = k + 1
        self.live += 1
        if self.disp is not None:
            self._dispatcher_work(self.disp[0])
        if not self.has_out:
            st.submit(t)
            return
        st.n_live += 1  # the dispatcher counts it from the moment it is sent
        if st.heaps:
            _touch(st)
        self._later(self._out_ms(t, st.servers[0]), lambda _ev: self._deliver(t))

    def _out_ms(self, t: _Task, srv: _Server) -> float:
        """The dispatcher → server delay of task t (or its cancel) to `srv`: its draw, or (out_by_busy) its draw in
        the table of the other servers computing now."""
        tt, qid = self.tasks, t.q.qid
        if tt is not None:
            tables = len(tt.out)  # type: ignore[arg-type]
            return tt.delay_ms(False, min(self._others_computing(srv), tables - 1) if tables > 1 else 0, t.k, qid)
        if self.out_busy is None:
            return self.out[qid * self.S + srv.idx]
        return self.out_busy[min(self._others_computing(srv), len(self.out_busy) - 1)][qid * self.S + srv.idx]

    def _back_ms(self, t: _Task, srv: _Server) -> float:
        """The server → dispatcher delay of task t's output from `srv`, as `_out_ms` (back_by_busy)."""
        tt, qid = self.tasks, t.q.qid
        if tt is not None:
            tables = len(tt.back)  # type: ignore[arg-type]
            return tt.delay_ms(True, min(self._others_computing(srv), tables - 1) if tables > 1 else 0, t.k, qid)
        if self.back_busy is None:
            return self.back[qid * self.S + srv.idx]
        return self.back_busy[min(self._others_computing(srv), len(self.back_busy) - 1)][qid * self.S + srv.idx]

    def _others_computing(self, srv: _Server) -> int:
        """Servers other than `srv` computing on the shared cores now: slot holders and the run queue while
        slicing, the busy servers while sharing (a stalled straggler is off the cores, so not counted)."""
        if self.slicing:
            return len(self.running) + len(self.runq) + self.n_held - (srv.rr != 0)
        return len(self.running) - (srv in self.running)

    def busy_clock(self) -> float:
        """Every server's busy time so far: ended service periods plus the ones under way (kept as a count and a sum
        of starts while the wake reads the others' work, so reading it is O(1))."""
        return self.busy_done + self.busy_n * self.env.now - self.busy_t0

    # ------------------------------------------------------------------------------- shared cores
    def _speed(self, busy: int) -> float:
        """Speed of each of `busy` servers on the cores: its share min(1, C / busy), slowed by the others that
        compute beside it at that instant (at most ceil(C) - 1 of them)."""
        if not busy:
            return 1.0
        speed = min(1.0, self.cores / busy)
        if self.corun is not None and busy > 1:
            others = min(busy, self.slots_max) - 1
            if others:
                speed /= self.corun[min(others, len(self.corun)) - 1]
        return speed

    def _respeed(self, now: float, old: float, new: float, skip: _Server | None) -> None:
        """Every busy server's task has done (now - mark) * old of its work; it goes on at `new`."""
        at = self.env.at
        for srv in self.running:
            if srv is skip:
                continue
            srv.work -= (now - srv.mark) * old
            srv.mark = now
            ev = srv.ev = Due(srv.ev.callbacks[0])  # type: ignore[union-attr]
            at(now + max(srv.work, 0.0) / new, ev)

    def busy_up(self, srv: _Server, work: float, ev: Due) -> None:
        if self.slicing:
            srv.work = srv.total = work
            self._runnable(srv)
            return
        now = self.env.now
        old = self.rate
        self.running.append(srv)
        new = self.rate = self._speed(len(self.running))
        if new != old:
            self._respeed(now, old, new, srv)
        srv.work = srv.total = work
        srv.mark = now
        self.env.at(now + work / new, ev)

    def busy_down(self, srv: _Server) -> None:
        if self.slicing:
            self._not_runnable(srv)
            return
        if srv not in self.running:
            return  # a stalling server already left the cores
        old = self.rate
        self.running.remove(srv)
        new = self.rate = self._speed(len(self.running))
        if new != old:
            self._respeed(self.env.now, old, new, None)

    def _pass_over(self, srv: _Server, done: float, pass_ms: float) -> bool:
        """A cancelled task whose pass has `done` of its `pass_ms` of work: over (the server moves on, True), or
        the rest of the pass still to run (the server keeps it; False)."""
        if done >= pass_ms:
            self.cancelled[srv.idx] += srv._stop()
            if srv.up:
                srv.pull()
            return True
        self.finishing += 1
        srv.work = srv.total = pass_ms - done
        return False

    def finish_pass_shared(self, srv: _Server, pass_ms: float) -> None:
        """finish_pass under shared cores: the server keeps working until the pass's share of work is done."""
        now = self.env.now
        if self.slicing:
            self._finish_pass_sliced(srv, pass_ms)
            return
        stalling = srv not in self.running
        done = pass_ms if stalling else srv.total - (srv.work - (now - srv.mark) * self.rate)
        if self._pass_over(srv, done, pass_ms):
            return
        srv.mark = now
        ev = srv.ev = Due(srv._pass_done)
        self.env.at(now + srv.work / self.rate, ev)

    # ------------------------------------------------------------------------------ time slicing
    # Invariants: a server holding a slot (rr == 1) has its completion event `ev` in the heap, due when its
    # `work` (left at `mark`) is done at slot speed; a server in the run queue (rr == 2) holds an `ev` that is
    # not in the heap yet. A quantum's end is an event only while someone waits: it is armed when a server
    # takes a slot with the run queue non-empty, or for every slot holder when the queue stops being empty
    # (at the holder's next quantum boundary q0 + k * quantum).
    def _runnable(self, srv: _Server, start: bool = True) -> None:
        if self.free_slots:
            if start and self.joined is not None and self.running and self.env.now > srv.free_at:
                self._join(self.env.now, min(srv.lone, srv.work))  # it woke (one going straight on is not)
            self._take_slot(srv)
            return
        srv.rr = 2
        self.runq.append(srv)
        if len(self.runq) == 1:
            self._arm_holders()

    def _join(self, now: float, work: float) -> None:
        """A server that sat idle starts on a free core, `work` its task's work without a straggle's. With probability
        `service.joined_share` it woke on a core a server holds (one of them, drawn alike): that server leaves the
        cores, its work so far done, and waits as long as `work` takes at full speed before it is runnable again;
        its slot is free meanwhile. Linux wakes a task on its last core and keeps a task that has just run off an
        idle one for a while (it is cache-hot), so the other core may well idle while the two take turns on one."""
        u = self.join_u.random()
        if u >= self.joined:
            return
        srv = self.running[int(u / self.joined * len(self.running))]
        self.running.remove(srv)
        srv.work = max(srv.work - (now - srv.mark) * self.slot_speed, 0.0)
        srv.ev = Due(srv.ev.callbacks[0])  # type: ignore[union-attr]  # its completion goes stale
        srv.qev = None
        srv.rr = 3
        self.n_held += 1
        hold = srv.hold = Due(lambda ev: self._unhold(srv, ev))
        self.env.at(now + work, hold)
        self.free_slots += 1
        self._reslot(now, None)

    def _unhold(self, srv: _Server, ev: Due) -> None:
        """The starter's work that held `srv` off the cores is done: `srv` is runnable again (unless it stopped)."""
        if srv.rr == 3 and ev is srv.hold:
            srv.rr = 0
            self.n_held -= 1
            self._runnable(srv, start=False)

    def _arm_holders(self) -> None:
        """Someone started waiting: every slot holder's quantum now ends at its next boundary q0 + k * quantum."""
        now, q = self.env.now, self.quantum
        for other in self.running:
            if other.qev is None:
                at = other.q0 + (math.floor((now - other.q0) / q) + 1) * q  # type: ignore[operator]
                self._arm(other, at if at > now else now)

    def _dispatcher_work(self, ms: float) -> None:
        """The dispatcher has `ms` more CPU work: it holds a slot until its backlog is done (at full speed, in
        arrival order), taking a free slot or, with none free, the slot of the server that took its own last; waking
        on its own core (placement 'own_core'), the slot of the server on the core it drew, if one holds it."""
        if ms <= 0:
            return
        if self.disp_on:  # its end event, when it comes, finds the longer backlog and waits for it
            self.disp_end += ms
            return
        now = self.env.now
        self.disp_on = True
        self.disp_end = now + ms
        core = int(self.disp_core.random() * self.slots_max) if self.free_slots and self.disp_core is not None else -1
        if core >= 0 and core < len(self.running):  # it woke on a core a server holds: that server waits (it is not
            self.free_slots -= 1  # moved to the free core), the free slot stays free; nobody's quantum is cut
            self._preempt_holder(now, self.running[core], arm=False)  # short for it: it waits for the dispatcher
            self.free_slots += 1
        elif self.free_slots:
            self.free_slots -= 1
            self._reslot(now, None)
        else:
            self._preempt_holder(now)
        self.env.at(self.disp_end, Due(self._dispatcher_done))

    def _preempt_holder(self, now: float, srv: _Server | None = None, arm: bool = True) -> None:
        """The dispatcher takes the slot of `srv` (by default the server that took its slot last): that server's work
        so far is done, it waits at the head of the run queue (its quantum lost) and the other holders keep theirs."""
        if srv is None:
            srv = self.running.pop()
        else:
            self.running.remove(srv)
        srv.work = max(srv.work - (now - srv.mark) * self.slot_speed, 0.0)
        srv.ev = Due(srv.ev.callbacks[0])  # type: ignore[union-attr]  # the pending completion goes stale
        srv.qev = None
        srv.rr = 2
        self.runq.appendleft(srv)
        self._reslot(now, None)
        if arm and len(self.runq) == 1:
            self._arm_holders()

    def _dispatcher_done(self, _ev: Due) -> None:
        if self.disp_end > self.env.now:  # work came in meanwhile: one event per busy spell, not per item
            self.env.at(self.disp_end, Due(self._dispatcher_done))
            return
        self.disp_on = False
        self._give_slot()

    def _reslot(self, now: float, skip: _Server | None) -> None:
        """The number of slot holders changed: each now runs at min(1, C / holders); the others' pending
        completions move accordingly (`skip` has just taken its slot and schedules its own)."""
        new = self._speed(len(self.running))
        old = self.slot_speed
        if new == old:
            return
        self.slot_speed = new
        self._respeed(now, old, new, skip)  # the holders' old completions go stale

    def _take_slot(self, srv: _Server) -> None:
        now = self.env.now
        self.free_slots -= 1
        self.running.append(srv)
        srv.rr = 1
        srv.mark = srv.q0 = now
        self._reslot(now, srv)
        self.env.at(now + srv.work / self.slot_speed, srv.ev)
        if self.runq:
            self._arm(srv, now + self.quantum)  # type: ignore[operator]
        else:
            srv.qev = None

    def _arm(self, srv: _Server, at: float) -> None:
        ev = srv.qev = Due(srv._slice_end)
        self.env.at(at, ev)

    def _give_slot(self) -> None:
        """A slot was freed: the head of the run queue takes it at once (and, should more still wait, every holder's
        quantum is armed — a no-op but after a dispatcher woke on a held core, which arms nobody)."""
        self.free_slots += 1
        if self.runq:
            self._take_slot(self.runq.popleft())
            if self.runq:
                self._arm_holders()
        else:
            self._reslot(self.env.now, None)

    def _not_runnable(self, srv: _Server) -> None:
        if srv.rr == 1:
            srv.rr = 0
            srv.qev = None
            self.running.remove(srv)
            self._give_slot()
        elif srv.rr == 2:
            srv.rr = 0
            self.runq.remove(srv)
        elif srv.rr == 3:  # held off the cores by a join: it no longer waits for them
            srv.rr = 0
            self.n_held -= 1

    def slice_over(self, srv: _Server) -> None:
        """`srv` used up its quantum: it yields the slot to the head of the run queue, or goes on if none waits."""
        now = self.env.now
        srv.qev = None
        left = srv.work - (now - srv.mark) * self.slot_speed
        if left <= 1e-12:
            return  # its work ends at this very moment: the completion, due now, frees the slot
        if not self.runq:  # nobody waits: it goes on for another quantum (armed again once someone waits)
            srv.q0 = now
            return
        srv.work = left
        srv.ev = Due(srv.ev.callbacks[0])  # type: ignore[union-attr]  # the pending completion goes stale
        srv.rr = 2
        self.running.remove(srv)
        self.runq.append(srv)
        self._give_slot()

    def _finish_pass_sliced(self, srv: _Server, pass_ms: float) -> None:
        now = self.env.now
        if srv.rr == 0:  # stalling: its pass is over
            done = pass_ms
        elif srv.rr == 1:
            done = srv.total - (srv.work - (now - srv.mark) * self.slot_speed)
        else:
            done = srv.total - srv.work
        if self._pass_over(srv, done, pass_ms):
            return
        srv.ev = Due(srv._pass_done)
        if srv.rr == 1:  # goes on in its slot, its quantum unchanged, with only the rest of the pass to do
            srv.mark = now
            self.env.at(now + srv.work / self.slot_speed, srv.ev)

    # ------------------------------------------------------------------------------ network delays
    def _later(self, delay: float, callback: Callable[[Any], None]) -> None:
        self.env.later(delay, callback)

    def _deliver(self, t: _Task) -> None:
        """A task reaches its server's queue (the cancel of a task travels behind it, so it is still live)."""
        t.station.n_live -= 1  # submit() counts it again; the dispatcher already has
        t.station.submit(t)

    def returned(self, t: _Task, srv: _Server) -> None:
        """A task ended at its server; its output reaches the dispatcher after the back delay."""
        if not self.has_back:
            self._result(t, srv)
        else:
            self._later(self._back_ms(t, srv), lambda _ev: self._result(t, srv))

    def _result(self, t: _Task, srv: _Server) -> None:
        if not t.uncounted:
            t.uncounted = True
            t.station.n_live -= 1
            if t.station.heaps:
                _touch(t.station)
        self.complete(t, srv)
        if self.live == 0 and self.n_done == self.n and not self.finishing:
            self.stop = True

    def _cancel_at_server(self, t: _Task) -> None:
        if not t.active:
            return  # it ended (or was dropped) before the cancel arrived
        t.active = False
        self.live -= 1
        srv = t.server
        if srv is not None and srv.cur is t:
            srv.preempt()
        if self.disp is not None:  # the server says it dropped the task; the dispatcher takes that in as an output
            if self.has_back:
                self._later(self._back_ms(t, t.station.servers[0]),
                            lambda _ev: self._dispatcher_work(self.disp[1]))  # type: ignore[index]
            else:
                self._dispatcher_work(self.disp[1])
        if self.live == 0 and self.n_done == self.n and not self.finishing:
            self.stop = True

    def answer(self, q: _Query, how: int, mask: int) -> None:
        q.done = True
        qid = q.qid
        self.finish_ms[qid] = self.env.now
        if self.observe is not None:  # a running hedge delay watches the answers
            self.observe(q, how, self.env.now - self.arr[qid])
        self.how[qid] = how
        self.mask[qid] = mask
        self.n_done += 1
        if self.cancel_on:
            for t in q.tasks:
                if t.active:
                    self._cancel(t)
                    if self.disp is not None:  # the dispatcher sends the cancel as it sends a task
                        self._dispatcher_work(self.disp[0])
                        if not self.net:  # ... and takes in the server's word that it dropped it (at once)
                            self._dispatcher_work(self.disp[1])
        q.tasks = []

    def _cancel(self, t: _Task) -> None:
        if self.net:  # the dispatcher stops counting it now; the server hears of it a network delay later
            if not t.uncounted:
                t.uncounted = True
                t.station.n_live -= 1
                if t.station.heaps:
                    _touch(t.station)
            if not self.has_out:
                self._cancel_at_server(t)
            else:
                self._later(self._out_ms(t, t.station.servers[0]), lambda _ev: self._cancel_at_server(t))
            return
        t.active = False
        t.station.n_live -= 1
        if t.station.heaps:
            _touch(t.station)
        self.live -= 1
        srv = t.server
        if srv is None:
            return
        if srv.cur is t and not self.batching:
            srv.preempt()
        elif self.batching and srv.holds(t):  # type: ignore[attr-defined]
            srv.cancel_task(t)  # type: ignore[attr-defined]

    # ---------------------------------------------------------------------------------------- arrivals
    def _arrive(self, k: int) -> None:
        m = self.models[k]
        q = _Query(k, m)
        if m < 0:
            self.rules.ensemble(q)
        elif self.uncoded:  # the hot single-task path: _send() and submit() inlined
            st = self.experts[m]
            t = _Task(q, st, ROLE_DIRECT)
            self.ntask[k] = 1
            self.live += 1
            st.n_live += 1
            srv = st.single
            if srv.cur is None and srv.up:  # type: ignore[union-attr]
                srv.start(t)  # type: ignore[union-attr]
            else:
                st.queue.append(t)
        else:
            self.rules.routed(q)

    # ------------------------------------------------------------------- the policy's view (policies.Serving)
    def _index_lists(self) -> dict[int, _Least]:
        """A least-loaded index for every fixed list of stations the policy's view holds that is long enough for
        one to pay (keyed by the list's identity: the rules pass those very lists)."""
        found: dict[int, _Least] = {}
        alike: dict[tuple[int, ...], _Least] = {}  # lists of the same stations in the same order share one index

        def add(members: Any) -> None:
            if len(members) < _INDEXED or id(members) in found:
                return
            same = tuple(st.idx for st in members)
            ix = alike.get(same)
            if ix is None:
                ix = alike[same] = _Least(list(members))
                for pos, st in enumerate(members):
                    st.heaps.append((ix, pos))
            found[id(members)] = ix

        for view in [self, *self.cell_views]:
            for name in ("instances", "hosts", "replicas", "coded_in", "backups_in"):
                for members in getattr(view, name):
                    add(members)
            for name in ("coded", "backups", "parity"):
                add(getattr(view, name))
        return found

    def load(self, st: _Station) -> int:
        return st.n_live

    def least_of(self, targets: Any) -> _Station | None:
        ix = self._least.get(id(targets))
        return None if ix is None else ix.least()

    def expected_ms(self, st: _Station) -> float:
        return (st.n_live + 1) * st.mean_ms

    def index(self, st: _Station) -> int:
        return st.idx

    def balance_u(self, q: _Query) -> Any:
        return self.balance[q.qid]  # type: ignore[index]

    def hedge_after(self, q: _Query, delay_ms: float) -> None:
        env = self.env
        env.at(env.now + delay_ms, _Timer(self.on_hedge, q))

    def carrier(self, q: _Query) -> _Query:
        return _Query(q.qid, q.model)  # never answered: its tasks outlive q's answer

    def _hedge(self, ev: _Timer) -> None:
        q = ev.q
        if not q.done:
            self.rules.hedge(q)

    # -------------------------------------------------------------------------------------- completion
    def complete(self, task: _Task, srv: _Server) -> None:
        if self.disp is not None:  # the dispatcher takes the output in
            self._dispatcher_work(self.disp[1])
        if not task.q.done:  # else an uncancelled leftover copy
            self.rules.output(task.q, task.role, srv.idx, srv.host)

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> RunOutput:
        """Merge the sorted arrival array into the event loop (arrivals need no events of their own).

        Events due at or before an arrival run first (departures before arrivals on ties, as in Lindley's
        recursion). The loop stops once every query is answered and no task is left, even though failure
        and slow-episode timelines would go on forever.
        """
        env = self.env
        if self.n == 0:
            raise ValueError("no queries to simulate")
        if self.recursion:
            self._recursion()
            return self._output()
        heap, run_due = env.heap, env.run_due
        arrive = self._arrive
        # the run allocates a few objects per event and frees nearly all of them by reference counting (the
        # queries' cycles are cut as they are answered): the cyclic collector's young generation is looked through
        # every 100,000 allocations instead of every 700 (6 % of a fleet point's time), and as before afterwards
        young = gc.get_threshold()
        gc.set_threshold(max(young[0], _YOUNG), *young[1:])
        try:
            for k, t in enumerate(self.arr):
                run_due(t)  # events due at or before the arrival first, then the clock moves to it
                arrive(k)
            step = env.step
            while heap and not self.stop:
                step()
        finally:
            gc.set_threshold(*young)
        return self._output()

    def _recursion(self) -> None:
        """Every query answered by its expert's one FIFO server, computed without events: a task starts at its
        arrival or when the server's previous task ends, whichever is later, and ends its drawn time after —
        the very floating-point operations the event loop does (departures before arrivals on ties), so the
        records are the same bit for bit; about four times the event loop's speed."""
        arr, models, fin, ms = self.arr, self.models, self.finish_ms, self.ms
        servers = [st.single for st in self.experts]
        draws = [srv.draw for srv in servers]  # type: ignore[union-attr]
        free = [-math.inf] * self.N
        busy = [0.0] * self.N
        for k in range(self.n):
            m = models[k]
            a = arr[k]
            f = free[m]
            start = a if a >= f else f
            end = start + draws[m][k]
            free[m] = end
            fin[k] = end
            dt = end - start
            ms[k] = dt
            busy[m] += dt
        idx = np.array([srv.idx for srv in servers], np.int64)  # type: ignore[union-attr]
        model = np.asarray(self.draws.model, np.int64)
        out = self._out
        out["how"][:] = HOW_DIRECT
        out["n_tasks"][:] = 1
        if out["mask"] is not None:
            out["mask"][:] = np.left_shift(np.int64(1), idx[model])
        else:  # past 63 servers: Python ints
            self.mask[:] = [1 << int(s) for s in idx[model]]
        for srv, b in zip(servers, busy, strict=True):
            self.busy[srv.idx] = b  # type: ignore[union-attr]
        self.n_done, self.live = self.n, 0
        self.env.now = max(arr[self.n - 1], max(free))

    def _output(self) -> RunOutput:
        env = self.env
        kept = self._out
        out = RunOutput(
            finish_ms=kept["finish_ms"],
            how=kept["how"],
            mask=np.asarray(self.mask, np.dtype(object)) if kept["mask"] is None else kept["mask"],
            n_tasks=kept["n_tasks"],
            server_ms=kept["server_ms"],
            busy_ms=np.asarray(self.busy),
            cancelled_ms=np.asarray(self.cancelled),
            lost_ms=np.asarray(self.lost),
            end_ms=float(env.now),
            delay_end_ms=self.rules.delays_now(),
            notes=self.rules.notes(),
        )
        self._release()
        return out

    def _release(self) -> None:
        """Drop the per-query lists (Python objects, ~30 bytes per query each) once the output is built: the engine
        sits in reference cycles (servers, events) that only the garbage collector frees, so without this a
        point's later policies would run beside every earlier policy's lists."""
        self.arr = self.models = self.finish_ms = self.how = self.mask = self.ntask = self.ms = []  # type: ignore[assignment]
        self._out = {}
        self.out = self.back = self.out_busy = self.back_busy = None
        for srv in self.servers:
            srv.draw = srv.pass_draw = None
        # and break its reference cycles (servers and stations <-> engine, pending events' bound methods, the rules
        # and cell views <-> engine), so that reference counting frees it now rather than the cyclic collector
        # later: at 1,000 servers a dead engine is several MB, which the memory preflight's short runs read as
        # per-query memory
        for srv in self.servers:
            srv.eng = srv.env = srv.station = srv.cur = srv.ev = srv.qev = srv.hold = srv.on_finish = None  # type: ignore[assignment]
            if isinstance(srv, _BatchServer):
                srv.batch = []
        for st in self.stations:
            st.servers, st.single, st.heaps = [], None, []
            st.queue.clear()
        self.env.heap.clear()
        self.runq.clear()
        self.servers, self.stations, self.experts, self.cell_views, self.running = [], [], [], [], []
        self._least = {}
        self.rules.release()
        self.rules = self.observe = self.on_hedge = None  # type: ignore[assignment]
