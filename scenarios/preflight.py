"""Checks of everything a run will touch besides the scenario file itself, made before any work.

`coinsim run`, `coinsim sweep` and `coinsim validate` all call `check_before_work` after the scenario has
been loaded (which already checked its tables, numbers, loads and the files it names): the output folder, an
interrupted earlier run, the memory the query records will take and the Dask scheduler. Each failure is a
ScenarioError with one line for the user.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from scenarios.schema import Scenario, ScenarioError, scheduler_address, stand_in_configs, trace_arrivals
from sim import SimConfig
from sim.memory import available_memory, size_text

CONNECT_TIMEOUT_S = 2.0
PROBE_QUERIES = 256  # the short run that measures a query record's bytes
SLOPE_QUERIES = 12_000  # the short runs whose peaks' difference measures a query's share of a point's peak: a and
# 4a queries, a = this / servers (at least 128), so that per-query costs outweigh the fixed ones (below ~4,000 queries
# on 3 servers a point's peak is mostly fixed costs: a slope from 1,000 and 4,000 came out at a third of the true one)
REPORT_COPIES = 3  # the report reads its columns through arrow into pandas and filters a copy
SCREEN_QUERIES = 1_000  # one short run whose peak over its queries bounds a query's share from above (fixed costs
# included): a run that fits by that bound needs no slope (the slope's two runs took ~5 s of every run's checks)
PILOT_QUERIES = 4  # the first short run: how many tasks a query sends, over the point's policies
PROBE_TASKS = 200_000  # at most this many tasks in each of the other short runs (down to PILOT_QUERIES queries):
# a redundant dispatch copies a query to every instance of its expert, 100,000 tasks a query in a fleet of 100,000
# instances an expert, where a 1,000-query screen alone was 10^8 tasks (it did not end in 15 minutes)


def check_before_work(scenario: Scenario, raw: dict[str, Any], out_root: Path, resume: bool,
                      report: bool = True) -> None:
    """Every check a run needs besides the scenario's own validation; ScenarioError on the first failure.
    `report`: the run renders its report (so its headline records must fit in memory when read back)."""
    from scenarios.runner import check_unfinished

    check_output(out_root, scenario.name)
    check_unfinished(out_root, scenario.name, raw, resume)
    check_memory(scenario, report=report)
    check_calibration(scenario)
    if scenario.sweep is not None and scenario.sweep.executor == "dask" and scenario.sweep.scheduler:
        check_scheduler(scenario.sweep.scheduler)


def check_calibration(scenario: Scenario) -> None:
    """A calibration file the scenario names (`profile.calibration`, `--calibration`) must be readable, whole, of
    this schema and made on this machine, device and torch version. (This machine's own cached calibration is
    re-made instead when it cannot be used.)"""
    from scenarios.runner import scenario_device, uses_calibration

    if not uses_calibration(scenario) or scenario.profile.calibration is None:
        return
    from calibration import CalibrationError, load_calibration, machine_key

    try:
        load_calibration(Path(scenario.profile.calibration).expanduser(),
                         expect_machine=machine_key(scenario_device(scenario)))
    except CalibrationError as error:
        raise ScenarioError(f"--calibration: {error}") from None


def check_output(out_root: Path, scenario_name: str) -> None:
    """OUT/<scenario>/ must be a folder that exists or can be made, and that this process may write in."""
    from atomic import blocked_by

    blocked = blocked_by(out_root / scenario_name)
    if blocked is None:
        return
    existing, why = blocked
    if why == "file":
        where = "is a file" if existing == out_root else f"is inside {existing}, which is a file"
        raise ScenarioError(f"--out {out_root} {where}, not a folder")
    raise ScenarioError(f"--out {out_root}: no permission to write in {existing}")


def check_scheduler(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A Dask scheduler must answer at `address` within `timeout_s` seconds in all.

    On tcp:// the scheduler speaks first: its handshake starts with an 8-byte little-endian length. Reading that
    tells a scheduler from a port that merely accepts connections (a proxy, a web server), which would
    otherwise fail much later, inside Dask. On tls:// only the connection is checked.
    """
    import time

    try:
        host, port = scheduler_address(address)
    except ValueError as error:
        raise ScenarioError(f"sweep.scheduler: {error}") from None
    deadline = time.monotonic() + timeout_s

    def refuse(reason: str) -> ScenarioError:
        return ScenarioError(f"sweep.scheduler: no Dask scheduler answers at {address} within {timeout_s:g} s "
                             f"({reason}); start it or fix the address")

    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            if address.strip().startswith("tls://"):
                return
            header = b""
            while len(header) < 8:
                connection.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = connection.recv(8 - len(header))
                if not chunk:
                    raise refuse("it closed the connection")
                header += chunk
    except TimeoutError:
        raise refuse("no answer") from None
    except OSError as error:
        raise refuse(error.strerror or str(error) or type(error).__name__) from None
    if not 0 < int.from_bytes(header, "little") < 1 << 20:
        raise refuse("what answers there does not speak Dask's protocol")


def _queries(scenario: Scenario, table: dict[str, Any], config: SimConfig) -> int | None:
    """Queries one point simulates, or None when that depends on service times not measured yet."""
    if config.traffic.kind == "trace":
        return trace_arrivals(config)
    if config.n_queries is not None:
        return config.n_queries
    traffic = table.get("traffic") or {}
    if scenario.models is not None and ("load" in traffic or "ensemble_load" in traffic):
        return None  # the rate follows from the latency profile, measured after training
    assert config.horizon_ms is not None
    return int((config.traffic.routed_rate() + config.traffic.ensemble_rate_per_ms) * config.horizon_ms)


def record_bytes(config: SimConfig, seed: int) -> float:
    """Bytes per query record of the columns the report reads back (`reports.load.report_query_columns`),
    measured on a short run of the point."""
    from reports.load import report_query_columns
    from sim import simulate

    probe = config.model_copy(update={"n_queries": probe_queries(config, seed, PROBE_QUERIES), "horizon_ms": None})
    records = simulate(probe, seed).records
    kept = records[report_query_columns(records.columns)]
    return int(kept.memory_usage(deep=True).sum()) / max(len(kept), 1)


def peak_bytes_per_query(config: SimConfig, seed: int) -> float:
    """What one more query adds to a point's peak memory while it is simulated — its draws and per-task times on
    every server, the engine's state and one policy's records at a time (the runner writes each policy's away
    before the next runs) — measured (tracemalloc, which sees numpy's arrays) as the slope between two short runs,
    so that fixed costs do not count per query. A lower bound of what the process takes: a full run's resident
    size grew about twice as fast (measured here). Measured once per configuration and process, so run and
    validate say the same."""
    key = (repr(config), seed)
    if key not in _PEAK_SLOPES:
        _PEAK_SLOPES[key] = _peak_slope(config, seed)
    return _PEAK_SLOPES[key]


_PEAK_SLOPES: dict[tuple[str, int], float] = {}


def tasks_per_query(config: SimConfig, seed: int) -> float:
    """Tasks one query of the point sends to the servers, summed over its policies: measured on a pilot run of
    PILOT_QUERIES queries, once per configuration and process. A hedge sends one more, a redundant dispatch one per
    instance of the query's expert: a policy's fan-out, which the layout alone does not tell."""
    key = (repr(config), seed)
    if key not in _TASKS_PER_QUERY:
        from sim import simulate

        pilot = config.model_copy(update={"n_queries": PILOT_QUERIES, "horizon_ms": None})
        records = simulate(pilot, seed).records
        _TASKS_PER_QUERY[key] = float(records["n_tasks"].sum()) / PILOT_QUERIES
    return _TASKS_PER_QUERY[key]


_TASKS_PER_QUERY: dict[tuple[str, int], float] = {}


def probe_queries(config: SimConfig, seed: int, wanted: int, runs: int = 1) -> int:
    """Queries for `runs` short runs of `wanted` queries each, fewer when their tasks would pass PROBE_TASKS (a
    query that fans out to many servers costs its tasks, not one), never fewer than PILOT_QUERIES."""
    per_query = max(tasks_per_query(config, seed), 1.0)
    return max(PILOT_QUERIES, min(wanted, int(PROBE_TASKS / (runs * per_query))))


def peak_bound_per_query(config: SimConfig, seed: int) -> float:
    """An upper bound of `peak_bytes_per_query` from one short run: its whole peak over its SCREEN_QUERIES queries.
    A point's peak is fixed costs (≥ 0) plus a share per query, so the average over a few queries is at least the
    share; cheap, and loose where fixed costs dominate."""
    n = probe_queries(config, seed, SCREEN_QUERIES)
    (peak,) = _peaks(config, seed, (n,))
    return peak / n


def _peaks(config: SimConfig, seed: int, sizes: tuple[int, ...]) -> list[int]:
    """The peak memory (tracemalloc, which sees numpy's arrays) of the point run at each size in `sizes`."""
    import gc
    import tempfile
    import tracemalloc

    from scenarios.points import run_point

    peaks = []
    with tempfile.TemporaryDirectory(prefix="coinsim-probe-") as folder:
        for n in sizes:
            probe = config.model_copy(update={"n_queries": n, "horizon_ms": None})
            gc.collect()
            tracemalloc.start()
            try:
                run_point(probe, seed, None, Path(folder) / f"{n}.parquet")
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
    return peaks


def _peak_slope(config: SimConfig, seed: int) -> float:
    first = probe_queries(config, seed, max(128, SLOPE_QUERIES // config.n_servers), runs=5)  # a and 4a queries
    sizes = (first, 4 * first)
    peaks = _peaks(config, seed, sizes)
    return max(0.0, (peaks[1] - peaks[0]) / (sizes[1] - sizes[0]))


def pair_draw_bytes(config: SimConfig) -> float:
    """Bytes per query that per-(query, server) draws (`sim.draws = "server"`) hold at once while a point is
    drawn: the service uniforms and the straggle factors of every server (float64 each), and a delay per server
    for each network direction. A floor of the point's peak, known without running it; 0 under per-task draws."""
    if config.draws == "task":
        return 0.0
    arrays = 2 + (config.network.out is not None) + (config.network.back is not None)
    return 8.0 * arrays * config.n_servers


def check_memory(scenario: Scenario, available: int | None = None, report: bool = True) -> None:
    """Refuse a run whose largest point would not fit in memory while it is simulated (its draws, the engine and
    one policy's records: the rest goes to disk as it comes), or (`report`) whose report could not read back its
    headline point's records."""
    configs = stand_in_configs(scenario)
    counts = []
    for (_, table), (_, config) in zip(scenario.sweep_points(), configs, strict=True):
        queries = _queries(scenario, table, config)
        if queries is not None:
            counts.append((queries, len(config.policies)))
    if not counts:
        return
    widest = max(configs, key=lambda c: c[1].n_servers)[1]  # a point's own peak grows with its servers
    largest = max(q for q, _ in counts)
    headline_records = counts[-1][0] * counts[-1][1]  # the report draws the headline (last) point's queries
    per_record = record_bytes(configs[-1][1], scenario.seed) if report else 0.0
    report_bytes = REPORT_COPIES * headline_records * per_record
    available = available_memory() if available is None else available
    floor = largest * pair_draw_bytes(widest)
    if floor > available:  # known without running anything (a short run of such a point is itself huge)
        raise ScenarioError(f"sim: a point of {largest:,} queries on {widest.n_servers:,} servers draws a number for "
                            f"every (query, server) pair up front: at least {size_text(floor)}, more than the "
                            f"{size_text(available)} available; set sim.draws = \"task\" (each task draws its own), or "
                            "lower sim.n_queries (or horizon_ms) or the servers")
    if max(largest * peak_bound_per_query(widest, scenario.seed), report_bytes) <= available:
        return  # fits even by the bound: no need to measure the share itself
    per_query = peak_bytes_per_query(widest, scenario.seed)
    point_peak = largest * per_query
    if max(point_peak, report_bytes) <= available:
        return
    reading = (f" and the report about {size_text(report_bytes)} to read back the headline point's "
               f"{headline_records:,} query records ({per_record:.0f} bytes each, held {REPORT_COPIES} times)"
               if report else "")
    raise ScenarioError(f"sim: a point of {largest:,} queries needs about {size_text(point_peak)} while it is "
                        f"simulated ({per_query:.0f} bytes per query on up to {widest.n_servers:,} servers){reading}, "
                        f"more than the {size_text(available)} available; lower sim.n_queries (or horizon_ms), the "
                        "servers or the points")
