"""Common random numbers: everything random is drawn up front (or lazily, per server) from one seed.

Each purpose (arrivals, model split, sample ids, service of server s, stragglers of server s, ...) gets its
own stream `SeedSequence(seed, spawn_key=(purpose, s))`, so every policy sees the same arrivals and the same
per-(query, server) service and straggler draws, and changing one knob (say p) leaves the other streams
untouched. Stragglers are drawn by a uniform u < p, so raising p only adds stragglers (monotone coupling
along a sweep).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sim.config import SimConfig
from sim.errors import SimConfigError
from sim.seeds import streams

(ARRIVALS, KIND, SPLIT, HOT, SAMPLES, SERVICE, STRAG_U, STRAG_MAG, EPISODES, FAILURES, NET_OUT, NET_BACK,
 BALANCE, DISPATCH_CORE, JOINED, TASKS) = range(16)
_CHUNK = 65_536


def stream(seed: int, purpose: int, index: int = 0, *more: int) -> np.random.Generator:
    """The independent generator for one purpose (and server index, or slot and block), spawned from the run
    seed."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(purpose, index, *more))))


@dataclass
class Draws:
    """Per-query draws shared by all policies. model == -1 marks an ensemble query."""

    seed: int
    arrival_ms: np.ndarray
    model: np.ndarray
    sample_id: np.ndarray
    service_u: np.ndarray | None  # (n, servers) uniforms, mapped through each server's service quantile function
    task_factor: np.ndarray | None  # (n, N + r) per-task straggler slowdown (1.0 = no straggle)
    # (both None under per-task draws, sim.draws = "task": sim/tasks.py draws each task's when it runs)
    net_out_u: np.ndarray | None = None  # (n, N + r) uniforms for the dispatcher → server delay
    net_back_u: np.ndarray | None = None  # (n, N + r) uniforms for the server → dispatcher delay
    balance_u: np.ndarray | None = None  # (n, d) uniforms: the instances a power-of-d balancer draws per query

    @property
    def n(self) -> int:
        return len(self.arrival_ms)


class Timeline:
    """Alternating two-state path (state 0 first, durations Exp(mean0) / Exp(mean1)), drawn lazily.

    Durations are drawn in fixed chunks, so the path does not depend on how far it was queried: the same
    server has the same slow episodes / failures under every policy.
    """

    __slots__ = ("rng", "mean0", "mean1", "switch")

    def __init__(self, rng: np.random.Generator, mean0: float, mean1: float) -> None:
        self.rng, self.mean0, self.mean1 = rng, mean0, mean1
        self.switch: list[float] = [0.0]
        self._extend_once()

    def _extend_once(self) -> None:
        d = self.rng.standard_exponential(256)
        d[0::2] *= self.mean0
        d[1::2] *= self.mean1
        self.switch.extend((self.switch[-1] + np.cumsum(d)).tolist())

    def state_at(self, t: float) -> int:
        """0 or 1 at time t (intervals are [switch_k, switch_k+1), state 0 on [0, switch_1))."""
        while self.switch[-1] <= t:
            self._extend_once()
        return (bisect.bisect_right(self.switch, t) - 1) & 1

    def switch_after(self, k: int) -> float:
        while len(self.switch) <= k:
            self._extend_once()
        return self.switch[k]


def _poisson_times(rng: np.random.Generator, rate: float, n: int | None, horizon: float | None) -> np.ndarray:
    if rate <= 0:
        raise SimConfigError("sim config: traffic has zero total rate")
    if n is not None:
        return np.cumsum(rng.standard_exponential(n) / rate)
    parts, t = [], 0.0
    while t < horizon:  # type: ignore[operator]
        c = t + np.cumsum(rng.standard_exponential(_CHUNK) / rate)
        parts.append(c)
        t = float(c[-1])
    a = np.concatenate(parts)
    return a[a < horizon]


def _read_trace(cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    tr = cfg.traffic
    if tr.trace_times_ms is not None:
        return np.asarray(tr.trace_times_ms, float), np.asarray(tr.trace_models, np.int64)
    try:
        df = pd.read_csv(Path(tr.trace_csv).expanduser())  # a Path: pandas opens it locally, never as a URL
    except (OSError, ValueError) as e:
        raise SimConfigError(f"sim config: cannot read trace {tr.trace_csv}: {e}") from None
    if not {"timestamp_ms", "model"} <= set(df.columns):
        raise SimConfigError(f"sim config: trace {tr.trace_csv} needs columns timestamp_ms, model")
    t = pd.to_numeric(df["timestamp_ms"], errors="coerce").to_numpy(float)
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise SimConfigError(f"sim config: trace {tr.trace_csv}: timestamp_ms must be finite numbers >= 0")
    names = {str(i): i for i in range(cfg.n_experts)} | {"ensemble": -1, "-1": -1}
    if cfg.model_names:
        names |= {nm: i for i, nm in enumerate(cfg.model_names)}
    raw = df["model"].astype(str).str.strip()
    bad = sorted(set(raw) - set(names))
    if bad:
        raise SimConfigError(f"sim config: trace {tr.trace_csv}: unknown model(s) {bad[:5]}")
    m = raw.map(names).to_numpy(np.int64)
    order = np.argsort(t, kind="stable")
    return t[order], m[order]


def _split(cfg: SimConfig, seed: int, t: np.ndarray) -> np.ndarray:
    """Model index of each routed arrival at time t under the traffic split."""
    tr, n = cfg.traffic, cfg.n_experts
    u = stream(seed, SPLIT).random(len(t))
    if n == 1:
        return np.zeros(len(t), np.int64)
    if tr.kind == "poisson":
        cum = np.cumsum(tr.mean_shares(n))
        return np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), n - 1).astype(np.int64)
    if tr.kind == "markov_hot":
        rng = stream(seed, HOT)
        end = float(t[-1]) if len(t) else 0.0
        starts, hots = [0.0], [int(rng.integers(n))]
        while starts[-1] <= end:
            dw = rng.standard_exponential(1024) * tr.mean_dwell_ms
            jumps = rng.integers(1, n, size=1024)  # next hot = one of the other n-1 models, uniformly
            for d, j in zip(dw.tolist(), jumps.tolist(), strict=True):
                starts.append(starts[-1] + d)
                hots.append((hots[-1] + j) % n)
        hot = np.asarray(hots)[np.searchsorted(np.asarray(starts), t, side="right") - 1]
        sh = 1.0 / n + tr.strength * (1.0 - 1.0 / n)
        k = np.minimum(((u - sh) / max(1.0 - sh, 1e-300) * (n - 1)).astype(np.int64), n - 2)
        other = np.where(k >= hot, k + 1, k)
        return np.where(u < sh, hot, other).astype(np.int64)
    # smooth complementary split
    phase = 2 * np.pi * (t[:, None] / tr.period_ms - np.arange(n)[None, :] / n)
    share = (1.0 + tr.strength * np.cos(phase)) / n
    cum = np.cumsum(share, axis=1)
    return np.minimum((u[:, None] >= cum).sum(axis=1), n - 1).astype(np.int64)


def draw(cfg: SimConfig, seed: int) -> Draws:
    """All per-query random numbers for one run (identical for every policy)."""
    n_srv = cfg.n_servers
    tr = cfg.traffic
    if tr.kind == "trace":
        t, model = _read_trace(cfg)
        if cfg.horizon_ms is not None:
            keep = t < cfg.horizon_ms
            t, model = t[keep], model[keep]
        if cfg.n_queries is not None:
            t, model = t[: cfg.n_queries], model[: cfg.n_queries]
        if len(t) == 0:
            raise SimConfigError("sim config: the trace has no arrivals in the horizon")
        if (model < 0).any() and any(p.kind == "parity" for p in cfg.policies):
            raise SimConfigError("sim config: the trace has ensemble queries, for which the parity policy has no rule")
    else:
        lam_r, lam_e = tr.routed_rate(), tr.ensemble_rate_per_ms
        t = _poisson_times(stream(seed, ARRIVALS), lam_r + lam_e, cfg.n_queries, cfg.horizon_ms)
        if len(t) == 0:
            raise SimConfigError("sim config: no arrivals fall inside horizon_ms")
        model = _split(cfg, seed, t)
        if lam_e > 0:
            ens = stream(seed, KIND).random(len(t)) < lam_e / (lam_r + lam_e)
            model = np.where(ens, -1, model)
    nq = len(t)
    pools = tr.sample_pool if isinstance(tr.sample_pool, tuple) else (tr.sample_pool,) * cfg.n_experts
    pool = np.append(np.asarray(pools, np.float64), tr.ensemble_sample_pool)[model]  # index -1 = ensemble
    sample = np.minimum((stream(seed, SAMPLES).random(nq) * pool).astype(np.int64), pool.astype(np.int64) - 1)
    dep = cfg.deployment
    balance = stream(seed, BALANCE).random((nq, dep.d)) if dep.balancer == "power_of_d" else None
    if cfg.draws == "task":
        return Draws(seed, t, model, sample, None, None, None, None, balance)
    u = np.empty((nq, n_srv))
    fac = np.ones((nq, n_srv))
    st = cfg.stragglers
    for s, rng in streams(seed, SERVICE, range(n_srv)):  # each server's stream(seed, SERVICE, s), made in bulk
        u[:, s] = rng.random(nq)
    if st.p > 0:
        chosen = set(st.servers) if st.servers is not None else None
        hit_on = [s for s in range(n_srv) if chosen is None or s in chosen]
        for (s, hit_rng), (_, mag_rng) in zip(streams(seed, STRAG_U, hit_on), streams(seed, STRAG_MAG, hit_on),
                                              strict=True):
            hit = hit_rng.random(nq) < st.p
            v = mag_rng.random(nq)
            mag = np.full(nq, float(st.slowdown)) if isinstance(st.slowdown, float | int) else st.slowdown.ppf(v)
            fac[:, s] = np.where(hit, mag, 1.0)
    net_u = [None, None]
    for k, (purpose, dist) in enumerate(((NET_OUT, cfg.network.out), (NET_BACK, cfg.network.back))):
        if dist is not None:
            net_u[k] = np.column_stack([rng.random(nq) for _, rng in streams(seed, purpose, range(n_srv))])
    return Draws(seed, t, model, sample, u, fac, net_u[0], net_u[1], balance)
