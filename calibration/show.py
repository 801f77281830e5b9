"""A calibration as readable text (`coinsim calibrate --show`); no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.file import Calibration, Delays


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return ["  " + "  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in
                             enumerate(zip(line, widths, strict=True))).rstrip() for line in lines]


def _ms(value: float) -> str:
    return f"{value:.3f}"


def _under_load(d: Delays) -> list[str]:
    if not d.under_load:
        return ["  (no delays under serving traffic: the simulator draws the idle-server ones)"]
    level = d.under_load[0]
    return [f"one-way delays (ms) under serving traffic — Poisson arrivals over {level.servers} servers of "
            f"{level.network}; out of tasks that reached an idle server, back of every task; what the simulator "
            "draws, interpolated to a point's core utilization:",
            *_table(["cores busy", "tasks/ms", "tasks", "out p50", "out p90", "out p99", "back p50", "back p99"],
                    [[f"{x.utilization:.0%}", f"{x.rate_per_ms:.3f}", str(x.n_tasks), _ms(x.out.median_ms),
                      _ms(float(np.quantile(x.out.samples_ms, 0.9))), _ms(x.out.p99_ms), _ms(x.back.median_ms),
                      _ms(x.back.p99_ms)] for x in d.under_load])]


def _corun(cal: Calibration) -> list[str]:
    if not cal.corun:
        return ["co-running: not measured (one CPU, or a GPU): no slowdown of servers computing side by side"]
    sizes = sorted({(r.isolated_median_ms, r.network) for r in cal.corun})
    reads = [f"{name} ({ms:.3f} ms) " + ", ".join(f"×{f:.2f}" for f in cal.corun_slowdown(ms)) for ms, name in sizes]
    return ["co-running: passes of one network run side by side in j + 1 processes on a timetable, no dispatcher "
            "(its competition for the cores is the dispatcher share below)",
            *_table(["network", "isolated p50", "j others", "passes", "p50", "mean", "p50 ×", "mean ×"],
                    [[r.network, _ms(r.isolated_median_ms), str(r.others), str(r.n), _ms(r.median_ms),
                      _ms(r.mean_ms), f"{r.stretch_median:.2f}", f"{r.stretch_mean:.2f}"] for r in cal.corun]),
            "simulator's service.corun_slowdown (p50 × for j = 1 .. CPU count − 1 others, at least 1, read in log "
            "pass time between the sizes): " + "; ".join(reads)]


def describe(cal: Calibration, path: Path | str | None = None) -> str:
    """Machine, fitted serving line with its per-size points, one-way delays, time-slicing table, quantum and
    the dispatcher's share, as plain text."""
    m, s, d, sl, disp = cal.machine, cal.serving, cal.delays, cal.slicing, cal.dispatcher
    load = cal.load_average
    lines = [f"calibration {path}" if path is not None else "calibration",
             f"machine: {m.cpu_model}, {m.cpu_count} CPUs, device {m.device}, torch {m.torch}, python {m.python}",
             f"made {cal.created} in {cal.seconds:.1f} s; load average {', '.join(f'{x:.2f}' for x in load.start)} "
             f"at the start, {', '.join(f'{x:.2f}' for x in load.end)} at the end",
             "",
             f"serving cost per task (ms): cycle = {s.overhead_ms:.3f} + {s.slope:.3f} × isolated pass",
             *_table(["network", "params", "isolated mean", "isolated p50", "pass in service", "cycle mean",
                      "cycle p50", "cycle p99", "cycles", "residual"],
                     [[p.name, f"{p.params:,}", _ms(p.isolated_mean_ms), _ms(p.isolated_median_ms),
                       _ms(p.compute_mean_ms), _ms(p.cycle_mean_ms), _ms(p.cycle_median_ms), _ms(p.cycle_p99_ms),
                       str(p.n_cycles), f"{p.residual_ms:+.3f}"] for p in s.points]),
             "",
             f"one-way delays (ms), {d.n_tasks} tasks to an idle server:",
             *_table(["direction", "median", "p99", "mean"],
                     [[name, _ms(x.median_ms), _ms(x.p99_ms), _ms(x.mean_ms)]
                      for name, x in (("out (frontend → server)", d.out), ("back (server → frontend)", d.back))]),
             *_under_load(d),
             "",
             f"time slicing: pass of {sl.network} (isolated p50 {sl.isolated_median_ms:.3f} ms) on a probe server "
             "beside k other saturated servers (ms)",
             *_table(["k others", "passes", "p50", "p90", "p99", "mean", "p50 ×", "p99 ×"],
                     [[str(r.others), str(r.n), _ms(r.median_ms), _ms(r.p90_ms), _ms(r.p99_ms), _ms(r.mean_ms),
                       f"{r.stretch_median:.2f}", f"{r.stretch_p99:.2f}"] for r in sl.stretch]),
             *_corun(cal),
             f"OS time slice: {sl.spinners} spinning processes for {sl.spin_s:g} s, {sl.n_runs} runs between "
             f"descheduled gaps (> {sl.threshold_ms:g} ms): quantum (median run) {sl.quantum_ms:.3f} ms, "
             f"mean run {sl.run_mean_ms:.3f}, p90 run {sl.run_p90_ms:.3f}; gap median {sl.gap_median_ms:.3f}, "
             f"mean {sl.gap_mean_ms:.3f} ms",
             "",
             f"dispatcher: {disp.base_cores:.3f} cores + {disp.cpu_ms_per_task:.3f} ms CPU per task "
             f"(frontend at {disp.frontend_priority} priority; runs at "
             f"{' and '.join(f'{r.rate_per_ms:g}' for r in disp.runs)} tasks/ms); cores left to the "
             "servers: " + ", ".join(f"{cal.server_cores(rate):.2f} at {rate:g}/ms" for rate in (0.1, 1.0))]
    wake = cal.wake
    what = "CPU time of the server process per task" if wake.cost == "process_cpu" else "pass"
    lines += ["", f"wake-up: {what} of {wake.network} after the server sat idle (kept busy: "
                  f"{wake.warm_cost_ms:.3f} ms; its pass {wake.warm_compute_ms:.3f} ms)",
              *_table(["idle given", "idle measured", "tasks", "pass p50", "cost", "extra"],
                      [[_ms(r.gap_ms), _ms(r.idle_median_ms), str(r.n), _ms(r.compute_median_ms), _ms(r.cost_ms),
                        f"{r.extra_ms:+.3f}"] for r in wake.rows]),
              "  simulator's service.wake: " + ", ".join(f"{i:.2f} ms idle -> +{e:.3f} ms"
                                                        for i, e in zip(wake.idle_ms, wake.extra_ms, strict=True))]
    others = [w for w in cal.wake_sizes if w.network != wake.network]
    if others:
        lines += ["  the same curve for the other sizes (extra ms after each idle time, ms):",
                  *("  " + row for row in _table(
                      ["network", "kept busy", *(f"{r.gap_ms:g} ms" for r in others[0].rows)],
                      [[w.network, _ms(w.warm_cost_ms), *(f"{r.extra_ms:+.3f}" for r in w.rows)] for w in others]))]
    return "\n".join(lines)
