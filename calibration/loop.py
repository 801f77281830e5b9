"""A process that runs forward passes on a shared timetable: ``python -m calibration.loop PLAN.json INDEX``.

PLAN.json holds ``{"phase_s": s, "folders": [...], "inputs": path, "phases": [[net, [active...]], ...]}``. The
process loads the networks, prints ``ready`` and reads a start time from stdin: from that perf_counter time (the
host's monotonic clock, shared by every process on Linux), phase k
lasts ``phase_s`` seconds; in it, the processes whose INDEX is listed as active run network ``net`` on one input
row back to back, timing each pass, and the others sleep. No sockets, no dispatcher: what it measures is how
passes computing side by side on different cores slow each other (shared caches, memory bandwidth, SMT
siblings), apart from the competition for cores that serving adds. One thread, like a testbed server. At the
end it prints one JSON line: ``{"passes_ms": [[...] per phase]}`` (an empty list where it was not active).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path


def run(plan: dict, index: int, start: Callable[[], float]) -> dict[str, list[list[float]]]:
    import numpy as np
    import torch

    from testbed.server import load_network

    torch.set_num_threads(1)
    models = [load_network(Path(folder), "cpu") for folder in plan["folders"]]
    x = torch.from_numpy(np.load(plan["inputs"])[:1])
    clock, out = time.perf_counter, []
    with torch.inference_mode():
        for model in models:  # first passes pay one-off costs (allocator, caches)
            for _ in range(5):
                model(x)
        t0 = start()
        for k, (net, active) in enumerate(plan["phases"]):
            begin, end = t0 + k * plan["phase_s"], t0 + (k + 1) * plan["phase_s"]
            times: list[float] = []
            while clock() < begin:
                time.sleep(min(0.001, max(begin - clock(), 0.0)))
            if index in active:
                model = models[net]
                while True:
                    a = clock()
                    if a >= end:
                        break
                    model(x)
                    times.append((clock() - a) * 1000.0)
            out.append(times)
    return {"passes_ms": out}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    plan = json.loads(Path(args[0]).read_text())

    def start() -> float:
        print("ready", flush=True)
        return float(sys.stdin.readline())

    print(json.dumps(run(plan, int(args[1]), start)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
