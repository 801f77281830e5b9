"""Sweep scaling: the same sweep points on 1 and on 2 local worker processes (and on a local Dask cluster).

The experts, coded model, answer tables and latency profile are built once (as `coinsim sweep` does) and then
every executor simulates the same points; the ratio of wall times is what extra workers buy. Results are
checked equal across executors before any time is reported.

    python bench/bench_sweep.py [SCENARIO] [--queries N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from scenarios.runner import PointStore, _execute, build_point_configs, prepare_networks
from scenarios.schema import load_scenario


def _timed(scenario, points, answers, executor: str, workers: int, scheduler: str | None = None
           ) -> tuple[float, pd.DataFrame]:
    sweep = scenario.sweep.model_copy(update={"executor": executor, "workers": workers, "scheduler": scheduler})
    variant = scenario.model_copy(update={"sweep": sweep})
    with tempfile.TemporaryDirectory() as folder:
        store = PointStore(Path(folder))
        started = time.perf_counter()
        _execute(points, scenario.seed, answers, variant, store, quiet=True)
        seconds = time.perf_counter() - started
        summary = pd.concat([pd.DataFrame(store.load(i)[1]).T.assign(point=i) for i in range(len(points))])
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="quickstart")
    parser.add_argument("--queries", type=int, default=40000, help="queries per point")
    args = parser.parse_args()
    scenario, _ = load_scenario(args.scenario, {"sim.n_queries": args.queries})
    facts = prepare_networks(scenario, quiet=True) if scenario.models is not None else None
    points = build_point_configs(scenario, facts)
    answers = facts.answers if facts else None
    print(f"{args.scenario}: {len(points)} points × {len(points[0][1].policies)} policies × {args.queries} queries")
    one, reference = _timed(scenario, points, answers, "local", 1)
    two, result = _timed(scenario, points, answers, "local", 2)
    pd.testing.assert_frame_equal(reference, result)
    dask, on_dask = _timed(scenario, points, answers, "dask", 2)
    pd.testing.assert_frame_equal(reference, on_dask)
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        running, on_running = _timed(scenario, points, answers, "dask", 2, cluster.scheduler_address)
    pd.testing.assert_frame_equal(reference, on_running)
    print(f"1 worker                      {one:7.2f} s")
    print(f"2 workers (local processes)   {two:7.2f} s   speed-up {one / two:.2f}x")
    print(f"2 Dask workers, new cluster   {dask:7.2f} s   speed-up {one / dask:.2f}x (cluster start-up included)")
    print(f"2 Dask workers, running       {running:7.2f} s   speed-up {one / running:.2f}x (scheduler given)")


if __name__ == "__main__":
    main()
