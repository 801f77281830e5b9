"""Memory: what a new allocation can take on this machine, and the floor of what a fleet's servers cost the
simulator, so that a fleet that cannot fit is refused before its layout is built."""

from __future__ import annotations

import os

from sim.config import SimConfig

SERVER_BYTES = 1_500  # a floor of the simulator's own state per server (its layout, the engine's server, a task
# queue): 1.8 kB measured (tracemalloc) at 10,001 and at 100,001 servers, one policy, per-task draws, 4 queries


def available_memory() -> int:
    """Bytes of memory available to a new allocation: psutil if installed, else /proc/meminfo, else sysconf."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def size_text(n: float) -> str:
    """A byte count for people: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fleet_problem(cfg: SimConfig, available: int | None = None) -> str | None:
    """A fleet whose servers alone (SERVER_BYTES each, before any query) exceed the memory available, as a
    message; known from the config's counts without building its layout (2 x 10^9 servers took the machine's
    memory while their layout was being built)."""
    servers = cfg.n_servers
    need = servers * SERVER_BYTES
    available = available_memory() if available is None else available
    if need <= available:
        return None
    return (f"{servers:,} servers ({cfg.n_base:,} experts' instances and {cfg.n_extra:,} extra) need at least "
            f"{size_text(need)} of memory before any query ({SERVER_BYTES:,} bytes a server), more than the "
            f"{size_text(available)} available; lower deployment.instances or r")
