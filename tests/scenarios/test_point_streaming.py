"""A point's records are written policy by policy (never all held), and queries.parquet is assembled from the
points' files a row group at a time: same rows, same values, as the records built in memory."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import scenarios.points as points
from scenarios.points import AnswerTables, paired_accuracy_difference, run_point
from sim import parse_config

FIVE = {
    "n_experts": 2, "r": 1, "n_queries": 3000,
    "policies": ["uncoded", {"kind": "replication", "replica_of": "spread"}, {"kind": "hedged", "delay_ms": "p95"},
                 {"kind": "coded", "dispatch": "hedged", "delay_ms": "p95"}, "backup"],
    "service": {"expert": {"kind": "shifted_exponential", "shift_ms": 2.0, "mean_ms": 1.0}},
    "traffic": {"kind": "poisson", "rate_per_ms": 0.2, "sample_pool": 12},
    "stragglers": {"p": 0.1, "slowdown": 10.0},
}


def _tables() -> AnswerTables:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 24)
    outs = rng.normal(size=(2, 24, 3))
    return AnswerTables(labels=labels, offsets=np.array([0, 12, 24]), expert_outs=outs,
                        coded_outs=outs.sum(0, keepdims=True) + rng.normal(0, 0.5, (1, 24, 3)),
                        matrix=np.ones((1, 2)), backup_outs=rng.normal(size=(24, 3)))


def test_streamed_records_equal_the_in_memory_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(FIVE)
    monkeypatch.setattr(points, "ROWS_PER_GROUP", 1000)  # several row groups per policy
    kept, summary = run_point(config, 7, _tables())
    written, streamed = run_point(config, 7, _tables(), tmp_path / "p.parquet")
    assert written is None and streamed == summary
    back = pd.read_parquet(tmp_path / "p.parquet")
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "p.parquet").num_row_groups == 5 * 3  # 3,000 rows a policy, 1,000 a group
    assert list(back.columns) == [c for c in kept.columns if c != "answer_mask"]
    for column in back.columns:
        assert back[column].astype(str).tolist() == kept[column].astype(str).tolist(), column
    # the paired accuracy differences: from the kept arrays as from the whole point's records
    for policy, diff in paired_accuracy_difference(kept, "uncoded").items():
        assert streamed[policy]["accuracy_vs_uncoded_pct"] == pytest.approx(diff["accuracy_vs_uncoded_pct"])
    assert streamed["backup"]["accuracy_vs_uncoded_pct"] != 0  # the generalist answers some queries otherwise


def _peak_slope(config, out: Path | None) -> float:
    peaks = []
    for n in (10_000, 30_000):
        probe = config.model_copy(update={"n_queries": n})
        gc.collect()
        tracemalloc.start()
        try:
            run_point(probe, 0, None, None if out is None else out / f"{n}.parquet")
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return (peaks[1] - peaks[0]) / 20_000


@pytest.fixture(scope="module")
def streamed_slope(tmp_path_factory: pytest.TempPathFactory) -> float:
    """A streamed point's peak per query between 10,000 and 30,000 queries (measured once: ~15 s under tracemalloc)."""
    return _peak_slope(parse_config(FIVE), tmp_path_factory.mktemp("streamed"))


def test_a_streamed_point_holds_about_one_policy_of_records(streamed_slope: float) -> None:
    """Five policies: in memory every policy's records and their concatenation are held at once; streamed, one
    policy's (plus the draws and the engine), here about 0.4 of it. Holding the previous policy's records while
    the next one runs (a loop variable kept alive) makes it about 0.53."""
    in_memory = _peak_slope(parse_config(FIVE), None)
    assert streamed_slope < 0.47 * in_memory, (streamed_slope, in_memory)


def test_the_memory_check_measures_a_point_s_per_query_peak_where_it_is_per_query(streamed_slope: float) -> None:
    """The preflight's slope (two short probes) against the slope between 10,000 and 30,000 queries: probes of a few
    hundred queries mostly measure fixed costs (64 and 256 queries gave 0 bytes per query, 1,000 and 4,000 a third)."""
    from scenarios import preflight

    config = parse_config(FIVE)
    estimate, slope = preflight.peak_bytes_per_query(config, 0), streamed_slope
    assert 0.7 * slope < estimate < 1.3 * slope, (estimate, slope)
    # the screen's bound (one short run's whole peak over its queries) is never below the share it screens for
    assert preflight.peak_bound_per_query(config, 0) >= slope


def test_a_wide_fleet_point_s_share_is_not_its_dead_engines() -> None:
    """At 1,000 servers with per-task draws a query adds about 0.5 kB to a point's peak (461 B measured between
    32,000 and 128,000 queries of the built-in fleet's widest point). A dead engine's cycles (several MB of servers
    and stations) used to linger until the collector ran, so the preflight's short probes read 11.2 kB a query on
    this point (760 B once freed) and refused a 10^7-query fleet point that fits in a few GB."""
    from scenarios import preflight

    config = parse_config({
        "n_experts": 2, "r": 200, "n_queries": 1000, "draws": "task",
        "policies": ["uncoded", {"kind": "hedged", "delay_ms": 2.0},
                     {"kind": "coded", "dispatch": "hedged", "delay_ms": 2.0}],
        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
        "traffic": {"kind": "poisson", "rate_per_ms": 200.0}, "stragglers": {"p": 0.05, "slowdown": 10.0},
        "deployment": {"instances": 400, "balancer": "jsq"}})
    assert config.n_servers == 1000
    preflight.peak_bound_per_query(config, 0)  # as the preflight does: the screen's run first (and first-use costs)
    assert preflight._peak_slope(config, 0) < 2_000


def test_queries_parquet_holds_every_row_group_of_every_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's queries.parquet, assembled from the points' files a row group at a time, is the same table whether
    a point's records are written in one row group or in many (a writer that kept only each file's first group, or
    mislabelled a group's point, fails here)."""
    from scenarios.runner import run_scenario
    from scenarios.schema import scenario_from_dict

    raw = {"name": "streamed", "seed": 3,
           "sim": {"n_experts": 2, "r": 1, "n_queries": 3000,
                   "policies": ["uncoded", {"kind": "coded", "dispatch": "hedged", "delay_ms": "p95"}],
                   "traffic": {"kind": "poisson", "load": 0.4},
                   "service": {"expert": {"kind": "exponential", "mean_ms": 2.0}},
                   "stragglers": {"p": 0.0, "slowdown": 8.0}},
           "sweep": {"axis": "stragglers.p", "values": [0.0, 0.05, 0.1]}}
    whole = pd.read_parquet(run_scenario(scenario_from_dict(raw), raw, tmp_path / "a", quiet=True)
                            / "queries.parquet")
    monkeypatch.setattr(points, "ROWS_PER_GROUP", 700)  # 5 row groups per policy, 10 per point
    import pyarrow.parquet as pq

    folder = run_scenario(scenario_from_dict(raw), raw, tmp_path / "b", quiet=True)
    chunked = pd.read_parquet(folder / "queries.parquet")
    assert pq.ParquetFile(folder / "queries.parquet").num_row_groups == 3 * 2 * 5
    assert len(chunked) == len(whole) == 3 * 2 * 3000
    assert chunked.groupby(["point", "policy"], observed=True).size().tolist() == [3000] * 6
    assert sorted(set(zip(chunked["point"], chunked["straggler_p"], strict=True))) == [(0, 0.0), (1, 0.05), (2, 0.1)]
    pd.testing.assert_frame_equal(chunked, whole)
