"""A serving calibration written by hand for tests: this machine's key, round numbers chosen so every quantity the
served latency model derives from it can be worked out on paper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OVERHEAD_MS = 0.2  # a served task costs its server 0.2 ms + SLOPE x its isolated pass
SLOPE = 1.5
IN_SERVICE = 1.1  # a pass runs 1.1 x its isolated time in a busy server: the rest of a cycle, 0.2 + 0.4 x pass, is
# the server's work beside the pass
OUT_MS = 0.1  # one-way delays: every sample the same, so a latency is exact
BACK_MS = 0.05
QUANTUM_MS = 2.0
BASE_CORES = 0.1  # the dispatcher: 0.1 cores + 0.05 ms of CPU per task
CPU_MS_PER_TASK = 0.05
WAKE_IDLE_MS = (1.0, 4.0)  # a server idle 1 ms computes its next pass 0.1 ms longer, idle 4 ms or more 0.3 ms
WAKE_EXTRA_MS = (0.1, 0.3)


def calibration_dict(machine: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    from calibration import machine_key

    def delay(ms: float) -> dict[str, Any]:
        return {"median_ms": ms, "p99_ms": ms, "mean_ms": ms, "samples_ms": [ms] * 5}

    def point(name: str, pass_ms: float) -> dict[str, Any]:
        cycle = OVERHEAD_MS + SLOPE * pass_ms
        return {"name": name, "params": 1000, "isolated_mean_ms": pass_ms, "isolated_median_ms": pass_ms,
                "compute_mean_ms": IN_SERVICE * pass_ms, "cycle_mean_ms": cycle, "cycle_median_ms": cycle,
                "cycle_p99_ms": cycle,
                "n_cycles": 100, "residual_ms": 0.0}

    row = {"others": 0, "n": 100, "median_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0,
           "stretch_median": 1.0, "stretch_p99": 1.0}
    data = {
        "schema_version": 4,
        "machine": machine or machine_key("cpu"),
        "created": "2026-12-03T00:00:00+00:00",
        "seconds": 1.0,
        "load_average": {"start": [0.0, 0.0, 0.0], "end": [0.0, 0.0, 0.0]},
        "serving": {"overhead_ms": OVERHEAD_MS, "slope": SLOPE,
                    "points": [point("small", 0.1), point("mid", 1.0), point("large", 4.0)]},
        "delays": {"n_tasks": 5, "out": delay(OUT_MS), "back": delay(BACK_MS)},
        "slicing": {"network": "mid", "isolated_median_ms": 1.0, "stretch": [row], "spinners": 3, "spin_s": 1.0,
                    "threshold_ms": 0.05, "n_runs": 10, "run_median_ms": QUANTUM_MS, "run_mean_ms": QUANTUM_MS,
                    "run_p90_ms": QUANTUM_MS, "gap_median_ms": 1.0, "gap_mean_ms": 1.0, "quantum_ms": QUANTUM_MS},
        "dispatcher": {"base_cores": BASE_CORES, "cpu_ms_per_task": CPU_MS_PER_TASK,
                       "runs": [{"rate_per_ms": 0.1, "n_tasks": 100, "served_s": 1.0, "cpu_s": 0.105},
                                {"rate_per_ms": 1.0, "n_tasks": 1000, "served_s": 1.0, "cpu_s": 0.15}],
                       "frontend_priority": "realtime"},
        "wake": {"network": "mid", "warm_compute_ms": 1.0, "warm_cost_ms": 1.0, "cost": "process_cpu",
                 "rows": [{"gap_ms": g, "n": 50, "idle_median_ms": g, "compute_median_ms": 1.0 + e,
                           "cost_ms": 1.0 + e, "extra_ms": e}
                          for g, e in zip(WAKE_IDLE_MS, WAKE_EXTRA_MS, strict=True)],
                 "idle_ms": list(WAKE_IDLE_MS), "extra_ms": list(WAKE_EXTRA_MS)},
    }
    data.update(changes)
    return data


def write_calibration(path: Path, **changes: Any) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration_dict(**changes), indent=1))
    return path


def hand_calibration(**changes: Any) -> Any:
    from calibration import Calibration

    return Calibration.model_validate(calibration_dict(**changes))
