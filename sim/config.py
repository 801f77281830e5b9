"""Validated, TOML-friendly simulation config (pydantic v2).

Every check runs at construction, so a bad scenario fails with one `SimConfigError` line before any event is
simulated. Times are milliseconds, rates are queries per millisecond.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from scipy.special import ndtri

from policies import RULES
from policies.codes import SPARE
from sim.errors import SimConfigError

DEFAULT_N_QUERIES = 100_000
DEFAULT_SAMPLE_POOL = 1_000_000_000
PARITY_OPTIONS = ("k", "group_timeout_ms", "partial")  # PolicySpec fields only the parity policy reads


def _one_line(err: ValidationError) -> tuple[str, str]:
    """First pydantic error as `where: what (got x)`; the rest counted, so the CLI prints one line."""
    errs = err.errors()
    e = errs[0]
    loc = ".".join(str(p) for p in e.get("loc", ()))
    msg = e.get("msg", "invalid value").removeprefix("Value error, ")
    inner = (e.get("ctx") or {}).get("error")
    if isinstance(inner, SimConfigError) and getattr(inner, "detail", None):
        # a nested _Model already condensed its own error: splice its location under ours
        sub_loc, msg = inner.loc, inner.detail  # type: ignore[attr-defined]
        loc = ".".join(x for x in (loc, sub_loc) if x)
        more = f" [+{len(errs) - 1} more]" if len(errs) > 1 else ""
        return loc, msg + more
    got = e.get("input")
    tail = ""
    if e.get("type") not in ("value_error", "assertion_error") and not isinstance(got, Mapping | list | dict):
        tail = f" (got {got!r})"
    more = f" [+{len(errs) - 1} more]" if len(errs) > 1 else ""
    return loc, f"{msg}{tail}{more}"


def _error(loc: str, detail: str) -> SimConfigError:
    err = SimConfigError(f"sim config: {loc + ': ' if loc else ''}{detail}")
    err.loc, err.detail = loc, detail  # type: ignore[attr-defined]
    return err


class _Model(BaseModel):
    """Base: forbid unknown keys (typos in TOML must not pass silently), refuse inf and nan in every number
    (a non-finite time or rate only turns into NaN latencies later), and raise SimConfigError."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _error(*_one_line(e)) from None


# ----------------------------------------------------------------------------------------- service times
class Deterministic(_Model):
    kind: Literal["deterministic"] = "deterministic"
    value_ms: float = Field(gt=0)

    def mean(self) -> float:
        return self.value_ms

    def second_moment(self) -> float:
        return self.value_ms**2

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return np.full(np.shape(u), self.value_ms)


class Exponential(_Model):
    kind: Literal["exponential"] = "exponential"
    mean_ms: float = Field(gt=0)

    def mean(self) -> float:
        return self.mean_ms

    def second_moment(self) -> float:
        return 2 * self.mean_ms**2

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return -self.mean_ms * np.log1p(-np.asarray(u))


class ShiftedExponential(_Model):
    """shift_ms + Exp(mean_ms): the usual model of a forward pass (fixed compute + random interference)."""

    kind: Literal["shifted_exponential"] = "shifted_exponential"
    shift_ms: float = Field(ge=0)
    mean_ms: float = Field(gt=0, description="mean of the exponential part")

    def mean(self) -> float:
        return self.shift_ms + self.mean_ms

    def second_moment(self) -> float:
        return self.mean_ms**2 + self.mean() ** 2

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return self.shift_ms - self.mean_ms * np.log1p(-np.asarray(u))


class LogNormal(_Model):
    """Lognormal given by its mean (ms) and the sigma of log-time, so the mean stays interpretable."""

    kind: Literal["lognormal"] = "lognormal"
    mean_ms: float = Field(gt=0)
    sigma: float = Field(ge=0)

    def _mu(self) -> float:
        return math.log(self.mean_ms) - self.sigma**2 / 2

    def mean(self) -> float:
        return self.mean_ms

    def second_moment(self) -> float:
        return math.exp(2 * self._mu() + 2 * self.sigma**2)

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return np.exp(self._mu() + self.sigma * ndtri(np.asarray(u)))


class Empirical(_Model):
    """Resampling of measured times (e.g. a forward-pass latency profile supplied by the runner)."""

    kind: Literal["empirical"] = "empirical"
    samples_ms: tuple[float, ...]

    @field_validator("samples_ms", mode="before")
    @classmethod
    def _as_tuple(cls, v: Any) -> Any:
        if isinstance(v, np.ndarray):
            v = v.ravel().tolist()
        if isinstance(v, Sequence) and not isinstance(v, str):
            if len(v) == 0:
                raise ValueError("samples_ms must not be empty")
            vals = [float(x) for x in v]
            if not all(math.isfinite(x) and x > 0 for x in vals):
                raise ValueError("samples_ms must be finite and > 0")
            return tuple(sorted(vals))
        return v

    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    def second_moment(self) -> float:
        return float(np.mean(np.square(self.samples_ms)))

    def ppf(self, u: np.ndarray) -> np.ndarray:
        arr = np.asarray(self.samples_ms)
        idx = np.minimum((np.asarray(u) * len(arr)).astype(np.int64), len(arr) - 1)
        return arr[idx]


ServiceDist = Annotated[
    Deterministic | Exponential | ShiftedExponential | LogNormal | Empirical, Field(discriminator="kind")
]


class Wake(_Model):
    """Extra compute (ms) of a task that starts on a server idle for `idle_ms` before it (see Service), plus, when
    `others_busy_ms` is given, `others_extra_ms` read at the busy time the other servers spent (summed over them)
    while this one sat idle — their work evicts its caches."""

    idle_ms: tuple[Annotated[float, Field(ge=0)], ...] = Field(min_length=1)
    extra_ms: tuple[Annotated[float, Field(ge=0)], ...] = Field(min_length=1)
    others_busy_ms: tuple[Annotated[float, Field(ge=0)], ...] = ()
    others_extra_ms: tuple[Annotated[float, Field(ge=0)], ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Wake:
        for x, y, name in ((self.idle_ms, self.extra_ms, "idle_ms"),
                           (self.others_busy_ms, self.others_extra_ms, "others_busy_ms")):
            if len(x) != len(y):
                raise ValueError(f"wake: {len(x)} {name} points but {len(y)} extra values")
            if any(b <= a for a, b in zip(x, x[1:], strict=False)):
                raise ValueError(f"wake.{name} must increase")
        return self

    def extra(self, idle_ms: float) -> float:
        """The extra compute after `idle_ms` of idleness (0 when the server went straight on)."""
        if idle_ms <= 0:
            return 0.0
        return float(np.interp(idle_ms, (0.0, *self.idle_ms), (0.0, *self.extra_ms)))

    def extra_others(self, busy_ms: float) -> float:
        """The extra compute after the other servers were busy `busy_ms` while this one sat idle."""
        if busy_ms <= 0 or not self.others_busy_ms:
            return 0.0
        return float(np.interp(busy_ms, (0.0, *self.others_busy_ms), (0.0, *self.others_extra_ms)))


class PassCorrelation(_Model):
    """How a server's consecutive passes move together: the normal score of a pass's rank in its distribution is
    rho x the previous pass's score on the same server + sqrt(1 - rho^2) x its own drawn score, rho read from the
    time the server sat idle between the two (from the previous output's leaving to this start): `rho[j]` for an
    idle time up to `idle_ms[j]` (and above the one before), 0 beyond the last. Each pass keeps its distribution
    (its score is still standard normal), only their order in time changes: a served process's slow passes come in
    runs (its core, caches and clock persist from one pass to the next), which builds queues independent draws never
    build. Measured in the served profile's traffic."""

    idle_ms: tuple[Annotated[float, Field(gt=0, allow_inf_nan=False)], ...] = Field(min_length=1)
    rho: tuple[Annotated[float, Field(gt=-1, lt=1, allow_inf_nan=False)], ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> PassCorrelation:
        if len(self.idle_ms) != len(self.rho):
            raise ValueError(f"pass_correlation: {len(self.idle_ms)} idle_ms edges but {len(self.rho)} rho values")
        if any(b <= a for a, b in zip(self.idle_ms, self.idle_ms[1:], strict=False)):
            raise ValueError("pass_correlation.idle_ms must increase")
        return self

    def at(self, idle_ms: float) -> float:
        """rho after the server sat idle `idle_ms` (0 beyond the last edge)."""
        for edge, rho in zip(self.idle_ms, self.rho, strict=True):
            if idle_ms <= edge:
                return rho
        return 0.0


class Dispatcher(_Model):
    """The dispatcher's (frontend's) own CPU work on the cores the servers share, per task: `send_ms` when it sends
    a task to a server, `return_ms` when it takes an output back (at the moment the output reaches it); a cancel
    is a message sent like a task (`send_ms`), and the server's reply that it dropped the copy, when the cancel
    found it live, one taken back (`return_ms`, a network delay after the cancel reached the server). It runs
    with priority over the servers, as a frontend at real-time priority does: while it has work it holds one CPU
    slot, taking a free one or preempting the server that took its slot last (that server waits at the head of the
    run queue, its quantum lost), and does its work in arrival order at full speed. Its work does not delay the
    tasks it sends or receives (the network delays stand for that). Needs time slicing (`quantum_ms`).

    `placement` says which slot it takes when it wakes with a slot free: 'free_core' takes the free one (what the
    OS does for an ordinary process: a waking task goes to an idle core); 'own_core' wakes on the core it last ran
    on, whoever holds it — what Linux does with a real-time task, which preempts the ordinary task on its previous
    core rather than look for an idle one — so it lands on a core a server holds with probability (servers holding
    a slot) / slots, drawn per wake-up from the run's seed, and that server waits for it (it is not moved to the
    free core)."""

    send_ms: float = Field(ge=0)
    return_ms: float = Field(ge=0)
    placement: Literal["free_core", "own_core"] = "free_core"


class Service(_Model):
    """Service time of a task = (dist.ppf(u) * scale[server] * (per-task slowdown) + overhead_ms) * (episode
    slowdown).

    `overhead_ms` is the server's own work per task beside its forward pass (reading the task, sending the
    output, being scheduled again): it holds the server and, with `cores`, computes on them, but a straggle never
    stretches it — a straggling pass runs long, the bookkeeping around it does not.

    `cancel_in_service` says what a cancel does to a task being served: ``preempt`` frees the server at once;
    ``finish_pass`` lets the task's forward pass (its time without the straggle factor) run to its end and cuts
    only the straggle — what a real server does, since a forward pass cannot be interrupted (the testbed).

    `cores` = C lets the servers share C cores. By default they share them as a fluid (processor sharing: k > C
    busy servers each run at C / k). `quantum_ms` = q replaces the fluid by what an OS scheduler does: ceil(C)
    CPU slots, k holders each at speed min(1, C / k) (a fractional C slows them only when they outnumber it),
    and a FIFO run queue. A
    server with work to do takes a free slot or waits at the tail of the queue; it keeps its slot for q ms of
    wall time, then yields it to the head of the queue and rejoins the tail (with nobody waiting it just goes
    on). A server that ends its work, stalls (``stragglers.hold = "stall"``), fails or has its task cancelled
    frees its slot for the head at once. A task's work is its service time at speed 1; the server's busy time
    is the wall time the task held it, waits in the run queue included.

    `after_ms` is the part of that work done after the output has left (sending it, reading the socket for the
    next task): the output's latency does not hold it, the server's next task does — a task that starts less than
    `after_ms` after the previous one ended first waits out the rest, as work on the cores, never stretched. A
    server's capacity is one task per (mean pass + overhead_ms + after_ms) (`beside_pass_ms`).

    `wake` (measured by `coinsim calibrate`): a server that sat idle for g ms before a task starts computes that
    task `extra_ms(g)` ms longer (linear between the given points, the last value beyond them; 0 for a server
    that goes straight on from its previous task) — a process that slept finds its caches cold and its core
    clocked down or taken back by the host, so its first pass is slower; with `wake.others_busy_ms` it computes
    `others_extra_ms(b)` longer on top, b the busy time the other servers spent (summed) while it sat idle: their
    work is what evicts its caches.
    """

    expert: ServiceDist = Field(default_factory=lambda: Exponential(mean_ms=1.0))
    experts: tuple[ServiceDist, ...] | None = Field(default=None, description="per-expert override (len N)")
    coded: ServiceDist | None = Field(default=None, description="coded/parity servers; default = expert 0")
    backup: ServiceDist | None = Field(
        default=None, description="generalist-backup servers; default = the coded servers' (the generalist is by "
                                  "default the coded network itself)")
    scale: tuple[Annotated[float, Field(gt=0)], ...] | None = Field(
        default=None, description="per-server multiplier, len N + r"
    )
    overhead_ms: float = Field(
        default=0.0, ge=0,
        description="per-task work of a server beside the pass (ms): added to every task, never stretched by a "
                    "straggle; the served latency model sets it from the calibration")
    after_ms: float = Field(
        default=0.0, ge=0,
        description="per-task work of a server after the task's output has left (ms): sending it, reading the socket, "
                    "looking for the next task; the server is taken that long after each task (a task that starts "
                    "sooner waits out what is left, on the cores with them), the output is not delayed by it; the "
                    "served latency model sets it from the served profile")
    max_batch: int = Field(default=1, ge=1, description="dynamic batching: tasks a free server takes at once")
    batch_cost_per_extra: float = Field(default=0.25, ge=0, description="batch time = max draw * (1 + cost * (b - 1))")
    cancel_in_service: Literal["preempt", "finish_pass"] = "preempt"
    cores: float | None = Field(
        default=None, gt=0,
        description="the servers share this many cores (or one device): with k > cores busy servers each runs "
                    "at cores / k of its speed (processor sharing); None = every server has its own core")
    quantum_ms: float | None = Field(
        default=None, gt=0,
        description="with cores: time slicing instead of processor sharing — ceil(cores) CPU slots at speed "
                    "cores / ceil(cores) each, handed round robin to the runnable servers for up to this much "
                    "wall time at a time; None = processor sharing")

    corun_slowdown: tuple[Annotated[float, Field(ge=1.0)], ...] | None = Field(
        default=None,
        description="with cores: a task computes this many times slower while 1, 2, ... other servers compute on "
                    "the other cores at the same time (entry j for j others, the last one beyond; shared caches, "
                    "memory bandwidth, SMT siblings — measured by coinsim calibrate); None = no slowdown")
    wake: Wake | None = None
    pass_correlation: PassCorrelation | None = Field(
        default=None,
        description="a server's consecutive passes move together (their ranks, by how long it sat idle between "
                    "them), each pass keeping its distribution; needs empirical service distributions (measured in "
                    "the served profile); None = independent draws")
    joined_share: float | None = Field(
        default=None, ge=0.0, le=1.0, allow_inf_nan=False,
        description="with time slicing: the chance that a server starting on a free core wakes on a core another "
                    "server holds (one drawn alike); that server then waits off the cores until the starter's work "
                    "is done, its slot free meanwhile (measured in the served profile); None = never")
    dispatcher: Dispatcher | None = Field(
        default=None,
        description="with cores and quantum_ms: the dispatcher's CPU work per task sent and per output returned "
                    "(a cancel: a send, and a return when it finds the task live), preempting a server on the cores "
                    "(a real-time frontend); None = it takes no share of them "
                    "(or a steady one, by giving fewer cores)")

    @model_validator(mode="after")
    def _check(self) -> Service:
        if self.quantum_ms is not None and self.cores is None:
            raise ValueError("quantum_ms (time slicing of shared cores) needs cores")
        if self.dispatcher is not None and self.quantum_ms is None:
            raise ValueError("dispatcher (its CPU work on the shared cores) needs time slicing: cores and quantum_ms")
        if self.corun_slowdown is not None and self.cores is None:
            raise ValueError("corun_slowdown (servers slowing each other on shared cores) needs cores")
        if self.joined_share is not None and self.quantum_ms is None:
            raise ValueError("joined_share (a start holding another server off the cores) needs time slicing: cores "
                             "and quantum_ms")
        if self.after_ms > 0 and self.max_batch > 1:
            raise ValueError("after_ms (a server's work after an output leaves) is not modelled with max_batch > 1")
        if self.pass_correlation is not None:
            if self.max_batch > 1:
                raise ValueError("pass_correlation (a server's passes moving together) is not modelled with "
                                 "max_batch > 1")
            if any(d.kind != "empirical" for d in self.used_dists()):
                raise ValueError("pass_correlation needs empirical service distributions (measured passes)")
        return self

    @property
    def beside_pass_ms(self) -> float:
        """A server's own work per task beside the forward pass, before and after its output leaves: what a task
        takes of a server's capacity beyond its pass."""
        return self.overhead_ms + self.after_ms

    def corun_factor(self, computing: int) -> float:
        """How many times slower each of `computing` servers on the cores at once computes (1 for one)."""
        table = self.corun_slowdown
        if not table or computing <= 1:
            return 1.0
        return float(table[min(computing - 1, len(table)) - 1])

    def effective_cores(self) -> float:
        """The most work per ms the shared cores get done: max over k of min(k, cores) / corun_factor(k),
        k = 1 .. ceil(cores) servers computing; `cores` itself without a co-running slowdown."""
        cores = float(self.cores) if self.cores is not None else math.inf
        if not self.corun_slowdown or not math.isfinite(cores):
            return cores
        return max(min(k, cores) / self.corun_factor(k) for k in range(1, math.ceil(cores) + 1))

    def expert_dist(self, i: int) -> Any:
        return self.experts[i] if self.experts is not None else self.expert

    def used_dists(self) -> list[Any]:
        """The service distributions servers draw from: the experts' (per expert or the one), the coded and backup
        servers' (theirs or what they default to)."""
        return [*(self.experts or (self.expert,)), self.coded_dist(), self.backup_dist()]

    def coded_dist(self) -> Any:
        return self.coded if self.coded is not None else self.expert_dist(0)

    def backup_dist(self) -> Any:
        return self.backup if self.backup is not None else self.coded_dist()


# ------------------------------------------------------------------------------------------- stragglers
class Pareto(_Model):
    """Slowdown factor ~ Pareto(alpha) with minimum `scale` (heavy-tailed stragglers)."""

    kind: Literal["pareto"] = "pareto"
    alpha: float = Field(gt=0)
    scale: float = Field(default=1.0, ge=1)

    def mean(self) -> float:
        return math.inf if self.alpha <= 1 else self.alpha * self.scale / (self.alpha - 1)

    def second_moment(self) -> float:
        return math.inf if self.alpha <= 2 else self.alpha * self.scale**2 / (self.alpha - 2)

    def ppf(self, u: np.ndarray) -> np.ndarray:
        return self.scale * np.power(1.0 - np.asarray(u), -1.0 / self.alpha)


class Episodes(_Model):
    """Per-server two-state Markov slow episodes; a task started in a slow episode is slowed down."""

    mean_normal_ms: float = Field(gt=0)
    mean_slow_ms: float = Field(gt=0)
    slowdown: float = Field(ge=1)

    def mean_factor(self) -> float:
        f = self.mean_slow_ms / (self.mean_slow_ms + self.mean_normal_ms)
        return 1 + f * (self.slowdown - 1)


class Failures(_Model):
    """Per-server up/down periods (exponential); work in service is lost and restarted after repair."""

    mean_up_ms: float = Field(gt=0)
    mean_down_ms: float = Field(gt=0)

    def availability(self) -> float:
        return self.mean_up_ms / (self.mean_up_ms + self.mean_down_ms)


class Stragglers(_Model):
    p: float = Field(default=0.0, ge=0, le=1, description="per-task straggler probability (sweep axis)")
    slowdown: Annotated[float, Field(ge=1)] | Pareto = 5.0
    episodes: Episodes | None = None
    failures: Failures | None = None
    servers: tuple[int, ...] | None = Field(default=None, description="affected servers (default all)")
    hold: Literal["compute", "stall"] = Field(
        default="compute",
        description="what a straggling task does with its extra time: keeps computing, or stalls (holds its "
                    "server without computing, like a network or I/O stall); differs only with service.cores, "
                    "where a stalled server takes no share of the cores")
    extra_of: Literal["draw", "pass"] = Field(
        default="draw",
        description="a straggling task takes f x ... its drawn service time ('draw'), or its pass as it actually "
                    "ran on its server — wake-up cost and, held as a stall, waits for the shared cores included "
                    "('pass': how the testbed's servers straggle: held (f - 1) x the pass's measured time)")

    def task_factor_mean(self) -> float:
        s = self.slowdown if isinstance(self.slowdown, float | int) else self.slowdown.mean()
        return 1 - self.p + self.p * s

    def task_factor_second_moment(self) -> float:
        s2 = self.slowdown**2 if isinstance(self.slowdown, float | int) else self.slowdown.second_moment()
        return 1 - self.p + self.p * s2


class Network(_Model):
    """Delays between the dispatcher (frontend) and the servers, drawn per (query, server), in ms.

    `out`: from the moment a task is due (its query's arrival, or its hedge timer) until it is in the server's
    queue — the frontend's own lateness included; a cancel takes the same time to reach the server.
    `back`: from the end of a task at the server until the frontend holds its output. With either set, the
    dispatcher's view of a server's load (join-shortest-queue, shortest-expected-delay) counts what was sent
    and has not come back or been cancelled, as a real frontend sees it.

    `out_by_busy` / `back_by_busy`: the delay by how many *other* servers are computing on the shared cores when
    the message leaves — a task (or its cancel) when it is due, an output when its task ends — entry k for k
    others, the last for that many or more; read with the same uniform draw as `out` / `back`, which they stand
    in for. A message needs a core at each end: with the cores busy it waits for one, so long deliveries come
    exactly when the servers are busy, which one distribution drawn regardless of the cores' state cannot give.
    Each needs its plain delay beside it (what a summary of the delay shows) and `service.cores`.
    """

    out: ServiceDist | None = None
    back: ServiceDist | None = None
    out_by_busy: tuple[ServiceDist, ...] | None = Field(default=None, min_length=1)
    back_by_busy: tuple[ServiceDist, ...] | None = Field(default=None, min_length=1)

    @property
    def active(self) -> bool:
        return self.out is not None or self.back is not None

    @property
    def by_busy(self) -> bool:
        return self.out_by_busy is not None or self.back_by_busy is not None

    @model_validator(mode="after")
    def _by_busy(self) -> Network:
        for name in ("out", "back"):
            if getattr(self, f"{name}_by_busy") is not None and getattr(self, name) is None:
                raise ValueError(f"network.{name}_by_busy needs network.{name} beside it (the delay it refines)")
        return self


# ---------------------------------------------------------------------------------------------- traffic
class Traffic(_Model):
    """Arrivals. Total routed rate is fixed; `kind` decides how it is split across the N models over time.

    poisson: fixed split (`weights`, per-model `rates_per_ms`, or Zipf popularity `zipf`); markov_hot: a hot
    model, changing after Exp(mean_dwell_ms), gets share 1/N + strength*(1 - 1/N); smooth: share_i(t) = (1 + strength *
    cos(2 pi t / period_ms - 2 pi i / N)) / N; trace: replay (timestamp_ms, model) from a CSV or lists.
    Ensemble queries (needing all N outputs) arrive as a Poisson stream at ensemble_rate_per_ms.
    """

    kind: Literal["poisson", "markov_hot", "smooth", "trace"] = "poisson"
    rate_per_ms: float | None = Field(default=None, ge=0, description="total routed rate")
    rates_per_ms: tuple[Annotated[float, Field(ge=0)], ...] | None = None
    weights: tuple[Annotated[float, Field(ge=0)], ...] | None = None
    zipf: float | None = Field(default=None, gt=0, description="poisson: expert i's share proportional to "
                                                               "1 / (i + 1)^zipf (instead of weights)")
    strength: float = Field(default=0.0, ge=0, le=1)
    mean_dwell_ms: float = Field(default=1000.0, gt=0)
    period_ms: float = Field(default=10_000.0, gt=0)
    ensemble_rate_per_ms: float = Field(default=0.0, ge=0)
    trace_csv: str | None = None
    trace_times_ms: tuple[float, ...] | None = None
    trace_models: tuple[int, ...] | None = Field(default=None, description="-1 = ensemble query")
    sample_pool: int | tuple[int, ...] = Field(
        default=DEFAULT_SAMPLE_POOL, description="sample ids are uniform in [0, pool) per model"
    )
    ensemble_sample_pool: int = Field(default=DEFAULT_SAMPLE_POOL, ge=1)

    @field_validator("trace_csv")
    @classmethod
    def _local_file(cls, value: str | None) -> str | None:
        if value is not None and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError(f"trace_csv must be a local file, not a URL ({value!r}): a run reads nothing remote")
        return value

    @model_validator(mode="after")
    def _check(self) -> Traffic:
        if self.kind == "trace":
            if self.trace_csv is None and self.trace_times_ms is None:
                raise ValueError("traffic.kind='trace' needs trace_csv or trace_times_ms + trace_models")
            if self.trace_times_ms is not None:
                if self.trace_models is None or len(self.trace_models) != len(self.trace_times_ms):
                    raise ValueError("trace_models must be given with the same length as trace_times_ms")
                t = np.asarray(self.trace_times_ms)
                if len(t) and (np.any(~np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) < 0)):
                    raise ValueError("trace_times_ms must be finite, >= 0 and non-decreasing")
        else:
            if self.rate_per_ms is None and self.rates_per_ms is None and self.ensemble_rate_per_ms == 0:
                raise ValueError("traffic needs rate_per_ms (or rates_per_ms, or ensemble_rate_per_ms)")
            if self.rates_per_ms is not None and (self.kind != "poisson" or self.rate_per_ms is not None):
                raise ValueError("rates_per_ms is only for kind='poisson' and replaces rate_per_ms")
            if self.weights is not None and sum(self.weights) <= 0:
                raise ValueError("weights must have a positive sum")
            if self.zipf is not None and (self.kind != "poisson" or self.weights is not None
                                          or self.rates_per_ms is not None):
                raise ValueError("zipf is only for kind='poisson', instead of weights or rates_per_ms")
        pools = (self.sample_pool,) if isinstance(self.sample_pool, int) else self.sample_pool
        if any(p < 1 for p in pools):
            raise ValueError("sample_pool sizes must be >= 1")
        return self

    def routed_rate(self) -> float:
        if self.rates_per_ms is not None:
            return float(sum(self.rates_per_ms))
        return float(self.rate_per_ms or 0.0)

    def mean_shares(self, n: int) -> np.ndarray:
        """Time-average share of routed traffic per model (what the stability check uses)."""
        if self.rates_per_ms is not None:
            w = np.asarray(self.rates_per_ms, float)
        elif self.kind == "poisson" and self.weights is not None:
            w = np.asarray(self.weights, float)
        elif self.kind == "poisson" and self.zipf is not None:
            w = 1.0 / np.arange(1, n + 1) ** self.zipf
        else:
            w = np.ones(n)
        return w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)


# ------------------------------------------------------------------------------------------ deployment
class Deployment(_Model):
    """How many servers each expert has in every policy's base deployment, and how a query picks one of them.

    `instances`: servers per expert (one number, or one per expert); the r extra servers come on top, so every
    policy still gets the same extra resources. Servers 0..N-1 are each expert's first instance, then the further
    instances expert by expert, then the r extra servers. `balancer`: which instance gets a query's task for its
    expert — `jsq` (fewest live tasks, ties to the lowest server), `round_robin` (each expert's instances in turn)
    or `power_of_d` (the fewest live tasks among `d` instances drawn at random per query, ties to the first drawn).
    Replication's dispatch rules choose among every host of an expert (its instances and replicas) themselves.
    """

    instances: int | tuple[int, ...] = Field(1, description="servers per expert: one number, or one per expert")
    balancer: Literal["jsq", "round_robin", "power_of_d"] = "jsq"
    d: int = Field(2, ge=1, description="power_of_d: instances drawn per query")
    groups: tuple[tuple[int, ...], ...] | None = Field(
        None, description="code groups: a partition of the experts, each coded on its own by r coded servers "
                          "(every policy then gets r extra servers per group); default one group of all experts")
    backups: Literal["pooled", "per_group"] = Field(
        "pooled", description="backup policy with code groups: a query's backup copy goes to any backup server "
                              "(pooled) or to one of its own group's r (per_group)")
    cells: int = Field(1, ge=1, description="cells: the instances split into this many cells (instance j of an "
                                            "expert in cell j mod cells), each code group coded per cell by its own "
                                            "r coded servers; queries go to the cells in turn and stay in theirs")

    @field_validator("instances")
    @classmethod
    def _positive(cls, v: int | tuple[int, ...]) -> int | tuple[int, ...]:
        if any(k < 1 for k in (v if isinstance(v, tuple) else (v,))):
            raise ValueError(f"instances must be >= 1 (got {v!r})")
        return v

    def code_groups(self, n_experts: int) -> tuple[tuple[int, ...], ...]:
        """The code groups (one group of every expert by default)."""
        return self.groups if self.groups is not None else (tuple(range(n_experts)),)

    def counts(self, n_experts: int) -> tuple[int, ...]:
        """Instances per expert."""
        k = self.instances
        return k if isinstance(k, tuple) else (k,) * n_experts


# --------------------------------------------------------------------------------------------- policies
class PolicySpec(_Model):
    """One serving policy. All policies use the same N + r servers and the same random numbers.

    uncoded: N experts, the r extra servers stay idle (spares, reported with 0 utilization).
    replication: extra server k holds a replica of model replica_of[k] ('spread' = k mod N, 'hot' = all on
      the model with the highest mean rate); dispatch redundant (copy to every host, first wins), jsq (join
      the shortest queue among hosts) or pool (hosts of a model share one FIFO queue, i.e. M/M/c).
    hedged: primary first, a copy to the least-loaded replica after delay_ms if still not answered.
    coded: extra servers are coded (parity) servers. Routed query for i: expert i, and the decode group =
      `fanout` coded servers + the other N-1 experts on the same input; decoded once any N of the group are
      back. dispatch redundant (both at once), hedged (group after delay_ms) or sed (only the path with the
      shorter expected delay). Ensemble query: all N + r (sed: the N least loaded), done when any N are back.
    backup: the r extra servers each host one generalist network (by default the coded model, used without
      decoding as a multi-task model) that answers any query on its own: its answer is the argmax of its own
      output. Routed query for i: expert i, and one backup server — the one with the fewest live tasks (ties ->
      lowest index) when the copy is sent; dispatch hedged (the backup copy after delay_ms, if still not
      answered) or redundant (both at once). Ensemble query: the N experts, and one backup copy (after the
      largest per-expert delay, or at once), whose single output answers the whole query. First answer wins.
    delay_ms: a number, one number per expert, or 'pNN' / 'pNN.N' = that percentile of the primary's drawn
      service times (of its served response, under the served latency model) — the start of a running delay.
    delay_update: 'running' (the default for a percentile): the delay follows that percentile of the expert's
      direct answers over its last `delay_window` routed queries while serving (policies/delays.py); 'fixed'
      (the default for numbers): it stays where it started. `delay_quantile` is the running percentile (set
      from a 'pNN' delay_ms; given explicitly only beside a delay already resolved to ms).
    parity: the r extra servers host parity models (coding over queries). Every routed query goes to its expert;
      routed queries are also gathered into groups of `k` — in arrival order (dispatch any) or per expert
      (dispatch expert) — and each group's encoded query goes to the least-loaded parity server; with the parity
      output and k - 1 members' own outputs back, the missing one is decoded. `group_timeout_ms`: a group open
      that long is closed as it is (`partial` = 'send': encoded if it has two members or more; 'drop': no
      parity); none: a group waits for its k-th member. No ensemble queries. A parity pass draws from
      service.coded (a network of the experts' architecture).
    cancel: cancel outstanding copies once answered (queued ones are dropped, in-service ones preempted).
    hedge_budget_pct: (a dispatch that waits a delay) hedge at most this percent of the queries: each arriving
      query adds hedge_budget_pct / 100 of a hedge to a budget that holds at most `hedge_budget_burst` hedges, a
      hedge spends one, and a hedge timer that finds less than one left sends nothing (the query waits for its
      first path). Keeps a slow spell from hedging every query, whose extra work can keep the servers saturated.
    """

    kind: str = Field(description="a policy kind of the registry (policies/): uncoded, replication, hedged, coded, "
                                  "backup, or one registered there")
    name: str | None = None
    dispatch: str | None = None
    delay_ms: float | str | tuple[float, ...] | None = None
    delay_update: Literal["fixed", "running"] | None = None
    delay_quantile: float | None = Field(default=None, gt=0, lt=100)
    delay_window: int = Field(default=1000, ge=5)
    cancel: bool = True
    replica_of: Literal["spread", "hot"] | tuple[int, ...] = "spread"
    fanout: int = Field(default=1, ge=1)
    k: int | None = Field(default=None, ge=2, description="parity: queries per parity group (default 2)")
    group_timeout_ms: float | None = Field(default=None, gt=0, description="parity: close an open group after")
    partial: Literal["send", "drop"] | None = Field(default=None, description="parity: a group closed by its "
                                                                              "timeout is sent or dropped")
    hedge_budget_pct: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False,
                                           description="hedge at most this percent of the queries (token bucket)")
    hedge_budget_burst: int = Field(default=10, ge=1, description="most hedges the budget holds at once")

    @model_validator(mode="before")
    @classmethod
    def _from_str(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"kind": v}
        return v

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in RULES:
            raise ValueError(f"unknown policy kind {v!r} (choose from {', '.join(RULES)})")
        return v

    @model_validator(mode="after")
    def _check(self) -> PolicySpec:
        rules = RULES[self.kind]  # the registry (policies/): its dispatch rules, the first the default
        allowed = rules.dispatches
        d = self.dispatch or allowed[0]
        if d not in allowed:
            raise ValueError(f"policy {self.kind!r}: unknown dispatch {d!r} (choose from {', '.join(allowed)})")
        object.__setattr__(self, "dispatch", d)
        if self.name is None:
            object.__setattr__(self, "name", self.kind if d == allowed[0] else f"{self.kind}-{d}")
        needs_delay = d in rules.delayed  # waits delay_ms before its second path
        if needs_delay:
            dl = self.delay_ms if self.delay_ms is not None else "p95"
            if isinstance(dl, str):
                if not re.fullmatch(r"p\d{1,2}(\.\d+)?", dl):
                    raise ValueError(f"delay_ms must be a number >= 0 or a percentile like 'p95' (got {dl!r})")
            elif isinstance(dl, tuple):
                if not dl or not all(x >= 0 and math.isfinite(x) for x in dl):
                    raise ValueError(f"delay_ms per expert must be numbers >= 0 (got {dl!r})")
            elif not (dl >= 0 and math.isfinite(dl)):
                raise ValueError(f"delay_ms must be >= 0 (got {dl!r})")
            object.__setattr__(self, "delay_ms", dl)
            self._settle_update(dl)
        elif self.delay_update is not None or self.delay_quantile is not None or self.hedge_budget_pct is not None:
            raise ValueError(f"policy {self.name!r}: delay_update / delay_quantile / hedge_budget_pct need a dispatch "
                             f"that waits a delay ({', '.join(sorted(rules.delayed)) or 'none for this kind'})")
        burst_default = type(self).model_fields["hedge_budget_burst"].default  # (a dumped spec repeats the default)
        if self.hedge_budget_pct is None and self.hedge_budget_burst != burst_default:
            raise ValueError(f"policy {self.name!r}: hedge_budget_burst sizes a hedge budget; give hedge_budget_pct")
        given = [f for f in PARITY_OPTIONS if getattr(self, f) is not None]
        if self.kind == "parity":
            object.__setattr__(self, "k", self.k or 2)
            object.__setattr__(self, "partial", self.partial or "send")
        elif given:
            raise ValueError(f"policy {self.name!r}: {', '.join(given)} belong to the parity policy")
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The kind's own settings, as the policy rules read them (`policies.rules.Serving.options`)."""
        options = {f: getattr(self, f) for f in PARITY_OPTIONS} if self.kind == "parity" else {}
        if self.hedge_budget_pct is not None:
            options |= {"hedge_budget_pct": self.hedge_budget_pct, "hedge_budget_burst": self.hedge_budget_burst}
        return options

    def _settle_update(self, dl: float | str | tuple[float, ...]) -> None:
        """delay_update and delay_quantile made explicit: running by default for a percentile, fixed for ms."""
        q = float(dl[1:]) if isinstance(dl, str) else self.delay_quantile
        if isinstance(dl, str) and self.delay_quantile is not None and self.delay_quantile != q:
            raise ValueError(f"policy {self.name!r}: delay_quantile {self.delay_quantile:g} disagrees with delay_ms "
                             f"{dl!r}")
        update = self.delay_update or ("running" if q is not None else "fixed")
        if update == "running" and q is None:
            raise ValueError(f"policy {self.name!r}: delay_update = 'running' follows a percentile; give delay_ms "
                             "as one, e.g. 'p95'")
        if update == "running" and not 0 < q < 100:  # type: ignore[operator]
            raise ValueError(f"policy {self.name!r}: the delay's percentile must be in (0, 100), got {q:g}")
        object.__setattr__(self, "delay_update", update)
        object.__setattr__(self, "delay_quantile", q if update == "running" else None)


def _policy_list(v: Any) -> Any:
    if isinstance(v, str | Mapping):
        v = [v]
    return v


# ------------------------------------------------------------------------------------------------- top
class SimConfig(_Model):
    """A standalone `sim` scenario: needs no networks (service given as distributions or measured arrays).

    Horizon: `n_queries` arrivals or arrivals in [0, horizon_ms); without either, n_queries defaults to
    100000 and every policy must be stable (an unstable load needs an explicit horizon).
    """

    n_experts: int = Field(ge=1, description="N")
    r: int = Field(default=1, ge=0, description="extra servers: replicas, coded servers or spares")
    model_names: tuple[str, ...] | None = None
    traffic: Traffic
    service: Service = Field(default_factory=Service)
    stragglers: Stragglers = Field(default_factory=Stragglers)
    network: Network = Field(default_factory=Network)
    deployment: Deployment = Field(default_factory=Deployment)
    policies: tuple[PolicySpec, ...] = Field(default=("uncoded", "coded"), min_length=1, validate_default=True)
    n_queries: int | None = Field(default=None, ge=1)
    horizon_ms: float | None = Field(default=None, gt=0)
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    batches: int = Field(default=20, ge=2, description="batch means for CIs")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    draws: Literal["server", "task"] = Field(
        default="server",
        description="'server': every (query, server) pair its own service, straggle and delay draws, drawn up front "
                    "(the same server straggles on the same query under every policy; memory and time grow with "
                    "queries x servers); 'task': every task its own, drawn lazily in blocks (sim/tasks.py: the k-th "
                    "task of a query draws alike under every policy; memory and time grow with the tasks run, "
                    "whatever the number of servers: for fleets)")
    _default_horizon: bool = PrivateAttr(default=False)

    _validate_policies = field_validator("policies", mode="before")(classmethod(lambda cls, v: _policy_list(v)))

    @model_validator(mode="before")
    @classmethod
    def _default_policies(cls, data: Any) -> Any:
        # with no extra servers, the only meaningful default comparison is uncoded alone
        if isinstance(data, Mapping) and "policies" not in data and data.get("r", 1) == 0:
            data = {**data, "policies": ("uncoded",)}
        return data

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        n = self.n_experts
        if isinstance(self.deployment.instances, tuple) and len(self.deployment.instances) != n:
            raise ValueError(f"deployment.instances has {len(self.deployment.instances)} counts for {n} experts")
        groups = self.deployment.groups
        if groups is not None:
            flat = sorted(i for g in groups for i in g)
            if flat != list(range(n)) or any(not g for g in groups):
                raise ValueError(f"deployment.groups must split the experts 0..{n - 1} into non-empty groups, each "
                                 f"expert in exactly one (got {[list(g) for g in groups]})")
        if self.deployment.backups == "per_group":
            if groups is None:
                raise ValueError("deployment.backups = 'per_group' needs deployment.groups (the groups whose own "
                                 "backup servers answer their queries)")
            if any(p.kind == "backup" for p in self.policies) and (self.traffic.ensemble_rate_per_ms > 0 or (
                    self.traffic.trace_models is not None and -1 in self.traffic.trace_models)):
                raise ValueError("deployment.backups = 'per_group': an ensemble query needs every expert, so no one "
                                 "group's backup answers it; use pooled backups or routed traffic only")
        cells = self.deployment.cells
        if cells > 1:
            counts = self.instance_counts
            if any(k % cells for k in counts):
                raise ValueError(f"deployment.cells = {cells} needs every expert's instances to be a multiple of "
                                 f"{cells} (got {list(counts)}): each cell holds as many instances of each expert")
            if any(p.kind == "parity" for p in self.policies):
                raise ValueError("deployment.cells: the parity policy's groups of queries are not formed per cell")
            pooled = [p.name for p in self.policies if p.dispatch in RULES[p.kind].pooled]
            if pooled:
                raise ValueError(f"deployment.cells: policy {pooled[0]!r} pools an expert's servers in one queue "
                                 "across the cells")
        s = self.n_servers
        if self.network.by_busy and self.service.cores is None:
            raise ValueError("network.out_by_busy / back_by_busy need service.cores: the servers they count compute "
                             "on shared cores")
        if self.service.cores is not None and self.service.max_batch > 1:
            raise ValueError("service.cores (shared cores) is not modelled with max_batch > 1")
        if self.service.wake is not None and self.service.max_batch > 1:
            raise ValueError("service.wake (wake-up costs) is not modelled with max_batch > 1")
        if self.service.cancel_in_service == "finish_pass" and self.service.max_batch > 1:
            raise ValueError("service.cancel_in_service = 'finish_pass' is not modelled with max_batch > 1")
        if self.model_names is not None and len(self.model_names) != n:
            raise ValueError(f"model_names has {len(self.model_names)} names for n_experts={n}")
        tr = self.traffic
        for name, seq, want in (
            ("traffic.rates_per_ms", tr.rates_per_ms, n),
            ("traffic.weights", tr.weights, n),
            ("traffic.sample_pool", None if isinstance(tr.sample_pool, int) else tr.sample_pool, n),
            ("service.experts", self.service.experts, n),
            ("service.scale", self.service.scale, s),
        ):
            if seq is not None and len(seq) != want:
                raise ValueError(f"{name} has length {len(seq)}, expected {want}")
        if tr.trace_models is not None and any(m < -1 or m >= n for m in tr.trace_models):
            raise ValueError(f"trace_models must be -1 (ensemble) or in [0, {n})")
        if self.stragglers.servers is not None and any(x < 0 or x >= s for x in self.stragglers.servers):
            raise ValueError(f"stragglers.servers must be in [0, {s})")
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"policy names must be unique (got {names}); set `name` to tell variants apart")
        for p in self.policies:
            if RULES[p.kind].extra_host != SPARE and self.r == 0:  # its r extra servers do work
                raise ValueError(f"policy {p.name!r} needs r >= 1 extra servers")
            if isinstance(p.replica_of, tuple):
                if len(p.replica_of) != self.n_extra or any(m < 0 or m >= n for m in p.replica_of):
                    raise ValueError(f"policy {p.name!r}: replica_of needs {self.n_extra} model indices (one per extra "
                                     f"server) in [0, {n})")
            if isinstance(p.delay_ms, tuple) and len(p.delay_ms) != n:
                raise ValueError(f"policy {p.name!r}: delay_ms has {len(p.delay_ms)} values for {n} experts")
            if p.kind == "parity" and self.traffic.ensemble_rate_per_ms > 0:
                raise ValueError(f"policy {p.name!r}: the parity policy has no rule for ensemble queries (set "
                                 "traffic.ensemble_rate_per_ms = 0)")
            if p.kind == "coded" and p.fanout > self.r:
                raise ValueError(f"policy {p.name!r}: fanout {p.fanout} > r={self.r} coded servers")
        if self.n_queries is not None and self.horizon_ms is not None:
            raise ValueError("give n_queries or horizon_ms, not both")
        if self.n_queries is None and self.horizon_ms is None:
            self._default_horizon = True  # parse_config (sim.parse) then demands a stable load
            if tr.kind != "trace":
                object.__setattr__(self, "n_queries", DEFAULT_N_QUERIES)
        return self

    @property
    def default_horizon(self) -> bool:
        """True when neither n_queries nor horizon_ms was given: the run must reach a steady state."""
        return self._default_horizon

    @property
    def instance_counts(self) -> tuple[int, ...]:
        """Servers per expert in the base deployment."""
        return self.deployment.counts(self.n_experts)

    @property
    def n_base(self) -> int:
        """Servers of the base deployment (every expert's instances); the r extra servers follow them."""
        return sum(self.instance_counts)

    @property
    def n_servers(self) -> int:
        return self.n_base + self.n_extra

    @property
    def code_groups(self) -> tuple[tuple[int, ...], ...]:
        return self.deployment.code_groups(self.n_experts)

    @property
    def n_extra(self) -> int:
        """Extra servers of every policy: r per code group and cell."""
        return self.r * len(self.code_groups) * self.deployment.cells

    def policy(self, name: str) -> PolicySpec:
        for p in self.policies:
            if p.name == name:
                return p
        raise SimConfigError(f"sim config: no policy named {name!r}")
