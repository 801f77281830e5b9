"""Measure this machine's serving costs with real server processes over real sockets (`calibrate`).

Four random-weight CNNs (`SIZES`, isolated passes from ~0.1 ms to a few ms on a laptop-class CPU core) are saved
as the testbed saves networks, `testbed.LocalCluster` starts CPU count + 2 server processes that each hold all
of them, and `testbed.serve` replays purpose-made arrival streams over ZeroMQ (each run's servers all run one
chosen network). Steps, each a second or two:

1. isolated profile of every size in this process (`models.profile.profile_interleaved`, one thread);
2. per size, twice (sizes in order, then reversed), one server kept busy (tasks in bursts faster than it
   serves): its cycle per task from its own stamps (`analysis.cycles_ms`), then cycle = overhead + slope × pass
   fitted over the sizes;
3. per size, one server given tasks after idle gaps of 0.25–16 ms: what a task costs after sitting idle
   (the server process's CPU time per task), against the same server kept busy;
4. one idle server, tasks one at a time: one-way out / back delays on the host's shared monotonic clock; and
   serving traffic (`rehearse`): Poisson arrivals over CPU count + 1 servers of each size at two rates, keeping
   about 15 % and 50 % of the cores busy — the mid size's one-way delays are the ones the simulator draws (a
   sleeping server wakes slower, and a frontend and servers that compete for the cores answer later), and every
   size's passes that ran with no other server beside them tell what serving adds to a pass;
5. twice (k up, then down), k = 0..3 other saturated servers of the mid-size network beside a probe server: the
   probe's pass times, over the window in which all of them were busy;
6. CPU count + 1 busy-spinning processes (`calibration.spin`): descheduled gaps and the runs between them;
7. two runs at a low and a high task rate: the frontend's CPU seconds split into a base share and a cost per task;
8. with the servers stopped, j + 1 processes (j = 0 .. min(CPU count − 1, 3)) running passes of each size side by
   side on one timetable (`calibration.loop`), no dispatcher: how co-running passes slow each other per size,
   apart from the competition with the dispatcher for cores that step 7 measures (step 5 has both in it).

Nothing is written here: the caller saves the returned `Calibration` (atomically).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from calibration.analysis import cycles_ms, idle_at_arrival, line_fit, overlaps, quantiles, slice_lengths
from calibration.file import (
    QUANTILES,
    Calibration,
    CalibrationError,
    CorunRow,
    Delay,
    DelayLevel,
    Delays,
    Dispatcher,
    DispatcherRun,
    LoadAverage,
    Machine,
    PassLevel,
    Serving,
    SizePoint,
    Slicing,
    StretchRow,
    Wake,
    WakeRow,
    machine_key,
)
from calibration.passes import (
    BESIDE_LEAST,
    JOINED_LEAST,
    ServedLevel,
    ServedPasses,
    computing_at,
    consecutive_pairs,
    delays_by_busy,
    idle_before,
    isotonic,
    joined_passes,
    joined_share,
    next_start,
    others_busy_before,
    pass_correlation,
    wake_extra,
    wake_two,
)

SIZES: dict[str, int] = {"cnn-w2": 2, "cnn-w16": 16, "cnn-w48": 48, "cnn-w96": 96}  # SmallCNN widths, 28×28×1
MID = "cnn-w48"
SMALL = "cnn-w2"
WAKE_NET = "cnn-w16"  # wake-up costs measured on a network the size of the default experts
OTHERS = (0, 1, 2, 3)
REHEARSAL_UTILIZATION = (0.15, 0.5)  # busy share of the cores in the two delay rehearsals
REHEARSAL_MS = 5000.0  # simulated span of each rehearsal (its tasks: rate x span, at most 4,000)
SPIN_THRESHOLD_S = 50e-6
LEAD_MS = 100.0
CORUN_ROUNDS = 3  # rounds of the co-running timetable
CORUN_PHASE_S = 0.3  # seconds per phase of it


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def save_size_networks(folder: Path, seed: int = 0) -> tuple[dict[str, torch.nn.Module], list[Path], Path]:
    """Build the `SIZES` networks (random weights, seeded), write each as a testbed network folder
    (network.json + weights.safetensors) and 64 random input rows; return the modules, folders and inputs path."""
    from safetensors.torch import save_file

    from models.given_config import network_recipe
    from models.networks import NetworkSpec, build_network

    modules, folders = {}, []
    for name, width in SIZES.items():
        spec = NetworkSpec(arch="cnn", width=width)
        torch.manual_seed(seed)
        model = build_network(spec).eval()
        net = folder / name
        net.mkdir(parents=True, exist_ok=True)
        (net / "network.json").write_text(network_recipe(spec))
        save_file({k: t.detach().cpu().contiguous() for k, t in model.state_dict().items()},
                  str(net / "weights.safetensors"))
        modules[name] = model
        folders.append(net)
    inputs = folder / "inputs.npy"
    np.save(inputs, np.random.default_rng(seed).standard_normal((64, 1, 28, 28)).astype(np.float32))
    return modules, folders, inputs


def run_stream(sockets: list[Any], net: int | list[int], arrival_ms: np.ndarray, server: np.ndarray,
               ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Serve one arrival stream: task k goes to server `server[k]` at `arrival_ms[k]`, every server running
    network index `net` (or server s network `net[s]`). Returns the per-task frame and the frontend's facts."""
    from testbed import Policy, Workload
    from testbed.frontend import Frontend

    n_servers = len(sockets)
    order = np.argsort(arrival_ms, kind="stable")
    arrival_ms, server = np.asarray(arrival_ms, float)[order], np.asarray(server, np.int64)[order]
    work = Workload(arrival_ms, server, np.arange(len(arrival_ms)) % 64, np.ones((len(arrival_ms), n_servers)))
    policy = Policy("calibrate", "uncoded", "direct", tuple(range(n_servers)), n_servers)
    frontend = Frontend(sockets, policy, work, lead_ms=LEAD_MS)
    # every server runs the chosen network, whatever its 'expert' index
    frontend.nets = [net] * n_servers if isinstance(net, int) else [int(n) for n in net]
    result = frontend.run()
    return result.tasks, result.facts


def _stamps(tasks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    recv = tasks["server_recv_clock_ms"].to_numpy(float)
    start = recv + tasks["queue_ms"].to_numpy(float)
    end = start + (tasks["compute_ms"] + tasks["held_ms"]).to_numpy(float)
    return recv, start, end


def burst_stream(n: int, cycle_ms: float, servers: int = 1, overload: float = 1.5, burst: int = 4,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`n` tasks per server in bursts of `burst`, arriving `overload` times faster than a cycle of `cycle_ms`
    serves them, so every server always has a queue."""
    gap = burst * cycle_ms / overload
    one = np.repeat(np.arange(int(np.ceil(n / burst))) * gap, burst)[:n]
    arrival = np.concatenate([one + 0.01 * s for s in range(servers)])
    return arrival, np.repeat(np.arange(servers), n)


def measure_cycles(sockets: list[Any], net: int, pass_ms: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(cycles, passes) in ms of one busy server running network `net`; the first 5 tasks are warm-up."""
    arrival, server = burst_stream(n + 5, 1.6 * pass_ms + 0.2)
    tasks, _ = run_stream(sockets[:1], net, arrival, server)
    cyc = cycles_ms(*_stamps(tasks))[5:]
    return cyc[np.isfinite(cyc)], tasks["compute_ms"].to_numpy(float)[5:]


def delay_samples(sockets: list[Any], net: int, n: int = 200, every_ms: tuple[float, float] = (1.0, 6.0),
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(out, back) one-way delays (ms) of `n` tasks sent one at a time to an idle server, spaced uniformly in
    `every_ms`: out = from when the send was due to the server's receive stamp, back = from the server's end
    stamp to the frontend holding the output, both on the host's monotonic clock."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.uniform(*every_ms, n))
    tasks, _ = run_stream(sockets[:1], net, arrival, np.zeros(n, np.int64))
    return tasks["out_ms"].to_numpy(float), tasks["back_ms"].to_numpy(float)


def delays_from(out: np.ndarray, back: np.ndarray) -> Delays:
    """The calibration's delay section from pooled (out, back) samples."""
    n, least = len(out), max(5, len(out) // 2)
    return Delays(n_tasks=n, out=_delay(out, f"one-way delays of {n} tasks", least),
                  back=_delay(back, f"one-way delays of {n} tasks", least))


def _delay(values: np.ndarray, what: str, least: int = 20) -> Delay:
    """One direction's delays as the file stores them (finite, positive values only; at least `least` of them)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) < least:
        raise CalibrationError(f"{what}: only {len(values)} could be timed (at least {least} needed)")
    return Delay(median_ms=float(np.median(values)), p99_ms=float(np.quantile(values, 0.99)),
                 mean_ms=float(values.mean()), samples_ms=quantiles(values, QUANTILES).round(5).tolist())


def rehearse(sockets: list[Any], net: int, name: str, rate_per_ms: float, cpus: int, busy_pass_ms: float,
             span_ms: float = REHEARSAL_MS, seed: int = 0) -> tuple[DelayLevel, PassLevel]:
    """Serve Poisson arrivals at `rate_per_ms`, spread evenly at random over every server in `sockets`, all running
    network `net`, and keep what serving does as serving sees it: the one-way delays (out of the tasks that
    reached an idle server — a busy one reads its socket only after its pass, which the simulator queues
    itself — back of every answered task) and the passes no other server computed beside, against
    `busy_pass_ms`, the same network's pass on a server kept busy. The utilization is the servers' pass time over
    the span and the `cpus` cores."""
    rng = np.random.default_rng(seed)
    n = int(np.clip(rate_per_ms * span_ms, 200, 4000))
    arrival = np.cumsum(rng.exponential(1.0 / rate_per_ms, n))
    tasks, _ = run_stream(sockets, net, arrival, rng.integers(0, len(sockets), n))
    recv, start, end = _stamps(tasks)
    idle = idle_at_arrival(tasks["server"].to_numpy(), recv, end)
    compute = tasks["compute_ms"].to_numpy(float)
    span = float(np.nanmax(end) - np.nanmin(recv))
    utilization = float(np.nansum(compute)) / (span * cpus)
    where = f"delays under traffic at {rate_per_ms:.3g} tasks/ms"
    lone = compute[(overlaps(start, start + compute) == 0) & np.isfinite(compute)]
    if len(lone) < 20:
        raise CalibrationError(f"{name} served at {rate_per_ms:.3g} tasks/ms: only {len(lone)} passes ran alone")
    delays = DelayLevel(utilization=utilization, rate_per_ms=rate_per_ms, servers=len(sockets), network=name,
                        n_tasks=len(tasks), out=_delay(tasks["out_ms"].to_numpy(float)[idle], where),
                        back=_delay(tasks["back_ms"].to_numpy(float), where))
    passes = PassLevel(network=name, utilization=utilization, rate_per_ms=rate_per_ms, n_lone=len(lone),
                       lone_pass_mean_ms=float(lone.mean()), busy_pass_mean_ms=busy_pass_ms,
                       extra_ms=float(lone.mean()) - busy_pass_ms)
    return delays, passes


def measure_delays(sockets: list[Any], net: int, n: int = 150, seed: int = 0) -> Delays:
    """One window of one-way delays (see `delay_samples`)."""
    return delays_from(*delay_samples(sockets, net, n, seed=seed))


WAKE_GAPS_MS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def wake_curve(gaps_ms: np.ndarray, extra_ms: np.ndarray) -> tuple[list[float], list[float]]:
    """The simulator's wake table from measured (idle, extra) medians: idle times increasing, extras clipped at
    zero and made non-decreasing by isotonic regression (a longer sleep never wakes to a faster core; what is
    left is noise)."""
    order = np.argsort(gaps_ms)
    idle = np.asarray(gaps_ms, float)[order]
    extra = np.clip(isotonic(np.asarray(extra_ms, float)[order]), 0.0, None)
    keep = np.concatenate([[True], np.diff(idle) > 0])
    return idle[keep].round(5).tolist(), extra[keep].round(5).tolist()


def process_cpu_ms(pid: int) -> float | None:
    """CPU time (ms) every thread of process `pid` has run so far — the server's own loop, torch and ZeroMQ's I/O
    thread alike — from Linux's per-thread scheduler statistics (ns); None where /proc does not tell."""
    total = 0
    try:
        for thread in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{thread}/schedstat") as handle:
                total += int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e6


def _cpu_per_task(sockets: list[Any], net: int, pid: int | None, arrival: np.ndarray,
                  ) -> tuple[pd.DataFrame, float | None]:
    before = process_cpu_ms(pid) if pid is not None else None
    tasks, _ = run_stream(sockets[:1], net, arrival, np.zeros(len(arrival), np.int64))
    after = process_cpu_ms(pid) if pid is not None else None
    per_task = (after - before) / len(arrival) if before is not None and after is not None else None
    return tasks, per_task


def measure_wake(sockets: list[Any], net: int, name: str, warm_compute_ms: float, cycle_ms: float,
                 pid: int | None = None, n: int = 80, gaps_ms: tuple[float, ...] = WAKE_GAPS_MS) -> Wake:
    """One server, tasks spaced so that it sits idle `gap` ms before each, against the same server kept busy.
    The cost of a task is the CPU time the server process (all its threads) spent per task where /proc tells
    (pid given), else the pass alone; the extra is that cost after each idle time minus the busy server's. The
    idle time is read off the server's own stamps (from the end of one task to the start of the next)."""
    arrival, _ = burst_stream(n, 1.6 * warm_compute_ms + 0.2)
    busy_tasks, busy_cpu = _cpu_per_task(sockets, net, pid, arrival)
    warm = busy_cpu if busy_cpu is not None else warm_compute_ms
    rows = []
    for gap in gaps_ms:
        arrival = np.arange(n + 3) * (cycle_ms + gap)
        tasks, cpu = _cpu_per_task(sockets, net, pid, arrival)
        _, start, end = _stamps(tasks)
        order = np.argsort(start)
        idle = np.full(len(tasks), np.nan)
        idle[order[1:]] = start[order[1:]] - end[order[:-1]]
        comp = tasks["compute_ms"].to_numpy(float)
        ok = np.isfinite(idle) & np.isfinite(comp)
        ok[order[:3]] = False  # the first tasks: warm-up
        if ok.sum() < 10:
            raise CalibrationError(f"wake-up after {gap:g} ms idle: only {int(ok.sum())} passes timed")
        med = float(np.median(comp[ok]))
        cost = cpu if cpu is not None and busy_cpu is not None else med
        rows.append(WakeRow(gap_ms=gap, n=int(ok.sum()), idle_median_ms=float(np.median(idle[ok])),
                            compute_median_ms=med, cost_ms=cost, extra_ms=cost - warm))
    idle_ms, extra_ms = wake_curve(np.array([r.idle_median_ms for r in rows]), np.array([r.extra_ms for r in rows]))
    return Wake(network=name, warm_compute_ms=warm_compute_ms, warm_cost_ms=warm,
                cost="process_cpu" if busy_cpu is not None else "pass", rows=rows, idle_ms=idle_ms,
                extra_ms=extra_ms)


def measure_stretch(sockets: list[Any], net: int, others: int, pass_ms: float, n: int) -> np.ndarray:
    """Pass times (ms) of probe server 0 while `others` more servers run the same network saturated, counted over
    the window in which every one of them was busy."""
    m = others + 1
    arrival, server = burst_stream(n, 1.6 * pass_ms + 0.2, servers=m)
    tasks, _ = run_stream(sockets[:m], net, arrival, server)
    _, start, end = _stamps(tasks)
    srv = tasks["server"].to_numpy()
    begin = max(np.nanmin(start[srv == s]) for s in range(m))
    finish = min(np.nanmax(end[srv == s]) for s in range(m))
    probe = (srv == 0) & (start >= begin) & (end <= finish)
    probe[np.flatnonzero(srv == 0)[:3]] = False  # the probe's first tasks: warm-up
    return tasks["compute_ms"].to_numpy(float)[probe]


def _child_env() -> dict[str, str]:
    """The environment of a `python -m calibration.…` child: this checkout first on its import path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")]))


def measure_slicing(spinners: int, seconds: float = 2.0) -> dict[str, Any]:
    """Run `spinners` busy-spinning processes together for `seconds`; their descheduled gaps and the runs between."""
    env = _child_env()
    start = time.perf_counter() + 0.5 + 0.1 * spinners  # time for every interpreter to start
    procs = [subprocess.Popen([sys.executable, "-m", "calibration.spin", repr(start), repr(seconds),
                               repr(SPIN_THRESHOLD_S)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=env, text=True) for _ in range(spinners)]
    runs, gaps = [], []
    try:
        for proc in procs:
            text, _ = proc.communicate(timeout=seconds + 30)
            data = json.loads(text)
            r, g = slice_lengths(np.asarray(data["gap_starts"]), np.asarray(data["gap_ends"]))
            runs.append(r * 1000)
            gaps.append(g * 1000)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    run, gap = np.concatenate(runs), np.concatenate(gaps)
    if len(run) < 5:
        raise CalibrationError(f"{spinners} spinning processes were descheduled only {len(gap)} times in {seconds:g} s")
    return {"spinners": spinners, "spin_s": seconds, "threshold_ms": SPIN_THRESHOLD_S * 1000, "n_runs": len(run),
            "run_median_ms": float(np.median(run)), "run_mean_ms": float(run.mean()),
            "run_p90_ms": float(np.quantile(run, 0.9)), "gap_median_ms": float(np.median(gap)),
            "gap_mean_ms": float(gap.mean()), "quantum_ms": float(np.median(run))}


def corun_phases(n_nets: int, others_max: int, rounds: int) -> list[tuple[int, list[int]]]:
    """The co-running timetable: per round (sizes in order, then reversed, alternately), per size, j = 0 ..
    `others_max` others beside a pass — j + 1 of the `others_max` + 1 processes active, which ones rotating with
    the round so that no core or process is always the one alone."""
    procs = others_max + 1
    phases = []
    for r in range(rounds):
        for net in (range(n_nets) if r % 2 == 0 else range(n_nets - 1, -1, -1)):
            for j in range(others_max + 1):
                phases.append((net, [(r + i) % procs for i in range(j + 1)]))
    return phases


def measure_corun(folders: list[Path], inputs: Path, names: list[str], isolated_ms: dict[str, np.ndarray],
                  others_max: int, rounds: int = CORUN_ROUNDS, phase_s: float = CORUN_PHASE_S) -> list[CorunRow]:
    """How passes computing side by side slow each other, per network size, with no dispatcher: `others_max` + 1
    `calibration.loop` processes follow one timetable (`corun_phases`); a size's stretch at j others is the
    median pass of the phases with j + 1 active (every active process's passes) over that of the phases with one.
    The first 2 passes of each process in each phase (after it slept) are dropped."""
    if others_max < 1:
        return []
    phases = corun_phases(len(folders), others_max, rounds)
    env = dict(_child_env(), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    plan_path = inputs.parent / "corun-plan.json"
    plan = {"folders": [str(f) for f in folders], "inputs": str(inputs), "phases": phases, "phase_s": phase_s}
    plan_path.write_text(json.dumps(plan))
    procs: list[subprocess.Popen] = []
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "calibration.loop", str(plan_path), str(i)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  text=True) for i in range(others_max + 1)]
        deadline = time.monotonic() + 120.0
        for proc in procs:  # every process has loaded its networks before the timetable starts
            ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready or proc.stdout.readline().strip() != "ready":
                raise CalibrationError("co-running measurement: a pass process did not start: "
                                       + ((proc.stderr.read() if proc.poll() is not None else "").strip().splitlines()
                                          or ["no answer within 120 s"])[-1])
        start = time.perf_counter() + 0.1
        for proc in procs:
            proc.stdin.write(f"{start!r}\n")
            proc.stdin.flush()
        passes = []
        for proc in procs:
            text, err = proc.communicate(timeout=len(phases) * phase_s + 60)
            if proc.returncode != 0:
                last = (err.strip().splitlines() or ["no output"])[-1]
                raise CalibrationError(f"co-running measurement: a pass process failed: {last}")
            passes.append(json.loads(text)["passes_ms"])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    rows: list[CorunRow] = []
    for net, name in enumerate(names):
        by_j = {j: np.concatenate([np.asarray(passes[i][k][2:], float) for k, (n, active) in enumerate(phases)
                                   if n == net and len(active) == j + 1 for i in active] or [np.empty(0)])
                for j in range(others_max + 1)}
        if any(len(v) < 10 for v in by_j.values()):
            raise CalibrationError(f"co-running measurement: {name} got under 10 passes in some phase (the machine "
                                   "was too busy or the timetable started late)")
        alone = by_j[0]
        for j, ms in by_j.items():
            rows.append(CorunRow(network=name, isolated_median_ms=float(np.median(isolated_ms[name])), others=j,
                                 n=len(ms), median_ms=float(np.median(ms)), mean_ms=float(ms.mean()),
                                 stretch_median=float(np.median(ms) / np.median(alone)),
                                 stretch_mean=float(ms.mean() / alone.mean())))
    return rows


def measure_dispatcher(sockets: list[Any], net: int, rates_per_ms: tuple[float, float] = (0.15, 1.5),
                       seconds: float = 1.0, seed: int = 0) -> Dispatcher:
    """The frontend's CPU time in two runs (Poisson arrivals at each rate over two servers), solved for
    cpu_s = base_cores × served_s + cpu_ms_per_task / 1000 × tasks."""
    rng = np.random.default_rng(seed)
    runs, priority = [], "unknown"
    for rate in rates_per_ms:
        n = max(20, int(rate * seconds * 1000.0))
        arrival = np.cumsum(rng.exponential(1.0 / rate, n))
        tasks, facts = run_stream(sockets[:2], net, arrival, rng.integers(0, 2, n))
        runs.append(DispatcherRun(rate_per_ms=rate, n_tasks=len(tasks), served_s=facts["served_s"],
                                  cpu_s=facts["frontend_cpu_s"]))
        priority = str(facts.get("frontend_priority", "unknown"))
    design = np.array([[r.served_s, r.n_tasks / 1000.0] for r in runs])
    cpu = np.array([r.cpu_s for r in runs])
    (base, per_task), *_ = np.linalg.lstsq(design, cpu, rcond=None)
    return Dispatcher(base_cores=float(base), cpu_ms_per_task=float(per_task), runs=runs,
                      frontend_priority=priority)


def calibrate(device: str = "cpu", progress: bool = True) -> Calibration:
    """Measure this machine's serving costs on `device` ('cpu', 'cuda', 'cuda:N' or 'auto'); about 40 s on 2 idle
    cores. Servers are stopped on return, on errors and on Ctrl-C; nothing is written."""
    from models.networks import pick_device
    from models.profile import profile_interleaved
    from testbed import LocalCluster, ServerSpec
    from testbed.cluster import scratch_folder

    began, load_start = time.perf_counter(), _load()
    dev = pick_device(device)
    cpus = os.cpu_count() or 1
    steps = (1 + 1 + 2 * len(SIZES) + len(SIZES) + 1 + 2 * len(OTHERS) + 1 + 1
             + len(SIZES) * len(REHEARSAL_UTILIZATION) + 1)
    bar = tqdm(total=steps, desc="calibrate", unit="step", file=sys.stderr, disable=not progress)

    def step(label: str) -> None:
        bar.set_postfix_str(label)

    try:
        with scratch_folder("coinsim-calibrate-") as tmp:
            step("networks + isolated profile")
            modules, folders, inputs = save_size_networks(Path(tmp))
            x = torch.from_numpy(np.load(inputs))
            iso = profile_interleaved(modules, x, dev, samples=200, threads=1, preempted_retries=3)
            bar.update(1)
            names = list(SIZES)
            index = {name: k for k, name in enumerate(names)}
            step("starting servers")
            servers = [ServerSpec(tuple(folders))] * (max(OTHERS) + 1)
            with LocalCluster(servers, inputs, device=str(dev), threads=1) as cluster:
                bar.update(1)
                got: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in names}
                for name in names + names[::-1]:  # two rounds, the second reversed: drift lands on all sizes
                    step(f"cycle {name}")
                    median = float(np.median(iso[name]))
                    n = int(np.clip(600.0 / (2 * median + 0.3), 40, 200))
                    got[name].append(measure_cycles(cluster.sockets, index[name], median, n))
                    bar.update(1)
                points = []
                for name in names:
                    cyc, comp = (np.concatenate(parts) for parts in zip(*got[name], strict=True))
                    if len(cyc) < 10:
                        raise CalibrationError(f"{name}: the server was never kept busy ({len(cyc)} cycles)")
                    points.append((name, iso[name], cyc, comp))
                fit_x = np.array([p[1].mean() for p in points])
                fit_y = np.array([p[2].mean() for p in points])
                overhead, slope, residuals = line_fit(fit_x, fit_y)
                serving = Serving(overhead_ms=overhead, slope=slope, points=[
                    SizePoint(name=name, params=sum(t.numel() for t in modules[name].parameters()),
                              isolated_mean_ms=float(i.mean()), isolated_median_ms=float(np.median(i)),
                              compute_mean_ms=float(np.mean(comp)), cycle_mean_ms=float(c.mean()),
                              cycle_median_ms=float(np.median(c)), cycle_p99_ms=float(np.quantile(c, 0.99)),
                              n_cycles=len(c), residual_ms=float(res))
                    for (name, i, c, comp), res in zip(points, residuals, strict=True)])

                wakes = {}
                for name in [WAKE_NET] + [n for n in names if n != WAKE_NET]:  # every size: a larger network
                    step(f"wake-up after idle, {name}")  # loses more of itself from the caches while idle
                    point = serving.points[names.index(name)]
                    wakes[name] = measure_wake(cluster.sockets, index[name], name,
                                               float(np.median(np.concatenate([c for _, c in got[name]]))),
                                               point.cycle_median_ms, pid=cluster.pids[0] if cluster.pids else None,
                                               n=80 if name == WAKE_NET else 50)
                    bar.update(1)
                wake = wakes[WAKE_NET]

                step("one-way delays")
                # two windows (here and after the dispatcher step) so that a passing disturbance of the host
                # weighs on half the samples, not all of them
                windows = [delay_samples(cluster.sockets, index[SMALL], seed=0)]
                bar.update(1)

                rows: list[StretchRow] = []
                mid = float(np.median(iso[MID]))
                passes: dict[int, list[np.ndarray]] = {k: [] for k in OTHERS}
                for k in OTHERS + OTHERS[::-1]:  # two rounds, the second reversed
                    step(f"{k} other server(s)")
                    n = int(np.clip(250 / mid, 40, 125))
                    passes[k].append(measure_stretch(cluster.sockets, index[MID], k, mid, n=n))
                    bar.update(1)
                for k in OTHERS:
                    ms = np.concatenate(passes[k])
                    if len(ms) < 10:
                        raise CalibrationError(f"time slicing with {k} other server(s): only {len(ms)} passes timed")
                    med, p99 = float(np.median(ms)), float(np.quantile(ms, 0.99))
                    base = rows[0] if rows else None
                    rows.append(StretchRow(others=k, n=len(ms), median_ms=med, p90_ms=float(np.quantile(ms, 0.9)),
                                           p99_ms=p99, mean_ms=float(ms.mean()),
                                           stretch_median=med / base.median_ms if base else 1.0,
                                           stretch_p99=p99 / base.p99_ms if base else 1.0))

                step(f"{cpus + 1} spinning processes")
                spin = measure_slicing(cpus + 1)
                slicing = Slicing(network=MID, isolated_median_ms=mid, stretch=rows, **spin)
                bar.update(1)

                step("dispatcher share")
                dispatcher = measure_dispatcher(cluster.sockets, index[SMALL])
                windows.append(delay_samples(cluster.sockets, index[SMALL], seed=1))
                bar.update(1)

                levels, under_load, crowd = [], [], cluster.sockets[:min(cpus + 1, len(cluster.sockets))]
                for name in [MID] + [n for n in names if n != MID]:  # the delays from the mid size's rehearsals
                    point = serving.points[names.index(name)]
                    for k, share in enumerate(REHEARSAL_UTILIZATION):
                        step(f"serving traffic, {name}, {share:.0%} of the cores busy")
                        rate = share * min(cpus, len(crowd)) / point.cycle_mean_ms
                        delay_level, pass_level = rehearse(crowd, index[name], name, rate, cpus,
                                                           point.compute_mean_ms, seed=k)
                        if name == MID:
                            levels.append(delay_level)
                        under_load.append(pass_level)
                        bar.update(1)
                levels.sort(key=lambda level: level.utilization)
                if any(b.utilization <= a.utilization for a, b in zip(levels, levels[1:], strict=False)):
                    raise CalibrationError("the delay rehearsals did not reach distinct core utilizations")
                delays = delays_from(*(np.concatenate(parts) for parts in zip(*windows, strict=True)))
                delays = delays.model_copy(update={"under_load": levels})
            step("co-running passes, no dispatcher")  # the servers are stopped: nothing else on the cores
            corun = measure_corun(folders, inputs, names, iso, min(cpus - 1, max(OTHERS))) \
                if dev.type == "cpu" else []
            bar.update(1)
    finally:
        bar.close()
    machine = Machine.model_validate(machine_key(str(dev)))
    return Calibration(machine=machine, created=datetime.now(UTC).isoformat(timespec="seconds"),
                       seconds=round(time.perf_counter() - began, 2),
                       load_average=LoadAverage(start=load_start, end=_load()),
                       serving=serving, delays=delays, slicing=slicing, dispatcher=dispatcher, wake=wake,
                       wake_sizes=[wakes[name] for name in names], corun=corun, passes_under_load=under_load)


SERVED_PROFILE_MS = 4000.0  # least span of each served-profile rehearsal (its tasks: rate x span, 300 at least)
SERVED_MIN_LONE = 1500  # lone passes aimed at per network and level (their quantiles are the simulator's samples:
# with a few hundred, a level's p99 is its fifth-largest pass, and two profiles of the same networks differed by up
# to 70 % there)
SERVED_QUANTILES = 1000  # quantiles kept per level, so that the tail of 1,500 passes is kept, not cut at its p99.75
SERVED_MAX_MS = 30_000.0  # ... but no level runs longer than this
PROBE_MIN_LONE = 200  # a served profile's probe: lone passes aimed at per network, at the lowest level only
PROBE_MS = 1000.0  # ... and its least span (the default scenario's probe: 11 s with the servers' start; a profile 54 s)


def measure_served_passes(folders: list[Path], inputs: Path, names: list[str], isolated_ms: dict[str, float],
                          device: str = "cpu", calibration: Calibration | None = None,
                          utilizations: tuple[float, ...] = REHEARSAL_UTILIZATION,
                          span_ms: float = SERVED_PROFILE_MS, seed: int = 0, progress: bool = False,
                          min_lone: int = SERVED_MIN_LONE) -> dict[str, ServedPasses]:
    """The served-pass profile (`calibration.passes`) of the networks saved in `folders` (testbed network folders,
    task-net order, named `names`, isolated mean pass `isolated_ms[name]`): CPU count + 1 real server processes
    each holding every network serve Poisson arrivals that keep each share in `utilizations` of the cores
    computing, server s running network s of a group of at most that many networks; per network and level, the
    passes that ran with no other server computing beside them, and the group's one-way delays (out: of tasks
    that reached an idle server, back: of every answered task). Each level runs `span_ms` at least, longer where
    that is needed for about `min_lone` lone passes per network (the tail quantiles of a few dozen passes are
    their largest few), at most SERVED_MAX_MS: a few seconds per group and level for small networks, up to half
    a minute for large ones. Servers stopped on return, on errors and on Ctrl-C."""
    from testbed import LocalCluster, ServerSpec

    if len(folders) != len(names) or any(name not in isolated_ms for name in names):
        raise ValueError("served profile: one folder and one isolated pass per network")
    cpus = 1 if device.startswith("cuda") else (os.cpu_count() or 1)
    n_servers = max(2, (os.cpu_count() or 1) + 1)
    groups = [list(range(k, min(k + n_servers, len(names)))) for k in range(0, len(names), n_servers)]
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in names}  # per level: its lone passes
    rng = np.random.default_rng(seed)
    bar = tqdm(total=len(groups) * len(utilizations), desc="served profile", unit="level", file=sys.stderr,
               disable=not progress)
    try:
        with LocalCluster([ServerSpec(tuple(folders))] * n_servers, inputs, device=device, threads=1) as cluster:
            for group in groups:
                nets = [group[s % len(group)] for s in range(n_servers)]
                passes = np.array([isolated_ms[names[j]] for j in nets], float)
                per_task = float(np.mean([calibration.work_beside_pass_ms(p) for p in passes])) \
                    if calibration is not None else 0.1  # the server's own work beside a pass
                dispatch = max(calibration.dispatcher.cpu_ms_per_task, 0.0) \
                    if calibration is not None and not device.startswith("cuda") else 0.0  # on the same cores
                guess = float(np.mean(passes)) * 2.0  # a first guess of the served pass; then the last level's
                for share in utilizations:
                    rate = share * min(cpus, n_servers) / (guess + per_task + dispatch)
                    # a pass runs alone while none of the other servers computes, each busy ~ share x cpus / servers
                    lone_share = (1.0 - share * min(cpus, n_servers) / n_servers) ** (n_servers - 1)
                    wanted = min_lone * n_servers / max(lone_share, 0.05)  # tasks spread evenly over the servers
                    n = int(max(300, min(max(rate * span_ms, wanted), rate * max(span_ms, SERVED_MAX_MS))))
                    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
                    tasks, _ = run_stream(cluster.sockets, nets, arrival, uneven_servers(rng, n, n_servers))
                    recv, start, end = _stamps(tasks)
                    compute = tasks["compute_ms"].to_numpy(float)
                    idle = idle_at_arrival(tasks["server"].to_numpy(), recv, end)
                    # how long each pass's server sat idle before it, and the other servers' passes meanwhile
                    slept = idle_before(tasks["server"].to_numpy(), start, end)
                    others = others_busy_before(tasks["server"].to_numpy(), start, start + compute, slept)
                    where = f"served profile at {share:.0%} of the cores"
                    out_ms = tasks["out_ms"].to_numpy(float)
                    out = _served_delay(out_ms[idle], where)
                    # how many other servers computed when each task was due (its receipt less its trip) and
                    # when it ended (its output leaving)
                    ran_on = tasks["server"].to_numpy()
                    busy = computing_at(ran_on, start, start + compute, recv - out_ms)
                    busy_back = computing_at(ran_on, start, start + compute, end)
                    back = _served_delay(tasks["back_ms"].to_numpy(float), where)
                    span = float(np.nanmax(end) - np.nanmin(start))
                    # the busy share of the cores as the simulator counts it: tasks x (pass + per-task work)
                    utilization = (float(np.nansum(compute)) + n * per_task) / (span * cpus)
                    guess = float(np.nanmean(compute))
                    alone = (overlaps(start, start + compute) == 0) & np.isfinite(compute) & (compute > 0)
                    alone[: min(10, n)] = False  # the stream's first tasks: warm-up
                    ran = np.asarray(nets)[tasks["server"].to_numpy()]
                    # passes another server's start joined on a free core, and the lone passes they are set against
                    lone, joined, joiner = joined_passes(tasks["server"].to_numpy(), start, start + compute)
                    lone[: min(10, n)] = joined[: min(10, n)] = False
                    # the server's own work beside the pass: before its output left, after it (went straight on)
                    before = tasks["held_ms"].to_numpy(float, copy=True)
                    after = next_start(tasks["server"].to_numpy(), recv, start, end) - end
                    before[: min(10, n)] = after[: min(10, n)] = np.nan
                    steady = np.arange(n) >= min(10, n)  # past the stream's warm-up
                    for j in group:
                        # a server's consecutive passes: their scores and its idle time between them
                        on_j = steady & (ran == j)
                        pairs = consecutive_pairs(tasks["server"].to_numpy()[on_j], start[on_j], end[on_j],
                                                  compute[on_j])
                        mine = compute[alone & (ran == j)]
                        if len(mine) < 20:
                            raise CalibrationError(f"served profile of {names[j]} at {share:.0%} of the cores: only "
                                                   f"{len(mine)} passes ran with no other server computing")
                        raw[names[j]].append({"utilization": utilization, "rate_per_ms": rate, "passes": mine,
                                              "slept": slept[alone & (ran == j)],
                                              "others": others[alone & (ran == j)], "out_ms": out, "back_ms": back,
                                              "busy": busy[idle], "busy_out_ms": out_ms[idle],
                                              "busy_back": busy_back, "busy_back_ms": tasks["back_ms"].to_numpy(float),
                                              "lone_ms": compute[lone & (ran == j)],
                                              "joined_ms": compute[joined & (ran == j)],
                                              "joiner_ms": compute[joiner[joined & (ran == j)]],
                                              "before_ms": before[ran == j], "after_ms": after[ran == j],
                                              "pairs": pairs})
                    bar.update(1)
    finally:
        bar.close()
    return {name: served_passes(levels) for name, levels in raw.items()}


RARE_SHARE = 0.05  # of the traffic a server gets in its third of a served-profile stream


def uneven_servers(rng: np.random.Generator, n: int, servers: int, rare: float = RARE_SHARE) -> np.ndarray:
    """Which server each of `n` tasks goes to: the stream in `servers` equal blocks, in block b server b takes
    `rare` of the tasks and the others share the rest evenly — every server a third of the time the rarely used
    one (as a coded or backup server is), whose passes follow long gaps while the others compute; over the whole
    stream each server takes 1 / servers of the tasks."""
    if servers < 2:
        return np.zeros(n, np.int64)
    block = np.minimum(np.arange(n) * servers // max(n, 1), servers - 1)
    out = np.empty(n, np.int64)
    for b in range(servers):
        rows = np.flatnonzero(block == b)
        p = np.full(servers, (1.0 - rare) / (servers - 1))
        p[b] = rare
        out[rows] = rng.choice(servers, size=len(rows), p=p)
    return out


def _served_delay(values: np.ndarray, what: str) -> tuple[float, ...]:
    """A served-profile level's one-way delays (checked as `_delay` checks them) as SERVED_QUANTILES quantiles."""
    _delay(values, what)
    values = np.asarray(values, float)
    return tuple(quantiles(values[np.isfinite(values) & (values > 0)], SERVED_QUANTILES).round(5))


def served_passes(levels: list[dict[str, Any]]) -> ServedPasses:
    """A network's served-pass profile from its levels' lone passes (`passes`, ms), how long each one's server
    sat idle before it (`slept`) and the other servers' busy time meanwhile (`others`): the wake's two curves from
    all of them (`calibration.passes.wake_two`), then per level the passes with their own extra taken off, as
    SERVED_QUANTILES quantiles, beside the level's delays; and, where the levels have them (`busy`: other servers
    computing when each idle-arrival task was due, `busy_out_ms`: its delay; `busy_back`: when each task ended,
    `busy_back_ms`: its output's delay), the delay tables by those counts, levels pooled
    (`calibration.passes.delays_by_busy`)."""
    def joined(key: str) -> np.ndarray:
        return np.concatenate([np.asarray(level[key], float) for level in levels])

    idle, busy = wake_two(joined("slept"), joined("others"), joined("passes"))
    measured = all("busy" in level for level in levels)
    by_busy = {f"{way}_by_busy_ms": delays_by_busy(joined(f"busy{tail}"), joined(f"busy_{way}_ms"),
                                                   len(levels[0]["out_ms"])) if measured else ()
               for way, tail in (("out", ""), ("back", "_back"))}
    out = []
    for level in levels:
        mine = np.asarray(level["passes"], float)
        warm = mine - wake_extra(idle, np.asarray(level["slept"], float)) - wake_extra(busy, np.asarray(
            level["others"], float))
        warm = np.maximum(warm, 0.05 * mine)  # what a longer sleep adds is a median shift; no pass goes below 0
        out.append(ServedLevel(utilization=level["utilization"], rate_per_ms=level["rate_per_ms"], n_lone=len(mine),
                               samples_ms=tuple(quantiles(warm, SERVED_QUANTILES).round(5)),
                               served_mean_ms=round(float(np.mean(mine)), 5),
                               out_ms=tuple(level["out_ms"]), back_ms=tuple(level["back_ms"])))
    corr: dict[str, tuple[float, ...]] = {}
    if all("pairs" in level for level in levels):
        first, second, gap = (np.concatenate([level["pairs"][k] for level in levels]) for k in range(3))
        corr = dict(zip(("pass_corr_idle_ms", "pass_corr_rho"), pass_correlation(first, second, gap), strict=True))
    return ServedPasses(levels=tuple(out), wake_idle_ms=idle[0], wake_idle_extra_ms=idle[1], wake_busy_ms=busy[0],
                        wake_busy_extra_ms=busy[1], **by_busy, joined_share=joined_chance(levels),
                        **work_beside(levels), **corr)


def work_beside(levels: list[dict[str, Any]], least: int = BESIDE_LEAST) -> dict[str, float]:
    """`ServedPasses.before_output_ms` / `after_output_ms` from a network's levels' per-task `before_ms` (the pass's
    end to the output's send) and `after_ms` (the send to the next task's start where the server went straight
    on; NaN elsewhere), levels pooled, the means; empty when fewer than `least` tasks went straight on (or the
    levels were measured without them)."""
    if not all("after_ms" in level for level in levels):
        return {}
    before, after = (np.concatenate([np.asarray(level[key], float) for level in levels])
                     for key in ("before_ms", "after_ms"))
    before, after = before[np.isfinite(before) & (before >= 0)], after[np.isfinite(after) & (after >= 0)]
    if len(after) < least or not len(before):
        return {}
    return {"before_output_ms": round(float(np.mean(before)), 5), "after_output_ms": round(float(np.mean(after)), 5)}


def joined_chance(levels: list[dict[str, Any]], least: int = JOINED_LEAST) -> float | None:
    """The chance that a server starting on a free core holds a computing one off its core (`joined_share`) from
    a network's levels' lone, joined and joiner passes (`lone_ms`, `joined_ms`, `joiner_ms`), each level with at
    least 20 joined and 20 lone passes, averaged weighted by their joined passes; None when they hold fewer than
    `least` joined passes in all (or were measured without them)."""
    parts = [(len(level["joined_ms"]), joined_share(level["lone_ms"], level["joined_ms"], level["joiner_ms"]))
             for level in levels if len(level.get("joined_ms", ())) >= 20 and len(level.get("lone_ms", ())) >= 20]
    if sum(count for count, _ in parts) < least:
        return None
    return round(float(np.average([h for _, h in parts], weights=[count for count, _ in parts])), 5)
