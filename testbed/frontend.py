"""The frontend: replays an arrival stream in wall-clock time and dispatches it to real servers.

Dispatch follows the simulator's policies rule for rule (see sim/engine.py), with the frontend's own view of
each server's load: a server's count of live tasks is what was sent to it and has neither come back nor been
cancelled — exactly what join-shortest-queue and shortest-expected-delay look at in the simulator.

- uncoded: the expert's own server.
- replication: ``redundant`` (every server hosting the expert) or ``jsq`` (the least-loaded one, the expert's
  own on ties). (``pool``, one queue for several servers, would need a frontend-side queue and is refused.)
- hedged: the expert's server; after the hedge delay, a copy to its least-loaded replica.
- coded: ``redundant`` (direct + every other expert + coded servers at once), ``hedged`` (that group after
  the delay) or ``sed`` (whichever path has the shorter expected delay); answered by the direct output or by
  decoding once N outputs of the group came back.
- backup: the r extra servers host one generalist network; the expert's server, and one copy to the backup
  server with the fewest live tasks (ties to the lowest index) — after the hedge delay (``hedged``) or at once
  (``redundant``); the generalist's own output (undecoded) answers if it is back first.
- parity: each routed query to its expert; groups of k routed queries (per expert, or in arrival order) are
  encoded by a parity server (``GROUP`` frame: the members' input rows and the encoder) and run through the
  group's parity network; a missing output is decoded from the parity output and the others (policies/parity.py).
  The parity output is kept for every member of its group (`outputs[member, parity server]`), for judging.
- ensemble queries (model −1) need every expert's answer (or N of the N + r outputs, coded); under backup, the
  one backup copy's output answers the whole query instead.

When a query is answered its other copies are cancelled (if the policy cancels): a queued copy is dropped by
its server; a copy in service has its straggle cut (the forward pass itself always completes).
"""

from __future__ import annotations

import gc
import heapq
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import zmq

from policies import rules_for
from policies.codes import BACKUP, CODED, HOW, HOW_DIRECT, PARITY, ROLE_PARITY, mask_dtype
from policies.parity import companions_column
from policies.rules import ServingView
from testbed import wire

STATUS = ("done", "dropped_queued", "dropped_in_service")


@dataclass(frozen=True)
class Policy:
    """One serving policy, in plain values (the simulator's Plan says the same)."""

    name: str
    kind: str  # a policy kind of the registry (policies/)
    dispatch: str
    hosts: tuple[int, ...]  # per server: expert index, CODED, SPARE or BACKUP
    n_experts: int
    cancel: bool = True
    fanout: int = 1
    mean_ms: tuple[float, ...] = ()  # per server, for shortest-expected-delay
    delay_ms: tuple[float, ...] | None = None  # per expert, hedge delay (a running delay's start)
    delay_quantile: float | None = None  # the delay runs at this percentile of direct answers (policies.delays)
    delay_window: int = 1000  # ... over this many routed queries per expert
    backup_net: int | None = None  # the generalist's network (BACKUP servers); None: coded model 0's, N
    n_base: int = 0  # servers of the experts' own instances (0: n_experts); the extra servers follow
    balancer: str = "jsq"  # which of an expert's instances gets a task: jsq | round_robin
    groups: tuple[tuple[int, ...], ...] = ()  # code groups of experts (empty: one group of all)
    options: tuple[tuple[str, Any], ...] = ()  # the policy kind's own settings (parity: k, group_timeout_ms, partial)
    parity_nets: tuple[int, ...] = ()  # parity: per expert, the network its groups' parity tasks run
    encoder: str = "sum"  # parity: how a group's inputs become one (testbed.wire.ENCODERS)
    cells: int = 1  # the servers split into cells; query q is served in cell q mod cells (policies.rules)
    coded_rows: tuple[int, ...] = ()  # per coded server, in order: the coded model it runs (empty: the k-th runs k)

    def network_of(self, server: int) -> int:
        """The network a server runs under this policy: expert i is network i, coded model k is N + k, a backup
        server the generalist's (`backup_net`, by default coded model 0 itself); a parity server's task names
        its group's parity network instead (-1 here)."""
        host = self.hosts[server]
        if host == PARITY:
            return -1
        if host == BACKUP:
            return self.n_experts if self.backup_net is None else self.backup_net
        if host >= 0:
            return host
        rank = self.hosts[:server].count(CODED)
        return self.n_experts + (self.coded_rows[rank] if self.coded_rows else rank)

    def servers_of(self, model: int) -> list[int]:
        return [s for s, h in enumerate(self.hosts) if h == model]


@dataclass
class Workload:
    """The queries to replay: arrival time, expert asked for (−1 ensemble), input row, straggle factor per
    (query, server) — the simulator's own draws, so both serve the same stream."""

    arrival_ms: np.ndarray
    model: np.ndarray
    row: np.ndarray
    factor: np.ndarray  # (n, servers)
    mode: str = "stall"

    @property
    def n(self) -> int:
        return len(self.arrival_ms)


@dataclass
class ServeResult:
    records: pd.DataFrame  # one row per query
    tasks: pd.DataFrame  # one row per task sent
    outputs: np.ndarray  # (n, servers, K) float32, NaN where no output came back before the answer
    wall_s: float
    facts: dict[str, Any] = field(default_factory=dict)


class _Query:
    __slots__ = ("qid", "model", "done", "got", "mask", "cover", "how", "tasks")

    def __init__(self, qid: int, model: int) -> None:
        self.qid, self.model = qid, model
        self.done = False
        self.got = self.mask = self.cover = 0
        self.how = HOW_DIRECT
        self.tasks: list[int] = []


class Frontend(ServingView):
    """Serves one Workload under one Policy over the given sockets (one per server, index = server)."""

    def __init__(self, sockets: list[zmq.Socket], policy: Policy, work: Workload, lead_ms: float = 200.0,
                 drain_timeout_s: float = 60.0) -> None:
        if policy.dispatch in rules_for(policy.kind).pooled:
            raise ValueError(f"testbed: {policy.kind} with dispatch = {policy.dispatch!r} (a shared queue) is not "
                             "served for real")
        if policy.kind == "backup" and (BACKUP not in policy.hosts or policy.dispatch not in ("hedged", "redundant")
                                        or (policy.dispatch == "hedged" and policy.delay_ms is None)):
            raise ValueError("testbed: a backup policy needs backup servers, dispatch hedged (with delay_ms) or "
                             "redundant")
        if policy.kind == "parity" and (len(policy.parity_nets) != policy.n_experts
                                        or policy.encoder not in wire.ENCODERS):
            raise ValueError(f"testbed: a parity policy needs a parity network per expert ({policy.n_experts}, got "
                             f"{len(policy.parity_nets)}) and an encoder of {wire.ENCODERS}")
        if policy.balancer == "power_of_d":
            raise ValueError("testbed: the power_of_d balancer is not served for real (its random draws are not "
                             "replayed); use jsq or round_robin")
        if len(sockets) != len(policy.hosts) or work.factor.shape[1] != len(policy.hosts):
            raise ValueError(f"testbed: {len(sockets)} servers, policy has {len(policy.hosts)}, "
                             f"draws have {work.factor.shape[1]}")
        self.sockets, self.p, self.w = sockets, policy, work
        self.lead_ms, self.drain_timeout_s = lead_ms, drain_timeout_s
        self.N, self.S = policy.n_experts, len(policy.hosts)
        # the policy's view of the servers (policies.Serving): targets are server indices
        self.bind_view(hosts=policy.hosts, n_base=policy.n_base or self.N, groups=policy.groups, n_experts=self.N,
                       dispatch=policy.dispatch, fanout=policy.fanout, balancer=policy.balancer,
                       delay_ms=policy.delay_ms, delay_quantile=policy.delay_quantile,
                       delay_window=policy.delay_window, station_of=range(self.S), targets=range(self.S),
                       options=dict(policy.options), cells=policy.cells)
        self.rules = rules_for(policy.kind)(self)
        self.nets = [policy.network_of(s) for s in range(self.S)]
        self.mode = wire.MODES[work.mode]
        self.n_live = [0] * self.S
        n = work.n
        self.queries = [_Query(k, int(m)) for k, m in enumerate(work.model.tolist())]
        self.finish = np.full(n, np.nan)
        self.dispatched = np.full(n, np.nan)
        self.how = np.zeros(n, np.int8)
        self.mask = np.zeros(n, mask_dtype(self.S))
        self.ntask = np.zeros(n, np.int32)
        self.outputs: np.ndarray | None = None
        self.timers: list[tuple[float, int, _Query]] = []  # (due, order of setting, query or carrier)
        self._timer_order = 0
        self.wakes = 0  # times the loop waited for a message or a due time (each one a wake-up of this process)
        self.n_done = 0
        self.in_flight = 0
        # per task: query, server, role, sent, back, status, server stamps (s), passes, active
        self.t_query: list[int] = []
        self.t_server: list[int] = []
        self.t_role: list[int] = []
        self.t_net: list[int] = []
        self.t_sent: list[float] = []
        self.t_due: list[float] = []  # when the send was due: the query's arrival, or its hedge timer
        self._due = 0.0
        self.t_back: list[float] = []
        self.t_status: list[int] = []
        self.t_stamps: list[tuple[float, float, float, float]] = []
        self.t_passes: list[int] = []
        self.t_active: list[bool] = []
        self.zero = 0.0
        self.base = int.from_bytes(os.urandom(3), "little") << 32  # task ids on the wire: unique per run

    # ------------------------------------------------------------------------------------------------ clock
    def now(self) -> float:
        return (time.perf_counter() - self.zero) * 1000.0

    # --------------------------------------------------------------------------------------------- sending
    def send(self, q: _Query, s: int, role: int) -> None:
        tid = len(self.t_query)
        self.t_query.append(q.qid)
        self.t_server.append(s)
        self.t_role.append(role)
        self.t_back.append(np.nan)
        self.t_status.append(-1)
        self.t_stamps.append((np.nan,) * 4)
        self.t_passes.append(0)
        self.t_active.append(True)
        q.tasks.append(tid)
        self.ntask[q.qid] += 1
        self.n_live[s] += 1
        self.in_flight += 1
        factor = float(self.w.factor[q.qid, s])
        if role == ROLE_PARITY:  # the group's rows, encoded by the server and run through its parity network
            rows = [int(self.w.row[m]) for m in self.rules.members_of(q)]
            net = self.p.parity_nets[q.model]
            head = wire.GROUP_FMT.pack(self.base + tid, net, factor, self.mode, wire.ENCODERS.index(self.p.encoder),
                                       int(self.options["k"]), len(rows))
            self.sockets[s].send_multipart([wire.GROUP, head, np.asarray(rows, "<i8").tobytes()])
        else:
            net = self.nets[s]
            body = wire.TASK_FMT.pack(self.base + tid, net, int(self.w.row[q.qid]), factor, self.mode)
            self.sockets[s].send_multipart([wire.TASK, body])
        self.t_net.append(net)
        sent = self.now()
        self.t_sent.append(sent)
        self.t_due.append(self._due)
        if np.isnan(self.dispatched[q.qid]):
            self.dispatched[q.qid] = sent

    # ------------------------------------------------------------------- the policy's view (policies.Serving)
    def load(self, s: int) -> int:
        return self.n_live[s]

    def expected_ms(self, s: int) -> float:
        return (self.n_live[s] + 1) * self.p.mean_ms[s]

    def index(self, s: int) -> int:
        return s

    def balance_u(self, q: _Query) -> Any:
        raise NotImplementedError("power_of_d is refused when the frontend is built")

    def hedge_after(self, q: _Query, delay_ms: float) -> None:
        heapq.heappush(self.timers, (self.w.arrival_ms[q.qid] + delay_ms, self._timer_order, q))
        self._timer_order += 1

    def _next_timer_ms(self) -> float:
        """When the next hedge timer of a query still open is due (inf: none). The timers of queries answered
        meanwhile are dropped here, so the loop does not wake for them: every wake of the real-time frontend
        preempts a computing server, and a timer per query would double the wakes of a hedging policy."""
        timers = self.timers
        while timers and timers[0][2].done:
            heapq.heappop(timers)
        return timers[0][0] if timers else np.inf

    def carrier(self, q: _Query) -> _Query:
        return _Query(q.qid, q.model)  # never answered (its tasks outlive q's answer); draws as q

    # ------------------------------------------------------------------------------------------ completions
    def answer(self, q: _Query, how: int, mask: int) -> None:
        q.done = True
        self.finish[q.qid] = now = self.now()
        self.rules.answered(q, how, now - self.w.arrival_ms[q.qid])
        self.how[q.qid] = how
        self.mask[q.qid] = mask
        self.n_done += 1
        if self.p.cancel:
            for tid in q.tasks:
                if self.t_active[tid]:
                    self.t_active[tid] = False
                    self.n_live[self.t_server[tid]] -= 1
                    self.sockets[self.t_server[tid]].send_multipart([wire.CANCEL, wire.ID_FMT.pack(self.base + tid)])

    def _complete(self, tid: int, output: np.ndarray) -> None:
        s = self.t_server[tid]
        q = self.queries[self.t_query[tid]]
        if q.done:
            return  # a copy that was not cancelled
        assert self.outputs is not None
        if self.t_role[tid] == ROLE_PARITY:  # kept for every member of the group (none of them ran here)
            for m in self.rules.members_of(q):
                self.outputs[m, s] = output
        else:
            self.outputs[q.qid, s] = output
        self.rules.output(q, self.t_role[tid], s, self.p.hosts[s])

    def _receive(self, s: int, frames: list[bytes]) -> None:
        back = self.now()
        kind = frames[0]
        if kind == wire.DONE:
            tid, recv, start, computed, end, passes = wire.DONE_FMT.unpack(frames[1])
            status = 0
        elif kind == wire.DROPPED:
            tid, status, recv, start, computed, end, passes = wire.DROPPED_FMT.unpack(frames[1])
        elif kind == wire.ERROR:  # a frame of ours the server could not act on: a bug here, not a straggler
            raise RuntimeError(f"testbed: server {s} refused a frame: {frames[1].decode(errors='replace')}")
        else:
            return
        tid -= self.base
        if not 0 <= tid < len(self.t_query):
            return  # a late message of an earlier run on the same servers
        self.t_back[tid] = back
        self.t_status[tid] = status
        self.t_stamps[tid] = (recv, start, computed, end)
        self.t_passes[tid] = passes
        self.in_flight -= 1
        if status != 0 and self.t_active[tid]:
            raise RuntimeError(f"testbed: server {s} dropped task {tid} that was never cancelled")
        if status == 0 and self.t_active[tid]:
            self.t_active[tid] = False
            self.n_live[s] -= 1
            output = np.frombuffer(frames[2], dtype=np.float32)
            if self.outputs is None:
                self.outputs = np.full((self.w.n, self.S, len(output)), np.nan, np.float32)
            self._complete(tid, output)

    def _drain(self) -> bool:
        got = False
        for s, sock in enumerate(self.sockets):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                got = True
                self._receive(s, frames)
        return got

    # ------------------------------------------------------------------------------------------------- run
    def run(self) -> ServeResult:
        with dispatcher_priority() as priority, collector_paused(PAUSE_COLLECTOR) as collector:
            result = self._run()
        result.facts["frontend_priority"] = priority
        result.facts["gc_collections"] = len(collector.pauses)
        result.facts["gc_pause_ms_max"] = max(collector.pauses, default=0.0)
        result.facts["gc_before_ms"] = collector.before_ms
        return result

    def _run(self) -> ServeResult:
        arrivals = self.w.arrival_ms.tolist()
        n = len(arrivals)
        started = time.perf_counter()
        cpu_started = time.process_time()
        self.zero = started + self.lead_ms / 1000.0
        k = 0
        last_progress = time.monotonic()
        while self.n_done < n or self.in_flight > 0:
            now = self.now()
            while k < n and arrivals[k] <= now:
                self._due = arrivals[k]
                q = self.queries[k]
                if q.model >= 0:
                    self.rules.routed(q)
                else:
                    self.rules.ensemble(q)
                k += 1
            while self.timers and self.timers[0][0] <= now:
                self._due, _, timed = heapq.heappop(self.timers)
                if not timed.done:
                    self.rules.hedge(timed)
            if self._drain():
                last_progress = time.monotonic()
                continue
            due = min(arrivals[k] if k < n else np.inf, self._next_timer_ms())
            timeout = min(1.0, max(0.0, (due - self.now()) / 1000.0))
            self.wakes += 1
            if not wire.wait_readable(self.sockets, timeout) and k >= n and not self.timers:
                if time.monotonic() - last_progress > self.drain_timeout_s:
                    raise TimeoutError(f"testbed: {self.in_flight} task(s) never came back from the servers")
        wall = time.perf_counter() - started
        facts = {"frontend_cpu_s": time.process_time() - cpu_started, "wall_s": wall,
                 "served_s": self.now() / 1000.0, "loop_wakes": self.wakes}
        return ServeResult(self._records(), self._tasks(), self._outputs(), wall, facts)

    def _outputs(self) -> np.ndarray:
        return self.outputs if self.outputs is not None else np.full((self.w.n, self.S, 0), np.nan, np.float32)

    def _records(self) -> pd.DataFrame:
        w = self.w
        frame = pd.DataFrame({
            "policy": self.p.name,
            "query_id": np.arange(w.n, dtype=np.int64),
            "model": w.model.astype(np.int64),
            "row": w.row.astype(np.int64),
            "arrival_ms": w.arrival_ms,
            "dispatch_ms": self.dispatched,
            "finish_ms": self.finish,
            "latency_ms": self.finish - w.arrival_ms,
            "answered_by": pd.Categorical.from_codes(self.how.astype(np.int64), categories=list(HOW)),
            "answer_mask": self.mask,
            "n_tasks": self.ntask,
        })
        notes = self.rules.notes()
        decodes = notes.get("parity_decodes")
        if decodes is not None:  # as the simulator writes it: each parity-decoded query's group companions
            frame["parity_others"] = np.asarray(companions_column(decodes, w.n), dtype=object)
        denied = notes.get("hedges_denied")
        if denied is not None:  # a hedge budget: the queries whose hedge it held back
            frame["hedge_denied"] = np.isin(frame["query_id"].to_numpy(), np.asarray(denied, np.int64))
        return frame

    def _tasks(self) -> pd.DataFrame:
        stamps = np.asarray(self.t_stamps, float).reshape(-1, 4) * 1000.0  # server clock, ms
        recv, start, computed, end = stamps.T
        status = np.asarray(self.t_status, np.int64)
        return pd.DataFrame({
            "policy": self.p.name,
            "task_id": np.arange(len(self.t_query), dtype=np.int64),
            "query_id": np.asarray(self.t_query, np.int64),
            "server": np.asarray(self.t_server, np.int64),
            "role": np.asarray(self.t_role, np.int64),
            "net": np.asarray(self.t_net, np.int64),
            "factor": self.w.factor[self.t_query, self.t_server] if self.t_query else np.empty(0),
            "sent_ms": np.asarray(self.t_sent, float),
            "returned_ms": np.asarray(self.t_back, float),
            "status": pd.Categorical.from_codes(np.clip(status, 0, None), categories=list(STATUS)),
            "queue_ms": start - recv,
            "compute_ms": computed - start,
            "held_ms": end - computed,
            "in_server_ms": end - recv,
            "due_ms": np.asarray(self.t_due, float),
            "transport_ms": np.asarray(self.t_back, float) - np.asarray(self.t_sent, float) - (end - recv),
            # one-way delays: meaningful when the servers share the frontend's clock (same host)
            "out_ms": recv - self.zero * 1000.0 - np.asarray(self.t_due, float),
            "back_ms": np.asarray(self.t_back, float) - (end - self.zero * 1000.0),
            "passes": np.asarray(self.t_passes, np.int64),
            "server_recv_clock_ms": recv,
            "frontend_zero_clock_ms": self.zero * 1000.0,
        })


@contextmanager
def dispatcher_priority() -> Iterator[str]:
    """Run the dispatch loop ahead of the servers' compute: real-time round-robin where the OS allows it (a
    waking dispatcher then preempts a busy server at once instead of waiting for its time slice), else a
    raised nice level, else unchanged. The loop sleeps in select() between events, so it takes a few percent of
    a core; Linux's real-time throttling bounds it in any case. Yields what was obtained."""
    got, undo = "normal", None
    if hasattr(os, "sched_setscheduler"):
        try:
            before = os.sched_getscheduler(0), os.sched_getparam(0)
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
            got, undo = "realtime", lambda: os.sched_setscheduler(0, before[0], before[1])
        except (OSError, PermissionError):
            pass
    if undo is None:
        try:
            old = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, 0, old - 10)
            got, undo = "nice-10", lambda: os.setpriority(os.PRIO_PROCESS, 0, old)
        except (OSError, PermissionError, AttributeError):
            pass
    try:
        yield got
    finally:
        if undo is not None:
            undo()


# Python's cyclic garbage collector stops the frontend while it runs, and a full collection walks every object the
# process holds: 113 ms here in a process with coinsim's testbed imported (268,000 objects), more with the
# frontend's own records. Left on, one fired inside a served run of the default scenario and held every dispatch
# for 250 ms (docs/testbed.md lesson 18). A run therefore collects first, freezes what survives (never walked
# again) and keeps the collector off until its last output is back, as latency-critical Python services do.
PAUSE_COLLECTOR = True


@dataclass
class CollectorLog:
    """What the garbage collector did around a served run: the length (ms) of every collection inside it, and of
    the full collection made before it (what one inside would have stopped the dispatcher for)."""

    pauses: list[float] = field(default_factory=list)
    before_ms: float | None = None


@contextmanager
def collector_paused(pause: bool = True) -> Iterator[CollectorLog]:
    """Inside: the cyclic garbage collector off (after one full collection, its survivors frozen) when `pause`;
    every collection that runs inside anyway (any, if not paused) is timed into the yielded log."""
    log = CollectorLog()
    began = [0.0]

    def watch(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            log.pauses.append((time.perf_counter() - began[0]) * 1000.0)

    enabled = gc.isenabled()
    if pause:
        started = time.perf_counter()
        gc.collect()
        log.before_ms = (time.perf_counter() - started) * 1000.0
        gc.freeze()
        gc.disable()
    gc.callbacks.append(watch)
    try:
        yield log
    finally:
        gc.callbacks.remove(watch)
        if pause:
            gc.unfreeze()
            if enabled:
                gc.enable()


def serve(sockets: list[zmq.Socket], policy: Policy, work: Workload, lead_ms: float = 200.0) -> ServeResult:
    """Replay `work` under `policy` on the servers behind `sockets`; one record per query and per task."""
    return Frontend(sockets, policy, work, lead_ms).run()
