"""A busy-spinning process that notes when it was off the core: ``python -m calibration.spin START SECONDS THRESHOLD``.

From perf_counter time START (the host's monotonic clock, shared by every process on Linux) for SECONDS, it reads
the clock in a tight loop; whenever two consecutive readings are more than THRESHOLD seconds apart it was
descheduled in between, and it keeps that pair (the online form of `analysis.descheduled_gaps`). At the end it
prints one JSON line: {"gap_starts": [...], "gap_ends": [...], "first": t, "last": t} in seconds. Ctrl-C is left to
the parent, which stops it.
"""

from __future__ import annotations

import json
import signal
import sys
import time


def spin(start: float, seconds: float, threshold: float) -> dict[str, object]:
    clock = time.perf_counter
    while clock() < start - 0.002:
        time.sleep(0.001)
    while clock() < start:
        pass
    stop = start + seconds
    starts: list[float] = []
    ends: list[float] = []
    first = last = clock()
    while last < stop:
        now = clock()
        if now - last > threshold:
            starts.append(last)
            ends.append(now)
        last = now
    return {"gap_starts": starts, "gap_ends": ends, "first": first, "last": last}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    start, seconds, threshold = (float(a) for a in args)
    print(json.dumps(spin(start, seconds, threshold)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
