"""Pure-numpy reductions of raw timings into calibration numbers (no torch, no processes; unit-tested by hand).

- `line_fit`: least-squares line y = intercept + slope × x, with its residuals.
- `cycles_ms`: a busy server's per-task cycle from its own stamps (start of a task to the start of the next one,
  counted only where that next task was already waiting when the first ended).
- `descheduled_gaps` / `slice_lengths`: where a spinning process's clock jumped (it was off the core) and the
  lengths of the uninterrupted runs between those jumps.
- `idle_at_arrival`: which tasks reached a server that had finished everything before (their receive stamp times
  the message's arrival; a busy server reads its socket only between passes);
- `quantiles`: an evenly spaced quantile sample of a distribution, small enough to store in a file.
"""

from __future__ import annotations

import numpy as np


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(intercept, slope, residuals y − fit) of the least-squares line through the points (x, y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("line_fit needs two equally long 1-d arrays of at least 2 points")
    design = np.column_stack([np.ones_like(x), x])
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(intercept), float(slope), y - (intercept + slope * x)


def cycles_ms(recv: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """One server's cycles, given its tasks' receive, start and end stamps (one clock, any order).

    The cycle of a task is the time from its start to the start of the server's next task, kept only where that
    next task had been received by the time this one ended (the server went straight on rather than waiting for
    work); NaN otherwise, and for the last task. Returned in the order of the inputs.
    """
    recv, start, end = (np.asarray(a, float) for a in (recv, start, end))
    out = np.full(len(start), np.nan)
    ok = np.flatnonzero(np.isfinite(start) & np.isfinite(end) & np.isfinite(recv))
    order = ok[np.argsort(start[ok], kind="stable")]
    if len(order) < 2:
        return out
    this, after = order[:-1], order[1:]
    busy = recv[after] <= end[this]
    out[this[busy]] = start[after[busy]] - start[this[busy]]
    return out


def descheduled_gaps(stamps: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(gap starts, gap ends): consecutive clock readings of a spinning loop further apart than `threshold`,
    i.e. moments the process was not running. `stamps` must be increasing."""
    stamps = np.asarray(stamps, float)
    jumps = np.flatnonzero(np.diff(stamps) > threshold)
    return stamps[jumps], stamps[jumps + 1]


def slice_lengths(gap_starts: np.ndarray, gap_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(runs, gaps): the lengths of the complete runs between consecutive gaps (from one gap's end to the next
    gap's start; the partial runs before the first and after the last gap are not counted) and of the gaps."""
    gap_starts, gap_ends = np.asarray(gap_starts, float), np.asarray(gap_ends, float)
    return gap_starts[1:] - gap_ends[:-1], gap_ends - gap_starts


def quantiles(values: np.ndarray, n: int = 200) -> np.ndarray:
    """`n` quantiles at the midpoints (k + ½)/n of the finite values: an empirical sample of their distribution."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise ValueError("no finite values to take quantiles of")
    return np.quantile(values, (np.arange(n) + 0.5) / n)


def idle_at_arrival(server: np.ndarray, recv: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per task: was its server idle when it was received — every earlier-received task of that server ended
    (finite `end`) before this one's `recv`? A server's first task counts as idle. Any order; one clock."""
    server, recv, end = np.asarray(server), np.asarray(recv, float), np.asarray(end, float)
    out = np.zeros(len(recv), bool)
    for s in np.unique(server):
        rows = np.flatnonzero(server == s)
        rows = rows[np.argsort(recv[rows], kind="stable")]
        finished = np.fmax.accumulate(np.where(np.isfinite(end[rows]), end[rows], -np.inf))
        out[rows[0]] = True
        out[rows[1:]] = recv[rows[1:]] > finished[:-1]
    return out


def overlaps(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per task: how many other tasks were computing (any server) at the middle of its pass [start, end), from
    stamps on one clock; -1 where a stamp is missing."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    ok = np.isfinite(start) & np.isfinite(end)
    mid = (start + end) / 2
    s, e = np.sort(start[ok]), np.sort(end[ok])
    count = np.full(len(start), -1)
    count[ok] = np.searchsorted(s, mid[ok]) - np.searchsorted(e, mid[ok]) - 1
    return count
