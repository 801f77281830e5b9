"""A network's forward pass as serving shows it: the served-pass profile (no torch; measured by
`calibration.measure.measure_served_passes`).

An isolated profile times a network's pass back to back in one process, caches warm. A server under real traffic
runs the same pass after idling, after other servers or the dispatcher used its core, with its socket's I/O
thread beside it: the pass comes out longer and with a heavier tail, by an amount that depends on the network
(its weights' footprint against the caches, its layers), not on its isolated time alone. So the served profile
is measured per network: real server processes holding the scenario's own networks serve Poisson traffic at
a few core utilizations, and the passes that ran with no other server computing beside them (co-running and
time slicing are the simulator's own) are kept, per network and level, as an empirical sample.

`samples_at(u)` gives a network's served passes at core utilization u: quantile by quantile, linear between the
two measured levels around u, held at the ends.

The same traffic's one-way delays are kept beside the passes (out: tasks that reached an idle server; back:
every answered task): how late a frontend and servers that compete for the cores answer depends on what the
servers compute, so they are measured on the scenario's own networks too.

A pass also runs longer after its server sat idle, and longer still when other servers computed meanwhile: the core
may have idled or been clocked down, and their weights and activations evict its own from the caches. In a testbed
run of the heavy CNN, lone passes after 32-64 ms idle take 2.65 ms at the median when the other servers computed 2-8
ms meanwhile and 3.20 ms when they computed 32-64 ms; after more than 64 ms idle, 2.96 and 4.0 ms (after 4-16 ms
idle with 2-8 ms of the others' work, 2.50 ms). How long a server idles and how much the others compute meanwhile
depends on how traffic is spread over the servers (an expert's server idles a few ms, a coded server that only takes
hedges idles while the experts work for tens), not on the machine's utilization alone, so the profile keeps it
apart: its wake is the sum of two curves fitted together on the same lone passes (`wake_two`), one read at the idle
time, one at the others' busy time during it, each the median pass over a range less that of a server that went
straight on; each level's samples are the passes with their own extra taken off. The simulator adds both back at the
idle time and the others' busy time each simulated task's server saw (`service.wake`). The profile sends each
server, a third of the time, a twentieth of the traffic, so that long gaps with the others busy are measured too.

On disk (a result folder's ``served_profile.csv``): one row per (network, level, quantile) with the columns
model, utilization, rate_per_ms, n_lone, ms (the pass), served_mean_ms (the mean pass as it ran, wake included) and
out_ms, back_ms (the delays); the wake's two curves in
the columns wake_idle_ms, wake_idle_extra_ms, wake_busy_ms (the others' busy time), wake_busy_extra_ms of a
network's first rows (empty in the others); the one-way delays by how many other servers were computing when the
message left (all levels pooled) in the columns out_ms_busy_0, out_ms_busy_1, ... and back_ms_busy_0, ... of the
network's first rows, as many quantiles as a level has; in the column joined_share of its first row, the chance
that a server starting on a free core holds a computing one off its core until its own pass is done (`joined_share`,
all levels pooled); and in the columns before_output_ms, after_output_ms of its first row, the server's own work per
task beside the pass in this traffic, levels pooled: the mean from the pass's end to the output's send, and from the
send to the next task's start where the server went straight on (`next_start`). A served output is not delayed by
the second part; the server's next task is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from calibration.analysis import quantiles

COLUMNS = ("model", "utilization", "rate_per_ms", "n_lone", "ms")
DELAY_COLUMNS = ("out_ms", "back_ms")
WAKE_COLUMNS = ("wake_idle_ms", "wake_idle_extra_ms", "wake_busy_ms", "wake_busy_extra_ms")
WAKE_EDGES_MS = (0.05, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)  # idle-gap ranges of the curve
WAKE_LEAST = 20  # passes a range needs to give a point of the curve
BUSY_PREFIXES = {"out_by_busy_ms": "out_ms_busy_", "back_by_busy_ms": "back_ms_busy_"}  # served_profile.csv:
# the delay tables with k other servers computing, one column per k
JOINED_COLUMN = "joined_share"  # served_profile.csv: ServedPasses.joined_share, in a network's first row
BESIDE_COLUMNS = ("before_output_ms", "after_output_ms")  # served_profile.csv: ServedPasses' work beside the pass,
# in a network's first row
PASS_CORR_COLUMNS = ("pass_corr_idle_ms", "pass_corr_rho")  # served_profile.csv: ServedPasses.pass_correlation,
# in a network's first rows
PASS_CORR_IDLE_MS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # idle-time ranges the pairs of consecutive passes fall in
PASS_CORR_LEAST = 100  # pairs a range needs for its correlation (fewer: 0, independent draws)
BESIDE_LEAST = 20  # tasks a server went straight on from that the work after an output needs
BUSY_LEAST = 100  # deliveries a count of busy others needs for a table of its own (the last one holds beyond)


def computing_at(server: np.ndarray, start: np.ndarray, end: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Per task: how many *other* servers were computing (inside a pass [start, end) of theirs) at its time `at`
    (one clock; a task whose `at` is not finite gets 0)."""
    server, start, end, at = (np.asarray(a) for a in (server, start, end, at))
    ok = np.isfinite(start) & np.isfinite(end)
    count = np.zeros(len(at), np.int64)
    when = np.where(np.isfinite(at), at, -np.inf)
    for s in np.unique(server):
        mine = ok & (server == s)
        begun, ended = np.sort(start[mine]), np.sort(end[mine])
        active = np.searchsorted(begun, when, "right") - np.searchsorted(ended, when, "right")
        count += np.where(server != s, active, 0)
    return count


def delays_by_busy(others: np.ndarray, delay_ms: np.ndarray, n: int, least: int = BUSY_LEAST,
                   ) -> tuple[tuple[float, ...], ...]:
    """`n` quantiles of the delays `delay_ms` per count of other servers computing (`others`): k = 0, 1, ... while
    the next count still has at least `least` finite delays; the last table pools its count with every larger one
    (the simulator holds it for more). Empty when count 0 alone has too few."""
    others, delay = np.asarray(others), np.asarray(delay_ms, float)
    ok = np.isfinite(delay) & (delay > 0)
    others, delay = others[ok], delay[ok]
    tables: list[tuple[float, ...]] = []
    k = 0
    while np.count_nonzero(others == k) >= least:
        if np.count_nonzero(others == k + 1) < least:
            tables.append(tuple(quantiles(delay[others >= k], n).round(5)))
            break
        tables.append(tuple(quantiles(delay[others == k], n).round(5)))
        k += 1
    return tuple(tables)


JOINED_LEAST = 100  # joined passes a served profile needs for the chance that a start holds a server off its core


def next_start(server: np.ndarray, recv: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per task of one clock (its server's receipt `recv`, its start, its `end` when the server sent its output):
    when its server started the next task, where that task had been received by then — the server went straight
    on, so the time between is the server's own work after the output left, not waiting for work; NaN where the
    server went idle (or the task never started)."""
    server, recv, start, end = (np.asarray(a) for a in (server, recv, start, end))
    out = np.full(len(start), np.nan)
    for s in np.unique(server):
        rows = np.flatnonzero((server == s) & np.isfinite(start))
        rows = rows[np.argsort(start[rows], kind="stable")]
        went_on = recv[rows[1:]] <= end[rows[:-1]]
        out[rows[:-1][went_on]] = start[rows[1:]][went_on]
    return out


def consecutive_pairs(server: np.ndarray, start: np.ndarray, end: np.ndarray, ms: np.ndarray,
                      edges_ms: tuple[float, ...] = PASS_CORR_IDLE_MS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair of one server's consecutive passes of one clock (`start`; `end`: when the server sent the output;
    `ms`: the pass): (the first's normal score, the second's, the server's idle time between them — from the
    first's output to the second's start). A pass's score is the normal quantile of its rank among the passes
    given (their own network's: pass one network's tasks at a time) that followed an idle time in the same range
    of `edges_ms` (mid-ranks for ties): a pass after a long idle time is slower for it (the wake, which the
    simulator adds by the idle time), and ranked among all passes two such passes would look alike for that
    reason alone."""
    from scipy.stats import norm, rankdata

    server, start, end, ms = (np.asarray(a) for a in (server, start, end, ms))
    ok = np.isfinite(start) & np.isfinite(end) & np.isfinite(ms)
    before = np.full(len(ms), np.inf)  # each pass's idle time before it (a server's first pass: the last range)
    order = []
    for s in np.unique(server[ok]):
        rows = np.flatnonzero(ok & (server == s))
        rows = rows[np.argsort(start[rows], kind="stable")]
        order.append(rows)
        before[rows[1:]] = start[rows[1:]] - end[rows[:-1]]
    stratum = np.searchsorted(np.asarray(edges_ms, float), before, side="left")
    score = np.full(len(ms), np.nan)
    for k in np.unique(stratum[ok]):
        rows = np.flatnonzero(ok & (stratum == k))
        score[rows] = norm.ppf((rankdata(ms[rows]) - 0.5) / len(rows))
    first, second, idle = [], [], []
    for rows in order:
        first.append(score[rows[:-1]])
        second.append(score[rows[1:]])
        idle.append(before[rows[1:]])
    if not first:
        return np.empty(0), np.empty(0), np.empty(0)
    return np.concatenate(first), np.concatenate(second), np.concatenate(idle)


def pass_correlation(first: np.ndarray, second: np.ndarray, idle_ms: np.ndarray,
                     edges_ms: tuple[float, ...] = PASS_CORR_IDLE_MS, least: int = PASS_CORR_LEAST
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`service.pass_correlation` from pairs of consecutive passes (`consecutive_pairs`): per idle-time range (up to
    each edge, above the one before), the correlation of the pairs' scores, 0 where fewer than `least` pairs fall
    (or where it comes out negative: a server does not take turns being fast and slow), clipped below 0.95."""
    first, second, idle_ms = (np.asarray(a, float) for a in (first, second, idle_ms))
    rho = []
    lower = -np.inf
    for edge in edges_ms:
        pick = (idle_ms > lower) & (idle_ms <= edge)
        lower = edge
        if pick.sum() < least:
            rho.append(0.0)
            continue
        r = float(np.corrcoef(first[pick], second[pick])[0, 1])
        rho.append(round(min(max(r, 0.0), 0.95), 4) if np.isfinite(r) else 0.0)
    return tuple(float(e) for e in edges_ms), tuple(rho)


def joined_passes(server: np.ndarray, start: np.ndarray, end: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pass [start, end) of one clock: (alone, joined, joiner) — alone: no other server computed at any time
    during it; joined: no other server computed when it began, another began computing during it, and at most
    one other computed at any time (on two or more cores, every such start found a core free); joiner: for a
    joined pass, the index of the first other pass that began during it (-1 for the rest)."""
    server, start, end = np.asarray(server), np.asarray(start, float), np.asarray(end, float)
    ok = np.isfinite(start) & np.isfinite(end)
    alone, joined = np.zeros(len(start), bool), np.zeros(len(start), bool)
    joiner = np.full(len(start), -1, np.int64)
    clear = ok & (computing_at(server, start, end, np.where(ok, start, np.nan)) == 0)  # nobody else at its start
    rows = np.flatnonzero(ok)
    rows = rows[np.argsort(start[rows], kind="stable")]
    s, e, srv = start[rows], end[rows], server[rows]
    last = np.searchsorted(s, e, "left")  # passes begun before each one ended
    for k in np.flatnonzero(clear[rows]):
        inside = np.arange(k + 1, last[k])
        inside = inside[srv[inside] != srv[k]]
        if not inside.size:
            alone[rows[k]] = True
        elif np.all(s[inside[1:]] >= e[inside[:-1]]):  # at most one other at a time: each start inside comes
            joined[rows[k]] = True  # after the previous one inside ended
            joiner[rows[k]] = rows[inside[0]]
    return alone, joined, joiner


def joined_share(alone_ms: np.ndarray, joined_ms: np.ndarray, joiner_ms: np.ndarray) -> float:
    """The chance that a server starting on a free core holds a computing one off its core until its own pass is
    done (`service.joined_share`), by the means: what joined passes take beyond the lone passes weighted by their
    length (a longer pass is joined more often, in proportion to its length under Poisson starts), over the
    joiners' mean pass; within [0, 1]."""
    alone, joined, joiner = (np.asarray(a, float) for a in (alone_ms, joined_ms, joiner_ms))
    biased = float(np.sum(alone ** 2) / np.sum(alone))
    return float(np.clip((joined.mean() - biased) / joiner.mean(), 0.0, 1.0))


def isotonic(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of `values` (pooled adjacent violators: each violating run
    replaced by its weighted mean; unit weights when none are given)."""
    values = np.asarray(values, float)
    weights = np.ones(len(values)) if weights is None else np.asarray(weights, float)
    blocks: list[list[float]] = []  # [weighted sum, weight, count]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([value * weight, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, w, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += w
            blocks[-1][2] += n
    return np.concatenate([np.full(int(n), total / w) for total, w, n in blocks]) if blocks else values


def others_busy_before(server: np.ndarray, start: np.ndarray, end: np.ndarray,
                       gap: np.ndarray | None = None) -> np.ndarray:
    """Per task: the busy time (ms, summed over servers) of every other server's passes [start, end) while its
    own server sat idle before it (from the latest end of its earlier tasks to its start: `gap`, else
    `idle_before` of these stamps); NaN for a server's first task and where a stamp is missing. One clock."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    ok = np.isfinite(start) & np.isfinite(end)
    s, e = np.sort(start[ok]), np.sort(end[ok])
    cs, ce = np.concatenate([[0.0], np.cumsum(s)]), np.concatenate([[0.0], np.cumsum(e)])

    def busy_until(t: np.ndarray) -> np.ndarray:  # every pass's time before t
        k, j = np.searchsorted(s, t), np.searchsorted(e, t)
        return (k * t - cs[k]) - (j * t - ce[j])

    gap = idle_before(server, start, end) if gap is None else np.asarray(gap, float)
    out = np.full(len(start), np.nan)
    has = np.isfinite(gap)
    out[has] = busy_until(start[has]) - busy_until(start[has] - gap[has])
    return np.maximum(out, 0.0)


def idle_before(server: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per task: how long its server sat idle before it started (its start less the latest end of the server's
    earlier-started tasks, at least 0); NaN for a server's first task and where a stamp is missing. One clock."""
    server, start, end = np.asarray(server), np.asarray(start, float), np.asarray(end, float)
    out = np.full(len(start), np.nan)
    for s in np.unique(server):
        rows = np.flatnonzero((server == s) & np.isfinite(start))
        rows = rows[np.argsort(start[rows], kind="stable")]
        if len(rows) < 2:
            continue
        ended = np.fmax.accumulate(np.where(np.isfinite(end[rows]), end[rows], -np.inf))[:-1]
        gap = start[rows[1:]] - ended
        out[rows[1:]] = np.where(np.isfinite(gap), np.maximum(gap, 0.0), np.nan)
    return out


def wake_from(idle_ms: np.ndarray, pass_ms: np.ndarray, edges: tuple[float, ...] = WAKE_EDGES_MS,
              least: int = WAKE_LEAST) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The wake curve of passes that followed idle gaps `idle_ms`: for every idle range (cut at `edges`) holding
    at least `least` passes, its median gap and its median pass less that of the first such range (a server that
    went straight on, or slept least); made non-decreasing (pooled adjacent violators: a longer sleep does not
    make a pass faster, what says otherwise is noise) and at least 0. Empty when fewer than two ranges qualify."""
    idle, passes = np.asarray(idle_ms, float), np.asarray(pass_ms, float)
    ok = np.isfinite(idle) & np.isfinite(passes)
    idle, passes = idle[ok], passes[ok]
    which = np.searchsorted(np.asarray(edges, float), idle, side="left")
    gaps, medians, counts = [], [], []
    for k in np.unique(which):
        mine = which == k
        if mine.sum() >= least:
            gaps.append(float(np.median(idle[mine])))
            medians.append(float(np.median(passes[mine])))
            counts.append(int(mine.sum()))
    if len(gaps) < 2:
        return (), ()
    fitted = isotonic(np.asarray(medians) - medians[0], np.asarray(counts, float))
    idle_points = np.maximum.accumulate(np.asarray(gaps))  # medians of ordered ranges increase; kept strict below
    keep = np.concatenate([[True], np.diff(idle_points) > 0])
    return (tuple(np.round(idle_points[keep], 5).tolist()),
            tuple(np.round(np.clip(fitted[keep], 0.0, None), 5).tolist()))


Curve = tuple[tuple[float, ...], tuple[float, ...]]


def wake_two(idle_ms: np.ndarray, busy_ms: np.ndarray, pass_ms: np.ndarray, rounds: int = 4) -> tuple[Curve, Curve]:
    """Both parts of the wake from the same passes: extra = f(idle time) + g(the others' busy time meanwhile),
    each a `wake_from` curve fitted to the passes less the other part (backfitting, `rounds` times, g first
    taken as 0). Either empty when its variable gives fewer than two ranges; then both are."""
    idle, busy, passes = (np.asarray(a, float) for a in (idle_ms, busy_ms, pass_ms))
    g: Curve = ((), ())
    f: Curve = ((), ())
    for _ in range(rounds):
        f = wake_from(idle, passes - wake_extra(g, busy))
        g = wake_from(busy, passes - wake_extra(f, idle))
    if not f[0] or not g[0]:
        return ((), ()), ((), ())
    return f, g


def wake_extra(curve: tuple[tuple[float, ...], tuple[float, ...]], idle_ms: np.ndarray) -> np.ndarray:
    """The curve's extra pass (ms) after idle gaps `idle_ms` (0 before its first point and for a missing gap,
    linear between points, the last value beyond them): the simulator's `service.wake` reading."""
    idle = np.asarray(idle_ms, float)
    points, extra = curve
    if not points:
        return np.zeros(len(idle))
    out = np.interp(np.where(np.isfinite(idle), idle, 0.0), (0.0, *points), (0.0, *extra))
    return np.where(np.isfinite(idle), out, 0.0)


class ServedLevel(BaseModel):
    """One network's lone passes under traffic that kept `utilization` of the cores computing."""

    model_config = ConfigDict(frozen=True)

    utilization: float = Field(ge=0.0)
    rate_per_ms: float = Field(gt=0.0)
    n_lone: int = Field(ge=1)
    samples_ms: tuple[float, ...] = Field(min_length=1)  # quantiles at (k + ½)/n, increasing
    # one-way delays of the same traffic, as many quantiles (out: tasks that reached an idle server; back: every
    # answered task); empty when not measured
    out_ms: tuple[float, ...] = ()
    back_ms: tuple[float, ...] = ()
    # the mean of the level's lone passes as they ran, wake included (the samples have it taken off); what a pass
    # costs a server at this level, read for the served capacity. None: an older profile (the samples' mean)
    served_mean_ms: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)

    @field_validator("samples_ms", "out_ms", "back_ms")
    @classmethod
    def _finite_positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        a = np.asarray(value, float)
        if not np.all(np.isfinite(a) & (a > 0)):
            raise ValueError("served passes and delays must be finite and > 0 ms")
        return tuple(np.sort(a).tolist())

    @model_validator(mode="after")
    def _delays_alike(self) -> ServedLevel:
        if len(self.out_ms) != len(self.back_ms) or (self.out_ms and len(self.out_ms) != len(self.samples_ms)):
            raise ValueError("a level's out and back delays hold as many quantiles as its passes, or none")
        return self


class ServedPasses(BaseModel):
    """A network's served-pass profile: its levels in increasing utilization, and the wake curve (extra pass ms by
    the other servers' busy ms while its server sat idle; the levels' samples have it taken off). Empty curve: not
    measured (an older profile)."""

    model_config = ConfigDict(frozen=True)

    levels: tuple[ServedLevel, ...] = Field(min_length=1)
    wake_idle_ms: tuple[float, ...] = ()  # the idle-time curve: idle ms -> extra pass ms
    wake_idle_extra_ms: tuple[float, ...] = ()
    wake_busy_ms: tuple[float, ...] = ()  # the others' busy time curve: their busy ms -> extra pass ms
    wake_busy_extra_ms: tuple[float, ...] = ()
    # the network's isolated median pass on this machine when the profile was measured: a cached profile is
    # stale once the machine runs the network's isolated pass differently (None: not recorded, an older profile)
    isolated_p50_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # the one-way delays by how many other servers were computing when the message left (entry k: k others, the
    # last pooling it with more), all levels pooled, as many quantiles as a level; empty: not measured. out: to
    # an idle server, counted when the task was due; back: every answered task, counted when it ended
    out_by_busy_ms: tuple[tuple[float, ...], ...] = ()
    back_by_busy_ms: tuple[tuple[float, ...], ...] = ()
    # the chance that a server starting on a free core holds a computing one off its core until its pass is done
    # (`joined_share`), levels pooled; None: not measured
    joined_share: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    # the server's own work per task beside the pass, in this traffic, levels pooled: before the output left
    # (from the pass's end to the output's send, every task) and after (from the send to the next task's start,
    # where the server went straight on); None: not measured (the calibration's busy-server cycle stands in)
    before_output_ms: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    after_output_ms: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    # how a server's consecutive passes move together in this traffic (`service.pass_correlation`), levels pooled:
    # the correlation of their scores per idle-time range (up to each edge); empty: not measured
    pass_corr_idle_ms: tuple[float, ...] = ()
    pass_corr_rho: tuple[float, ...] = ()

    @field_validator("out_by_busy_ms", "back_by_busy_ms")
    @classmethod
    def _busy_tables(cls, value: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
        tables = []
        for table in value:
            a = np.asarray(table, float)
            if len(a) == 0 or not np.all(np.isfinite(a) & (a > 0)):
                raise ValueError("a delay table by busy servers holds finite delays > 0 ms")
            tables.append(tuple(np.sort(a).tolist()))
        return tuple(tables)

    @model_validator(mode="after")
    def _wake(self) -> ServedPasses:
        for x, y in ((self.wake_idle_ms, self.wake_idle_extra_ms), (self.wake_busy_ms, self.wake_busy_extra_ms)):
            at, extra = np.asarray(x, float), np.asarray(y, float)
            if len(at) != len(extra):
                raise ValueError("a wake curve holds as many points as extra passes")
            if not (np.all(np.isfinite(at)) and np.all(np.isfinite(extra)) and np.all(at >= 0)
                    and np.all(extra >= 0) and np.all(np.diff(at) > 0)):
                raise ValueError("a wake curve's points increase from 0 and its extra passes are finite and >= 0 ms")
        if bool(self.wake_idle_ms) != bool(self.wake_busy_ms):
            raise ValueError("a wake curve comes with both parts (idle time and the others' busy time) or none")
        if any(len(table) != len(self.levels[0].samples_ms) for table in self.out_by_busy_ms + self.back_by_busy_ms):
            raise ValueError("a delay table by busy servers holds as many quantiles as a level")
        if (self.before_output_ms is None) != (self.after_output_ms is None):
            raise ValueError("the work beside the pass comes in both parts (before and after the output left) or none")
        edges, rho = np.asarray(self.pass_corr_idle_ms, float), np.asarray(self.pass_corr_rho, float)
        if len(edges) != len(rho):
            raise ValueError("the passes' correlation holds one value per idle-time edge")
        if not (np.all(np.isfinite(edges) & (edges > 0)) and np.all(np.diff(edges) > 0)
                and np.all(np.isfinite(rho) & (np.abs(rho) < 1))):
            raise ValueError("the passes' correlation: idle-time edges increase from above 0 ms, values within (-1, 1)")
        return self

    @property
    def pass_correlation(self) -> dict[str, list[float]] | None:
        """The simulator's `service.pass_correlation` table, or None when not measured."""
        if not self.pass_corr_idle_ms:
            return None
        return {"idle_ms": list(self.pass_corr_idle_ms), "rho": list(self.pass_corr_rho)}

    @property
    def wake(self) -> dict[str, Any] | None:
        """The simulator's `service.wake` table (both parts), or None without a curve."""
        if not self.wake_idle_ms:
            return None
        return {"idle_ms": list(self.wake_idle_ms), "extra_ms": list(self.wake_idle_extra_ms),
                "others_busy_ms": list(self.wake_busy_ms), "others_extra_ms": list(self.wake_busy_extra_ms)}

    @field_validator("levels")
    @classmethod
    def _ordered(cls, value: tuple[ServedLevel, ...]) -> tuple[ServedLevel, ...]:
        if len({len(level.samples_ms) for level in value}) != 1:
            raise ValueError("every level of a served profile holds the same number of quantiles")
        return tuple(sorted(value, key=lambda level: level.utilization))

    @property
    def busiest_mean_ms(self) -> float:
        """The mean pass at the busiest measured level as it ran (wake included): the served cost the capacity
        is read at."""
        level = self.levels[-1]
        return float(level.served_mean_ms if level.served_mean_ms is not None else np.mean(level.samples_ms))

    def samples_at(self, utilization: float) -> np.ndarray:
        """Served passes (ms) at this core utilization: the quantiles linear between the measured levels around it,
        the nearest level's outside them."""
        return self._at(utilization, "samples_ms")

    @property
    def has_delays(self) -> bool:
        return all(level.out_ms for level in self.levels)

    def delays_at(self, utilization: float) -> tuple[np.ndarray, np.ndarray]:
        """(out, back) one-way delays (ms) of this network's traffic at this core utilization, interpolated as
        `samples_at`; ValueError when they were not measured."""
        if not self.has_delays:
            raise ValueError("this served profile has no delays")
        return self._at(utilization, "out_ms"), self._at(utilization, "back_ms")

    def _at(self, utilization: float, field: str) -> np.ndarray:
        levels = self.levels
        us = [level.utilization for level in levels]
        if len(levels) == 1 or utilization <= us[0]:
            return np.asarray(getattr(levels[0], field), float)
        if utilization >= us[-1]:
            return np.asarray(getattr(levels[-1], field), float)
        k = int(np.searchsorted(us, utilization)) - 1
        w = (utilization - us[k]) / max(us[k + 1] - us[k], 1e-12)
        return (1 - w) * np.asarray(getattr(levels[k], field), float) + w * np.asarray(getattr(levels[k + 1], field),
                                                                                      float)


def to_frame(profile: dict[str, ServedPasses]) -> pd.DataFrame:
    """The served profile as ``served_profile.csv`` stores it."""
    frames = []
    for name, passes in profile.items():
        for level in passes.levels:
            frame = pd.DataFrame({"model": name, "utilization": level.utilization, "rate_per_ms": level.rate_per_ms,
                                  "n_lone": level.n_lone, "ms": level.samples_ms})
            if level.served_mean_ms is not None:
                frame["served_mean_ms"] = level.served_mean_ms
            if passes.has_delays:
                frame["out_ms"], frame["back_ms"] = level.out_ms, level.back_ms
            if passes.isolated_p50_ms is not None:
                frame["isolated_p50_ms"] = passes.isolated_p50_ms
            blank = [np.nan] * len(frame)
            first = level is passes.levels[0]
            if passes.wake_idle_ms:
                for column in WAKE_COLUMNS:
                    frame[column] = (list(getattr(passes, column)) + blank)[: len(frame)] if first else blank
            for field, prefix in BUSY_PREFIXES.items():
                for k, table in enumerate(getattr(passes, field)):
                    frame[f"{prefix}{k}"] = list(table) if first else blank
            if passes.joined_share is not None:
                frame[JOINED_COLUMN] = [passes.joined_share] + blank[1:] if first else blank
            if passes.before_output_ms is not None:
                for column in BESIDE_COLUMNS:
                    frame[column] = [getattr(passes, column)] + blank[1:] if first else blank
            if passes.pass_corr_idle_ms:
                for column in PASS_CORR_COLUMNS:
                    frame[column] = (list(getattr(passes, column)) + blank)[: len(frame)] if first else blank
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))


def from_frame(table: pd.DataFrame) -> dict[str, ServedPasses]:
    """The served profile from its table (ValueError naming what is wrong when it is not one)."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"needs the columns {', '.join(COLUMNS)} (missing {', '.join(missing)})")
    out: dict[str, ServedPasses] = {}
    for name, rows in table.groupby(table["model"].astype(str), sort=False):
        levels = []
        for (u, rate, n), level in rows.groupby(["utilization", "rate_per_ms", "n_lone"], sort=True):
            delays = {c: tuple(pd.to_numeric(level[c], errors="coerce").astype(float))
                      for c in DELAY_COLUMNS if c in level.columns}
            mean = pd.to_numeric(level["served_mean_ms"], errors="coerce").iloc[0] \
                if "served_mean_ms" in level.columns else None
            levels.append(ServedLevel(utilization=float(u), rate_per_ms=float(rate), n_lone=int(n),
                                      samples_ms=tuple(pd.to_numeric(level["ms"], errors="coerce").astype(float)),
                                      served_mean_ms=None if mean is None or pd.isna(mean) else float(mean),
                                      **delays))
        wake: dict[str, tuple[float, ...]] = {}
        if all(c in rows.columns for c in WAKE_COLUMNS):
            for at, extra in (WAKE_COLUMNS[:2], WAKE_COLUMNS[2:]):
                points = rows[[at, extra]].apply(pd.to_numeric, errors="coerce")
                points = points[points[at].notna() | points[extra].notna()]
                wake |= {c: tuple(points[c].astype(float)) for c in (at, extra)}
        isolated = pd.to_numeric(rows["isolated_p50_ms"], errors="coerce").iloc[0] \
            if "isolated_p50_ms" in rows.columns else np.nan
        busy = {field: busy_tables(rows, prefix) for field, prefix in BUSY_PREFIXES.items()}
        joined = pd.to_numeric(rows[JOINED_COLUMN], errors="coerce").dropna() if JOINED_COLUMN in rows.columns \
            else pd.Series(dtype=float)
        beside = {}
        for column in BESIDE_COLUMNS:
            value = pd.to_numeric(rows[column], errors="coerce").dropna() if column in rows.columns else ()
            beside[column] = float(value.iloc[0]) if len(value) else None
        corr: dict[str, tuple[float, ...]] = {}
        if all(c in rows.columns for c in PASS_CORR_COLUMNS):
            points = rows[list(PASS_CORR_COLUMNS)].apply(pd.to_numeric, errors="coerce").dropna(how="all")
            corr = {c: tuple(points[c].astype(float)) for c in PASS_CORR_COLUMNS}
        out[str(name)] = ServedPasses(levels=tuple(levels), **wake, **busy, **beside, **corr,
                                      joined_share=float(joined.iloc[0]) if len(joined) else None,
                                      isolated_p50_ms=None if pd.isna(isolated) else float(isolated))
    return out


def busy_tables(rows: pd.DataFrame, prefix: str) -> tuple[tuple[float, ...], ...]:
    """A network's delay tables by busy servers from its rows of the served profile: columns prefix0, prefix1, ...
    as long as they exist and hold values for it."""
    tables: list[tuple[float, ...]] = []
    while f"{prefix}{len(tables)}" in rows.columns:
        table = pd.to_numeric(rows[f"{prefix}{len(tables)}"], errors="coerce").dropna()
        if table.empty:  # another network's table, not this one's
            break
        tables.append(tuple(table.astype(float)))
    return tuple(tables)


def read_served_profile(path: Path) -> dict[str, ServedPasses]:
    """``served_profile.csv`` (ValueError / OSError when it cannot be read or is not one)."""
    return from_frame(pd.read_csv(path))
