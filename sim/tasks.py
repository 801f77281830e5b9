"""Per-task draws (`sim.draws = "task"`): what a task takes is drawn for the task, not for a (query, server) pair.

The k-th task sent for query q (its slot: copies, decode-group tasks, hedges and backups count in the order the
policy sends them; a query's first task is slot 0) reads element q % BLOCK of block q // BLOCK of slot k. Each
(slot, block) has a stream of its own, spawned from the run seed, of five rows of uniforms: the service draw, the
straggle's chance and size, the delay out and the delay back. Any task's numbers follow without drawing anyone
else's, so a point's draws cost what its tasks do whatever the number of servers, and only the blocks in use are
held (a block dropped from the cache is drawn again, the same). Every policy sees the same arrivals, models and
samples, and the k-th task of a query the same uniforms under every policy; what the per-(query, server) layout
adds, the same server straggling on the same query under every policy, is what this one gives up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.config import SimConfig
from sim.draws import TASKS, stream
from sim.layout import server_dist

BLOCK = 2048  # queries per block: part of the numbers (changing it changes every per-task draw)
SERVICE_ROW, HIT_ROW, SIZE_ROW, OUT_ROW, BACK_ROW = range(5)
_HELD = {"uniforms": 256, "times": 1024, "delays": 1024}  # blocks held at once (the oldest dropped first): 20,
# 32 and 16 MB at most


def _put(cache: dict, key: Any, value: Any, held: int) -> Any:
    if len(cache) >= held:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


class TaskTimes:
    """The task times and network delays of a policy's servers under per-task draws.

    `kind_of[s]` groups servers that map a draw alike (the same service distribution, scale and straggling, whatever
    they host), so a block is mapped once per kind of server, not once per server or per model."""

    def __init__(self, cfg: SimConfig, hosts: tuple[int, ...], seed: int) -> None:
        st = cfg.stragglers
        scale = cfg.service.scale or (1.0,) * len(hosts)
        dist_of: dict[int, Any] = {}  # per host (distributions are frozen models: equal settings, equal keys)
        kinds: dict[tuple[Any, float, bool], int] = {}
        self.kinds: list[tuple[Any, float, bool]] = []
        self.kind_of: list[int] = []
        for s, h in enumerate(hosts):
            if h not in dist_of:
                dist_of[h] = server_dist(cfg, h)
            key = (dist_of[h], float(scale[s]), st.p > 0 and (st.servers is None or s in st.servers))
            if key not in kinds:
                kinds[key] = len(self.kinds)
                self.kinds.append(key)
            self.kind_of.append(kinds[key])
        self.seed, self.p, self.slowdown = seed, st.p, st.slowdown
        self.overhead = cfg.service.overhead_ms
        net = cfg.network
        self.out = net.out_by_busy or ((net.out,) if net.out is not None else None)
        self.back = net.back_by_busy or ((net.back,) if net.back is not None else None)
        self._u: dict[tuple[int, int], np.ndarray] = {}
        self._times: dict[tuple[int, int, int], tuple[memoryview, memoryview]] = {}
        self._delays: dict[tuple[int, int, int, int], memoryview] = {}

    def uniforms(self, slot: int, block: int) -> np.ndarray:
        """The (5, BLOCK) uniforms of one slot and block of queries."""
        u = self._u.get((slot, block))
        if u is None:
            u = _put(self._u, (slot, block), stream(self.seed, TASKS, slot, block).random((5, BLOCK)),
                   _HELD["uniforms"])
        return u

    def block_times(self, slot: int, block: int, kind: int) -> tuple[memoryview, memoryview]:
        """Task times (straggle included) and the same without the straggle, of one slot and block on a kind of
        server."""
        got = self._times.get((slot, block, kind))
        if got is None:
            u = self.uniforms(slot, block)
            dist, scale, straggles = self.kinds[kind]
            base = dist.ppf(u[SERVICE_ROW]) * scale
            task = base
            if straggles:
                size = (np.full(BLOCK, float(self.slowdown)) if isinstance(self.slowdown, float | int)
                        else self.slowdown.ppf(u[SIZE_ROW]))
                task = base * np.where(u[HIT_ROW] < self.p, size, 1.0)
            got = _put(self._times, (slot, block, kind),
                       (memoryview(task + self.overhead), memoryview(base + self.overhead)), _HELD["times"])
        return got

    def task_ms(self, slot: int, qid: int, server: int) -> tuple[float, float]:
        """(task time, the same without its straggle) of query qid's slot-th task on `server`."""
        svc, pas = self.block_times(slot, qid // BLOCK, self.kind_of[server])
        i = qid % BLOCK
        return svc[i], pas[i]

    def delay_ms(self, back: bool, level: int, slot: int, qid: int) -> float:
        """The delay out (back: back) of query qid's slot-th task, from table `level` (network.*_by_busy)."""
        block = qid // BLOCK
        key = (back, level, slot, block)
        col = self._delays.get(key)
        if col is None:
            dist = (self.back if back else self.out)[level]  # type: ignore[index]
            u = self.uniforms(slot, block)[BACK_ROW if back else OUT_ROW]
            col = _put(self._delays, key, memoryview(dist.ppf(u)), _HELD["delays"])
        return col[qid % BLOCK]

    def column(self, server: int, n: int, slot: int = 0) -> np.ndarray:
        """Task times of every query's slot-th task on `server` (for percentiles of a server's times)."""
        kind = self.kind_of[server]
        blocks = [np.asarray(self.block_times(slot, b, kind)[0]) for b in range((n + BLOCK - 1) // BLOCK)]
        return np.concatenate(blocks)[:n] if blocks else np.empty(0)
