"""What else the host's CPUs did while the testbed served: other processes' CPU time and the hypervisor's steal.

A served run is only comparable to a prediction for a quiet machine; on a shared host, other tenants' work (or a
virtual machine's stolen time) lengthens every latency without any mechanism of the served system changing.
`HostMeter` reads Linux's /proc at the start and end of a run: the CPU time every process spent (`/proc/stat`,
in clock ticks), less the time the run's own processes spent (`/proc/<pid>/stat` for the frontend and each local
server), per wall second — the cores other processes kept busy — and the time the hypervisor ran someone else
on this machine's virtual CPUs (steal). Elsewhere every figure is None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICK_S = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def _host_ticks() -> tuple[int, int] | None:
    """(busy, steal) clock ticks summed over the host's CPUs since boot; None where /proc/stat does not tell."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return user + nice + system + irq + softirq, steal


def _process_ticks(pid: int) -> int:
    """User + system clock ticks of process `pid` (all its threads); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)


@dataclass(frozen=True)
class HostLoad:
    """Cores kept busy by processes other than the run's own, and cores stolen by the hypervisor, over `wall_s`;
    and the cores the run's own processes used (frontend and local servers, every thread: the CPU serving took)."""

    other_cores: float | None
    steal_cores: float | None
    wall_s: float
    own_cores: float | None = None


class HostMeter:
    """Start with the run's own process ids; `stop()` gives the host load between the two readings."""

    def __init__(self, own_pids: list[int]) -> None:
        self.own = list(own_pids)
        self.wall = time.perf_counter()
        self.host = _host_ticks()
        self.mine = sum(_process_ticks(pid) for pid in self.own)

    def stop(self) -> HostLoad:
        wall = max(time.perf_counter() - self.wall, 1e-9)
        host = _host_ticks()
        if host is None or self.host is None:
            return HostLoad(None, None, wall)
        mine = sum(_process_ticks(pid) for pid in self.own) - self.mine
        busy = host[0] - self.host[0]
        other = max(busy - mine, 0) * _TICK_S / wall
        return HostLoad(other_cores=other, steal_cores=(host[1] - self.host[1]) * _TICK_S / wall, wall_s=wall,
                        own_cores=mine * _TICK_S / wall)


class ProcessTreeMeter:
    """Like HostMeter for work whose processes come and go inside the measured span (servers started and reaped
    by this process): the run's own CPU is this process's and its reaped children's (`os.times`)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.host = _host_ticks()
        self.mine = self._own_s()

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> HostLoad:
        wall = max(time.perf_counter() - self.wall, 1e-9)
        host = _host_ticks()
        if host is None or self.host is None:
            return HostLoad(None, None, wall)
        mine = self._own_s() - self.mine
        busy = (host[0] - self.host[0]) * _TICK_S
        return HostLoad(other_cores=max(busy - mine, 0.0) / wall, steal_cores=(host[1] - self.host[1]) * _TICK_S / wall,
                        wall_s=wall, own_cores=mine / wall)
