"""The calibration file: what serving costs on this machine and device, measured once, scenario-independent.

A `Calibration` is stored as versioned JSON (`schema_version` 3) at `default_path(device)`, one file per machine
(CPU model and count, device, torch and Python versions: `machine_key`). It holds

- `serving`: the cycle a busy server spends per task against the isolated forward pass, for several network
  sizes, and the least-squares line cycle = overhead_ms + slope × pass_ms through them (`served_ms`);
- `delays`: one-way frontend → server (`out`) and server → frontend (`back`) delays, as quantile samples: to an
  idle server one task at a time, and (`under_load`, what the simulator draws) under serving traffic — Poisson
  arrivals over several servers at two levels of core utilization, interpolated between them
  (`out_ms_samples(utilization)`);
- `slicing`: how a pass stretches with k other busy servers, and the OS's time slice (`quantum_ms`);
- `dispatcher`: the frontend's CPU share, base_cores + cpu_ms_per_task × task rate (`server_cores`).

This module imports neither torch nor simpy (the simulator side reads the file without them); measuring is
`calibration.measure`. A file that cannot be used — missing, corrupt, truncated, another schema version,
non-finite numbers, another machine — raises `CalibrationError` with one line naming the problem.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 4  # 2: the wake-up section; 3: delays under serving traffic; 4: co-running per network size
QUANTILES = 200  # length of a stored or interpolated delay sample
MACHINE_FIELDS = ("cpu_model", "cpu_count", "device", "torch", "python")


class CalibrationError(ValueError):
    """A calibration file that cannot be used (one line for the user)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Machine(_Strict):
    cpu_model: str
    cpu_count: int = Field(ge=1)
    device: str = Field(description="'cpu' or the CUDA device's name")
    torch: str
    python: str


class SizePoint(_Strict):
    """One network size: isolated pass vs the cycle it costs a busy server."""

    name: str
    params: int
    isolated_mean_ms: float
    isolated_median_ms: float
    compute_mean_ms: float = Field(description="mean forward pass inside the server while serving")
    cycle_mean_ms: float
    cycle_median_ms: float
    cycle_p99_ms: float
    n_cycles: int
    residual_ms: float = Field(description="cycle_mean_ms − the fitted line at isolated_mean_ms")


class Serving(_Strict):
    overhead_ms: float
    slope: float
    points: list[SizePoint] = Field(min_length=2)


class Delay(_Strict):
    median_ms: float
    p99_ms: float
    mean_ms: float
    samples_ms: list[float] = Field(min_length=1, description="evenly spaced quantiles of the measured delays")


class DelayLevel(_Strict):
    """One-way delays measured under serving traffic: Poisson arrivals spread over `servers` server processes at
    `rate_per_ms`, keeping the machine's cores `utilization` busy with passes."""

    utilization: float = Field(ge=0, description="busy share of the machine's cores: Σ in-server pass ms / (span ms "
                                                 "× CPU count)")
    rate_per_ms: float = Field(gt=0)
    servers: int = Field(ge=1)
    network: str
    n_tasks: int = Field(ge=1)
    out: Delay = Field(description="frontend → server, tasks that reached an idle server (the others waited for "
                                   "a pass, which the simulator queues itself)")
    back: Delay = Field(description="server → frontend, every answered task")


class PassLevel(_Strict):
    """Forward passes while the machine serves Poisson traffic (the delay rehearsals, per size): the passes that
    no other server computed beside — so co-running and time slicing, which the simulator models itself, are not
    in them — against the same network's pass on a server kept busy."""

    network: str
    utilization: float = Field(ge=0, description="busy share of the cores during the rehearsal")
    rate_per_ms: float = Field(gt=0)
    n_lone: int = Field(ge=1, description="passes with no other server computing at their middle")
    lone_pass_mean_ms: float = Field(gt=0)
    busy_pass_mean_ms: float = Field(gt=0, description="the same network's pass on a server kept busy (cycle step)")
    extra_ms: float = Field(description="lone_pass_mean_ms − busy_pass_mean_ms: what serving traffic adds to a pass "
                                        "(wake-ups after idling, the frontend's and I/O threads' interruptions)")


class Delays(_Strict):
    n_tasks: int
    out: Delay
    back: Delay
    under_load: list[DelayLevel] = Field(default_factory=list, description="increasing utilization")

    @model_validator(mode="after")
    def _increasing(self) -> Delays:
        levels = [level.utilization for level in self.under_load]
        if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise ValueError("delays.under_load must be in increasing utilization")
        return self


class StretchRow(_Strict):
    others: int = Field(ge=0, description="other saturated server processes running beside the probe")
    n: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stretch_median: float = Field(description="median / the median with no other server")
    stretch_p99: float


class CorunRow(_Strict):
    network: str
    isolated_median_ms: float = Field(gt=0, description="its isolated pass (median), where the table is read")
    others: int = Field(ge=0, description="other processes running passes of the same network on other cores")
    n: int
    median_ms: float
    mean_ms: float
    stretch_median: float = Field(description="median pass / the median with no other process running")
    stretch_mean: float


class Slicing(_Strict):
    network: str
    isolated_median_ms: float
    stretch: list[StretchRow] = Field(min_length=1)
    spinners: int = Field(description="busy-spinning processes run together (CPU count + 1)")
    spin_s: float
    threshold_ms: float = Field(description="clock jumps longer than this count as descheduled")
    n_runs: int
    run_median_ms: float
    run_mean_ms: float
    run_p90_ms: float
    gap_median_ms: float
    gap_mean_ms: float
    quantum_ms: float = Field(description="median uninterrupted run of a process competing for the cores")


class DispatcherRun(_Strict):
    rate_per_ms: float = Field(description="tasks per ms")
    n_tasks: int
    served_s: float
    cpu_s: float


class Dispatcher(_Strict):
    base_cores: float = Field(description="cores the frontend uses while serving, independent of the task rate")
    cpu_ms_per_task: float
    runs: list[DispatcherRun] = Field(min_length=2)
    frontend_priority: str = Field(description="scheduling the frontend obtained: realtime, nice-10 or normal")


class WakeRow(_Strict):
    gap_ms: float = Field(description="idle time the server was given before each task (nominal)")
    n: int
    idle_median_ms: float = Field(description="idle time it actually had, from its own stamps (median)")
    compute_median_ms: float
    cost_ms: float = Field(description="what a task cost after that idle time: the server process's CPU time per "
                                       "task (all threads), or the median pass where the OS does not tell")
    extra_ms: float = Field(description="cost_ms − the cost of a task on a server going straight on")


class Wake(_Strict):
    """How much more a task costs a server that sat idle before it (cold caches, a core clocked down or given
    back to the host, the wake-up of a sleeping process and its I/O thread): the simulator's `service.wake`.
    Measured as the server process's CPU time per task (all threads) where /proc tells, else as the pass."""

    network: str
    warm_compute_ms: float = Field(description="median pass of a busy server going straight from task to task")
    warm_cost_ms: float = Field(description="cost of a task on a server kept busy (same measure as cost_ms)")
    cost: Literal["process_cpu", "pass"] = Field(description="how a task's cost was measured")
    rows: list[WakeRow] = Field(min_length=1)
    idle_ms: list[float] = Field(min_length=1, description="the curve: idle time (increasing)")
    extra_ms: list[float] = Field(min_length=1, description="the curve: extra pass time, non-decreasing, >= 0")


class LoadAverage(_Strict):
    start: list[float]
    end: list[float]


class Calibration(_Strict):
    schema_version: Literal[4] = SCHEMA_VERSION
    machine: Machine
    created: str = Field(description="ISO 8601 time the measurement finished")
    seconds: float = Field(description="wall time the measurement took")
    load_average: LoadAverage
    serving: Serving
    delays: Delays
    slicing: Slicing
    dispatcher: Dispatcher
    wake: Wake
    passes_under_load: list[PassLevel] = Field(default_factory=list, description=(
        "per size and utilization, what serving traffic adds to a lone pass; where measured, the simulator adds it "
        "to every served task at the point's utilization instead of the idle-time wake-up curve"))
    wake_sizes: list[Wake] = Field(default_factory=list, description=(
        "the wake-up curve of every calibration network (the one in `wake` included), so that a network's is read "
        "at its isolated pass: an idle server's caches lose more of a larger network"))
    corun: list[CorunRow] = Field(default_factory=list, description=(
        "passes run side by side on different cores, no dispatcher (`calibration.loop`): per network size, "
        "j = 0 .. min(CPU count − 1, 3) others; empty with one CPU"))

    # ---------------------------------------------------------------------------------- simulator side
    def served_ms(self, pass_ms: np.ndarray) -> np.ndarray:
        """Per-task serving cost for isolated forward-pass samples: overhead_ms + slope × pass, sample by sample."""
        return self.serving.overhead_ms + self.serving.slope * np.asarray(pass_ms, float)

    def work_beside_pass_ms(self, pass_ms: float) -> float:
        """What a busy server spends per task beside the forward pass itself — reading the task, sending the
        output, looking for the next one — for a network whose isolated pass is `pass_ms`: each measured size's
        mean cycle less its mean pass *in service* (not its isolated pass: how serving stretches the pass is the
        pass's, measured on the network itself by the served profile), linear in log pass time between the sizes,
        held at the ends, at least 0."""
        points = sorted(self.serving.points, key=lambda p: p.isolated_mean_ms)
        return max(0.0, at_size([p.isolated_mean_ms for p in points],
                                [p.cycle_mean_ms - p.compute_mean_ms for p in points], pass_ms))

    def out_ms_samples(self, utilization: float | None = None) -> np.ndarray:
        """Frontend → server one-way delays (ms), an empirical sample: under serving traffic at `utilization` (the
        busy share of the machine's cores) where the file has such levels, else to an idle server."""
        return self._delays("out", utilization)

    def back_ms_samples(self, utilization: float | None = None) -> np.ndarray:
        """Server → frontend one-way delays (ms), an empirical sample (as `out_ms_samples`)."""
        return self._delays("back", utilization)

    def _delays(self, direction: str, utilization: float | None) -> np.ndarray:
        levels = self.delays.under_load
        if utilization is None or not levels:
            return np.asarray(getattr(self.delays, direction).samples_ms, float)
        return interpolate_delays([level.utilization for level in levels],
                                  [getattr(level, direction).samples_ms for level in levels], utilization)

    def dispatcher_cores(self, task_rate_per_ms: float) -> float:
        """Cores the frontend takes at `task_rate_per_ms` tasks per ms (never below 0, should noise make the fit's
        intercept negative)."""
        return max(0.0, self.dispatcher.base_cores + task_rate_per_ms * self.dispatcher.cpu_ms_per_task)

    def server_cores(self, task_rate_per_ms: float) -> float:
        """Cores left to the servers at that task rate: CPU count − the dispatcher's share (at least half a core);
        on a GPU, the one device the servers share."""
        if self.machine.device != "cpu":
            return 1.0
        return max(0.5, self.machine.cpu_count - self.dispatcher_cores(task_rate_per_ms))

    def wake_table(self, pass_ms: float | None = None) -> dict[str, list[float]]:
        """The simulator's `service.wake` table (idle ms -> extra pass ms) for a network whose isolated pass is
        `pass_ms`: on every idle time any size measured, each size's curve (held at its ends) read across the
        sizes in log pass time (held at the ends), then made non-decreasing and at least 0. Without `pass_ms`, or
        with fewer than two sizes measured, the `wake` network's own curve."""
        isolated = {p.name: p.isolated_median_ms for p in self.serving.points}
        curves = sorted((isolated[w.network], w) for w in self.wake_sizes if w.network in isolated)
        if pass_ms is None or len(curves) < 2:
            return {"idle_ms": list(self.wake.idle_ms), "extra_ms": list(self.wake.extra_ms)}
        grid = np.unique(np.concatenate([np.asarray(w.idle_ms, float) for _, w in curves]))
        per_size = np.array([np.interp(grid, w.idle_ms, w.extra_ms) for _, w in curves])  # sizes x grid
        sizes = [ms for ms, _ in curves]
        extra = np.array([at_size(sizes, per_size[:, k], pass_ms) for k in range(len(grid))])
        extra = np.maximum.accumulate(np.maximum(extra, 0.0))
        return {"idle_ms": grid.tolist(), "extra_ms": extra.tolist()}

    def serving_extra_ms(self, pass_ms: float, utilization: float) -> float | None:
        """What serving traffic adds to a pass of a network whose isolated pass is `pass_ms`, at this busy share
        of the cores: each size's extra read at `utilization` (linear between its levels, held at the ends), then
        across the sizes in log pass time (held at the ends), at least 0. None where nothing was measured."""
        isolated = {p.name: p.isolated_median_ms for p in self.serving.points}
        by_size: dict[str, list[PassLevel]] = {}
        for level in self.passes_under_load:
            if level.network in isolated:
                by_size.setdefault(level.network, []).append(level)
        if not by_size:
            return None
        sizes = sorted((isolated[name], sorted(levels, key=lambda lv: lv.utilization))
                       for name, levels in by_size.items())
        extra = [float(np.interp(utilization, [lv.utilization for lv in levels], [lv.extra_ms for lv in levels]))
                 for _, levels in sizes]
        return max(0.0, at_size([ms for ms, _ in sizes], extra, pass_ms))

    def corun_slowdown(self, pass_ms: float) -> list[float]:
        """The simulator's `service.corun_slowdown` for a network whose isolated pass is `pass_ms`: how many
        times slower its pass runs with j = 1 .. CPU count − 1 other servers computing on the other cores — the
        co-running table's median stretch at j others, interpolated in log pass time between the measured sizes
        (held at the ends; the largest measured j holds beyond), at least 1 (a neighbour cannot speed a pass up).
        The competition for cores with the dispatcher is not in it: the simulator counts that as the cores the
        dispatcher leaves. Empty on a GPU, with one CPU, or where nothing was measured."""
        if self.machine.device != "cpu" or not self.corun:
            return []
        measured = sorted({row.others for row in self.corun if row.others > 0})
        out = []
        for others in range(1, self.machine.cpu_count):
            j = max((m for m in measured if m <= others), default=None)
            if j is None:
                break
            rows = sorted((r for r in self.corun if r.others == j), key=lambda r: r.isolated_median_ms)
            out.append(max(1.0, at_size([r.isolated_median_ms for r in rows], [r.stretch_median for r in rows],
                                        pass_ms)))
        return out

    @property
    def quantum_ms(self) -> float:
        """The time slice the OS gives a process when more processes than cores compete (measured median run)."""
        return self.slicing.quantum_ms


def at_size(sizes_ms: Any, values: Any, pass_ms: float) -> float:
    """A quantity measured on networks whose isolated passes are `sizes_ms` (increasing), read for a network whose
    isolated pass is `pass_ms`: linear in log pass time between them, held at the ends."""
    return float(np.interp(np.log(max(pass_ms, 1e-9)), np.log(np.asarray(sizes_ms, float)), values))


def interpolate_delays(utilizations: list[float], samples: list[list[float]], utilization: float,
                       n: int = QUANTILES) -> np.ndarray:
    """`n` evenly spaced quantiles of the delay at `utilization`, between the measured levels: each level's
    quantile function interpolated linearly in utilization (quantile by quantile), held at the nearest level
    outside the measured range (never extrapolated)."""
    if not utilizations or len(utilizations) != len(samples):
        raise ValueError("interpolate_delays needs one sample per utilization level")
    if not np.isfinite(utilization) or utilization < 0:
        raise ValueError(f"utilization must be finite and >= 0, not {utilization!r}")
    probs = np.linspace(0.0, 1.0, n)
    curves = np.array([np.quantile(np.asarray(s, float), probs) for s in samples])
    if len(utilizations) == 1:
        return curves[0]
    u = np.asarray(utilizations, float)
    return np.array([np.interp(utilization, u, curves[:, k]) for k in range(n)])


# -------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _torch_version() -> str:
    """torch's full version (with its build tag, e.g. '+cu130'), read from its version.py without importing it, so
    the machine key is the same whether or not this process has imported torch; else the package metadata's."""
    try:
        spec = importlib.util.find_spec("torch")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", (Path(folder) / "version.py").read_text(),
                              re.MULTILINE)
            if found:
                return found.group(1)
    except (OSError, ImportError, ValueError):
        pass
    try:
        return version("torch")
    except PackageNotFoundError:
        return "none"


def machine_key(device: str = "cpu") -> dict[str, Any]:
    """This process's machine as the calibration file records it. `device`: 'cpu', or a CUDA device ('cuda',
    'cuda:N', whose name is then asked of torch) or its name as already known."""
    name = device
    if device == "cuda" or device.startswith("cuda:"):
        import torch  # only for a GPU's name

        name = torch.cuda.get_device_name(torch.device(device))
    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count() or 1, "device": name,
            "torch": _torch_version(), "python": platform.python_version()}


def cache_root() -> Path:
    return Path(os.environ.get("COINSIM_CACHE") or Path.home() / ".cache" / "coinsim")


def default_path(device: str = "cpu") -> Path:
    """$COINSIM_CALIBRATION when set (one file a team shares, or a test's own); else $COINSIM_CACHE (default
    ~/.cache/coinsim)/calibration/<short hash of machine_key(device)>.json."""
    if os.environ.get("COINSIM_CALIBRATION"):
        return Path(os.environ["COINSIM_CALIBRATION"]).expanduser()
    key = json.dumps(machine_key(device), sort_keys=True)
    return cache_root() / "calibration" / f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


# -------------------------------------------------------------------------------------------- reading


def load_calibration(path: Path | str, expect_machine: dict[str, Any] | None = None) -> Calibration:
    """The calibration in `path`; with `expect_machine` (a `machine_key`), it must have been made there."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CalibrationError(f"no calibration file at {path} (run: coinsim calibrate)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CalibrationError(f"cannot read calibration file {path}: {error}") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except _NonFinite as error:
        raise CalibrationError(f"calibration file {path} holds a non-finite number ({error}); "
                               "run coinsim calibrate --force") from None
    except RecursionError:
        raise CalibrationError(f"calibration file {path} is nested too deeply to be a calibration; "
                               "run coinsim calibrate --force") from None
    except ValueError as error:
        cut = isinstance(error, json.JSONDecodeError) and text.strip() != "" and (
            error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"))
        what = "truncated" if cut else "corrupt"
        raise CalibrationError(f"calibration file {path} is {what} (not valid JSON: {error}); "
                               "run coinsim calibrate --force") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"calibration file {path} is corrupt (not a JSON object)")
    found = data.get("schema_version")
    if found != SCHEMA_VERSION:
        raise CalibrationError(f"calibration file {path} has schema_version {found!r}, this coinsim reads "
                               f"{SCHEMA_VERSION}; run coinsim calibrate --force")
    try:
        cal = Calibration.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise CalibrationError(f"calibration file {path} is corrupt: {where}: {first['msg']}") from None
    if expect_machine is not None:
        have = cal.machine.model_dump()
        for field in MACHINE_FIELDS:
            if field in expect_machine and have[field] != expect_machine[field]:
                raise CalibrationError(f"calibration file {path} was made for another machine: {field} is "
                                       f"{have[field]!r} there, {expect_machine[field]!r} here")
    return cal


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def save_calibration(cal: Calibration, path: Path | str) -> Path:
    """Write `cal` to `path` atomically: a temporary file in the same folder, flushed, then renamed over the
    target, so an interrupted or failed write leaves any previous file as it was."""
    import atomic

    return atomic.write_text(path, cal.model_dump_json(indent=1) + "\n")
