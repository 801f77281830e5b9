"""The calibration file (round trip, refusals, atomic save), its pure-numpy reductions on hand-made numbers, the
`coinsim calibrate --show` table, and one real measuring step against a real server process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from calibration import analysis
from calibration import file as calfile
from calibration.file import Calibration, CalibrationError, load_calibration, machine_key, save_calibration
from scenarios.cli import cli


def _delay(median: float) -> dict:
    return {"median_ms": median, "p99_ms": 3 * median, "mean_ms": 1.2 * median,
            "samples_ms": [median * (0.5 + k / 10) for k in range(10)]}


def _point(name: str, iso: float, cyc: float) -> dict:
    return {"name": name, "params": 100, "isolated_mean_ms": iso, "isolated_median_ms": iso,
            "compute_mean_ms": iso * 1.1, "cycle_mean_ms": cyc, "cycle_median_ms": cyc, "cycle_p99_ms": 2 * cyc,
            "n_cycles": 50, "residual_ms": 0.0}


def _row(k: int, med: float) -> dict:
    return {"others": k, "n": 40, "median_ms": med, "p90_ms": 2 * med, "p99_ms": 4 * med, "mean_ms": 1.5 * med,
            "stretch_median": med, "stretch_p99": med}


def sample(machine: dict | None = None) -> Calibration:
    """A hand-written calibration: cycle = 0.3 + 1.5 × pass, dispatcher 0.05 cores + 0.2 ms per task."""
    return Calibration.model_validate({
        "machine": machine or machine_key("cpu"), "created": "2026-01-01T00:00:00+00:00", "seconds": 30.0,
        "load_average": {"start": [0.1, 0.2, 0.3], "end": [1.0, 0.5, 0.4]},
        "serving": {"overhead_ms": 0.3, "slope": 1.5,
                    "points": [_point("a", 0.1, 0.45), _point("b", 1.0, 1.8), _point("c", 3.0, 4.8)]},
        "delays": {"n_tasks": 10, "out": _delay(0.4), "back": _delay(0.2)},
        "slicing": {"network": "b", "isolated_median_ms": 1.0, "stretch": [_row(0, 1.0), _row(1, 1.2)],
                    "spinners": 3, "spin_s": 2.0, "threshold_ms": 0.05, "n_runs": 100, "run_median_ms": 4.0,
                    "run_mean_ms": 3.5, "run_p90_ms": 4.1, "gap_median_ms": 8.0, "gap_mean_ms": 7.0,
                    "quantum_ms": 4.0},
        "dispatcher": {"base_cores": 0.05, "cpu_ms_per_task": 0.2,
                       "runs": [{"rate_per_ms": 0.1, "n_tasks": 100, "served_s": 1.0, "cpu_s": 0.07},
                                {"rate_per_ms": 1.0, "n_tasks": 1000, "served_s": 1.0, "cpu_s": 0.25}],
                       "frontend_priority": "realtime"},
        "wake": {"network": "b", "warm_compute_ms": 1.0, "warm_cost_ms": 1.0, "cost": "pass",
                 "rows": [{"gap_ms": 2.0, "n": 50, "idle_median_ms": 2.1, "compute_median_ms": 1.2, "cost_ms": 1.2,
                           "extra_ms": 0.2}],
                 "idle_ms": [2.1], "extra_ms": [0.2]},
        "corun": [{"network": name, "isolated_median_ms": ms, "others": j, "n": 40, "median_ms": ms * f,
                   "mean_ms": ms * f, "stretch_median": f, "stretch_mean": f}
                  for name, ms, one in (("a", 0.1, 1.0), ("c", 3.0, 1.3)) for j, f in enumerate((1.0, one))],
    })


def _one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(CalibrationError) as info:
        load_calibration(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# ------------------------------------------------------------------------------------------------ the file


def test_round_trip(tmp_path):
    cal = sample()
    path = save_calibration(cal, tmp_path / "sub" / "cal.json")
    assert load_calibration(path, expect_machine=machine_key("cpu")) == cal
    assert json.loads(path.read_text())["schema_version"] == 4
    assert set(json.loads(path.read_text())) == {"schema_version", "machine", "created", "seconds", "load_average",
                                                 "serving", "delays", "slicing", "dispatcher", "wake", "wake_sizes",
                                                 "passes_under_load", "corun"}


def test_unusable_files_are_refused_with_one_line(tmp_path):
    good = save_calibration(sample(), tmp_path / "good.json").read_text()
    path = tmp_path / "cal.json"
    assert "no calibration file" in _one_line_error(path)  # missing
    path.write_text("{this is not json")
    assert "corrupt" in _one_line_error(path)
    path.write_text(good[: len(good) // 2])
    assert "truncated" in _one_line_error(path)
    path.write_text(good.replace('"schema_version": 4', '"schema_version": 3'))
    assert "schema_version 3" in _one_line_error(path)  # a file made before the co-running table: re-made
    path.write_text(good.replace('"overhead_ms": 0.3', '"overhead_ms": NaN'))
    assert "non-finite" in _one_line_error(path)
    path.write_text(good.replace('"overhead_ms": 0.3', '"overhead_ms": 1e999'))  # parses as inf
    assert "serving.overhead_ms" in _one_line_error(path)
    path.write_text(good.replace('"slope": 1.5,', ""))
    assert "serving.slope" in _one_line_error(path)
    path.write_text(good)
    other = machine_key("cpu") | {"cpu_count": 64}
    assert "cpu_count" in _one_line_error(path, expect_machine=other)
    assert "torch" in _one_line_error(path, expect_machine=machine_key("cpu") | {"torch": "0.1"})


def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = save_calibration(sample(), tmp_path / "cal.json")
    before = path.read_bytes()

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(calfile.os, "fsync", broken)
    changed = sample().model_copy(update={"seconds": 99.0})
    with pytest.raises(OSError):
        save_calibration(changed, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cal.json"]  # no temporary file left behind


def test_default_path_is_per_machine_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("COINSIM_CALIBRATION", raising=False)
    monkeypatch.setenv("COINSIM_CACHE", str(tmp_path))
    path = calfile.default_path("cpu")
    assert path.parent == tmp_path / "calibration" and path.suffix == ".json"
    assert path == calfile.default_path("cpu") != calfile.default_path("some GPU")


def test_file_module_imports_no_torch_and_the_key_does_not_depend_on_it():
    code = ("import sys, calibration.file, calibration.show; from calibration.file import machine_key; "
            "key = machine_key('cpu'); assert 'torch' not in sys.modules and 'simpy' not in sys.modules; "
            "import torch; assert machine_key('cpu') == key, (key, machine_key('cpu'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------------------- simulator side


def test_served_ms_applies_the_line_sample_by_sample():
    cal = sample()
    np.testing.assert_allclose(cal.served_ms(np.array([0.0, 1.0, 2.0, 0.5])), [0.3, 1.8, 3.3, 1.05])
    np.testing.assert_allclose(cal.out_ms_samples(), [0.4 * (0.5 + k / 10) for k in range(10)])
    assert cal.back_ms_samples()[0] == pytest.approx(0.1)
    assert cal.dispatcher_cores(1.0) == pytest.approx(0.25)
    assert cal.server_cores(1.0) == pytest.approx(max(0.5, cal.machine.cpu_count - 0.25))
    assert cal.quantum_ms == 4.0


# ------------------------------------------------------------------------------------------ reductions


def test_line_fit_matches_polyfit():
    x = np.array([0.1, 0.4, 1.2, 3.0])
    y = np.array([0.5, 0.75, 1.8, 4.6])
    intercept, slope, residuals = analysis.line_fit(x, y)
    want_slope, want_intercept = np.polyfit(x, y, 1)
    assert intercept == pytest.approx(want_intercept) and slope == pytest.approx(want_slope)
    np.testing.assert_allclose(residuals, y - (want_intercept + want_slope * x), atol=1e-12)
    exact = analysis.line_fit(np.array([1.0, 2.0]), np.array([2.5, 4.0]))  # through two points: 1 + 1.5 x
    assert exact[:2] == pytest.approx((1.0, 1.5))


def test_gaps_and_runs_of_a_hand_made_clock():
    # a loop reading the clock every 0.01; off the core 0.02→1.00, 1.03→3.00 and 3.01→5.00
    stamps = np.array([0.0, 0.01, 0.02, 1.0, 1.01, 1.02, 1.03, 3.0, 3.01, 5.0, 5.01])
    starts, ends = analysis.descheduled_gaps(stamps, threshold=0.1)
    np.testing.assert_allclose(starts, [0.02, 1.03, 3.01])
    np.testing.assert_allclose(ends, [1.0, 3.0, 5.0])
    runs, gaps = analysis.slice_lengths(starts, ends)
    np.testing.assert_allclose(runs, [0.03, 0.01])  # complete runs only: 1.00→1.03, 3.00→3.01
    np.testing.assert_allclose(gaps, [0.98, 1.97, 1.99])
    assert len(analysis.descheduled_gaps(np.arange(0, 1, 0.01), 0.1)[0]) == 0


def test_cycles_only_where_the_next_task_was_waiting():
    # task 0: 0→1, task 1 received at 0.5 (waiting) starts 1.2 → cycle 1.2; task 1 ends 2, task 2 arrives 3 (idle)
    recv = np.array([0.0, 0.5, 3.0])
    start = np.array([0.0, 1.2, 3.0])
    end = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(analysis.cycles_ms(recv, start, end), [1.2, np.nan, np.nan])
    order = [2, 0, 1]  # input order does not matter
    np.testing.assert_allclose(analysis.cycles_ms(recv[order], start[order], end[order]), [np.nan, 1.2, np.nan])


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_show_prints_tables_and_refuses_corrupt_files(tmp_path):
    path = save_calibration(sample(), tmp_path / "cal.json")
    result = CliRunner().invoke(cli, ["calibrate", "--show", str(path)], obj={})
    assert result.exit_code == 0, result.output
    assert "cycle = 0.300 + 1.500 × isolated pass" in result.output
    assert "quantum (median run) 4.000 ms" in result.output and "0.050 cores + 0.200 ms" in result.output
    assert "c (3.000 ms) ×1.30" in result.output and "a (0.100 ms) ×1.00" in result.output  # read per size
    path.write_text(path.read_text()[:100])
    result = CliRunner().invoke(cli, ["calibrate", "--show", str(path)], obj={})
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "truncated" in lines[0]


def test_cli_reuses_a_valid_cached_calibration(tmp_path):
    path = save_calibration(sample(), tmp_path / "cal.json")
    result = CliRunner().invoke(cli, ["calibrate", "--device", "cpu", "--out", str(path)], obj={})
    assert result.exit_code == 0, result.output
    assert "using the cached calibration" in result.output
    result = CliRunner().invoke(cli, ["calibrate", "--show", "--out", str(tmp_path / "none.json")], obj={})
    assert result.exit_code == 2 and "no calibration file" in result.stderr


# ------------------------------------------------------------------------------------- one real step


def test_delays_under_load_interpolate_quantile_by_quantile():
    # two levels: out 1 ms everywhere at 20 % busy, 1..5 ms (uniform quantiles) at 60 % busy
    low, high = [1.0] * 50, list(np.linspace(1.0, 5.0, 50))
    got = calfile.interpolate_delays([0.2, 0.6], [low, high], 0.5, n=5)
    # at 0.5 the weight on the busier level is (0.5 - 0.2) / 0.4 = 3/4: quantiles 1 + 3/4 x (0, 1, 2, 3, 4)
    assert got == pytest.approx([1.0, 1.75, 2.5, 3.25, 4.0])
    assert calfile.interpolate_delays([0.2, 0.6], [low, high], 0.0, n=5) == pytest.approx([1.0] * 5)  # held
    assert calfile.interpolate_delays([0.2, 0.6], [low, high], 3.0, n=5) == pytest.approx([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="finite"):
        calfile.interpolate_delays([0.2, 0.6], [low, high], float("nan"))


def _level(u: float, out_ms: float) -> dict:
    return {"utilization": u, "rate_per_ms": 1.0, "servers": 3, "network": "b", "n_tasks": 100,
            "out": _delay(out_ms), "back": _delay(out_ms / 2)}


def test_calibration_draws_delays_at_a_utilization_and_idle_ones_without_levels():
    data = sample().model_dump()
    data["delays"]["under_load"] = [_level(0.1, 1.0), _level(0.5, 3.0)]
    cal = Calibration.model_validate(data)
    # _delay(x) stores ten samples evenly from 0.5x to 1.4x, so its quantile at p is x (0.5 + 0.9 p); at u = 0.2,
    # a quarter of the way from the 1 ms level to the 3 ms one: 3/4 (0.5 + 0.9 p) + 1/4 x 3 (0.5 + 0.9 p)
    probs = np.linspace(0, 1, 200)
    assert cal.out_ms_samples(0.2) == pytest.approx(1.5 * (0.5 + 0.9 * probs))
    assert cal.back_ms_samples(0.2) == pytest.approx(0.75 * (0.5 + 0.9 * probs))  # back levels are half
    assert np.array_equal(cal.out_ms_samples(), np.asarray(_delay(0.4)["samples_ms"]))  # no utilization: idle
    assert np.array_equal(sample().out_ms_samples(0.3), np.asarray(_delay(0.4)["samples_ms"]))  # no levels
    data["delays"]["under_load"] = [_level(0.5, 3.0), _level(0.1, 1.0)]
    with pytest.raises(ValueError, match="increasing utilization"):
        Calibration.model_validate(data)


def test_idle_at_arrival_on_a_hand_trace():
    from calibration.analysis import idle_at_arrival

    # server 0: task a received at 0 ends at 2; b received at 1 (a busy) ends 4; c at 5 (idle again);
    # server 1: d at 3 (its first: idle); e at 3.5 after d failed (no end: it never finished, so e found it busy
    # only if d's end were known — an unknown end never makes a server busy)
    server = np.array([0, 0, 0, 1, 1])
    recv = np.array([0.0, 1.0, 5.0, 3.0, 3.5])
    end = np.array([2.0, 4.0, 6.0, np.nan, 5.0])
    assert idle_at_arrival(server, recv, end).tolist() == [True, False, True, True, True]
    order = np.array([2, 0, 4, 1, 3])  # any order of rows gives the same answer per row
    assert idle_at_arrival(server[order], recv[order], end[order]).tolist() == [True, True, True, False, True]


def test_rehearsal_under_traffic_on_real_servers(tmp_path):
    from calibration.measure import SIZES, SMALL, rehearse, save_size_networks
    from testbed import LocalCluster, ServerSpec

    _, folders, inputs = save_size_networks(tmp_path)
    small = folders[list(SIZES).index(SMALL)]
    with LocalCluster([ServerSpec((small,))] * 2, inputs) as cluster:
        # 0.2 tasks/ms: a served task of the small network costs its server well under a millisecond here, so the
        # two servers are idle most of the time even on a machine several times slower (at 1 task/ms a slow
        # moment left 5 of 200 tasks reaching an idle server)
        level, passes = rehearse(cluster.sockets, 0, SMALL, rate_per_ms=0.2, cpus=2, busy_pass_ms=0.05,
                                 span_ms=1000.0)
    assert level.n_tasks == 200 and level.servers == 2 and level.rate_per_ms == 0.2
    # most passes of a small network at 0.2 tasks/ms run with no other beside them; each takes real time
    assert 20 <= passes.n_lone <= 200 and passes.utilization == level.utilization
    assert 0 < passes.lone_pass_mean_ms < 100 and passes.extra_ms == pytest.approx(passes.lone_pass_mean_ms - 0.05)
    # 200 passes of well under a millisecond over ~1,000 ms and 2 cores: busy, but far from all the time
    assert 0.0 < level.utilization < 1.0
    for d in (level.out, level.back):
        assert 0 < d.median_ms <= d.p99_ms < 1000 and len(d.samples_ms) == 200


def test_one_way_delays_of_a_real_server(tmp_path):
    from calibration.measure import SIZES, SMALL, measure_delays, save_size_networks
    from testbed import LocalCluster, ServerSpec

    _, folders, inputs = save_size_networks(tmp_path)
    small = folders[list(SIZES).index(SMALL)]
    with LocalCluster([ServerSpec((small,))], inputs) as cluster:
        delays = measure_delays(cluster.sockets, 0, n=20)
    for d in (delays.out, delays.back):
        assert 0 < d.median_ms <= d.p99_ms < 1000 and np.isfinite(d.mean_ms)
        assert len(d.samples_ms) == 200 and all(0 < x < 1000 for x in d.samples_ms)


def test_coinsim_calibration_names_the_default_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COINSIM_CALIBRATION", str(tmp_path / "shared.json"))
    assert calfile.default_path("cpu") == tmp_path / "shared.json"


def test_wake_curve_is_increasing_and_never_negative():
    from calibration.measure import wake_curve

    # measured medians, out of order, one negative (noise) and one dip: the dip pools with its neighbour
    # into their mean (0.25 + 0.2) / 2, the negative value is clipped at 0
    idle, extra = wake_curve(np.array([4.0, 0.3, 1.1, 8.2]), np.array([0.2, -0.05, 0.25, 0.45]))
    assert idle == [0.3, 1.1, 4.0, 8.2]
    assert extra == pytest.approx([0.0, 0.225, 0.225, 0.45])
    # the first point high (a nearly saturated server): pooled over the first three
    _, extra = wake_curve(np.array([0.07, 0.5, 1.0, 2.0]), np.array([0.125, 0.033, 0.047, 0.14]))
    assert extra == pytest.approx([0.205 / 3] * 3 + [0.14], abs=1e-5)


def test_the_corun_timetable_rotates_who_runs_alone_and_reverses_the_sizes():
    from calibration.measure import corun_phases

    assert corun_phases(2, 1, 2) == [(0, [0]), (0, [0, 1]), (1, [0]), (1, [0, 1]),
                                     (1, [1]), (1, [1, 0]), (0, [1]), (0, [1, 0])]
    assert [len(active) for _, active in corun_phases(1, 3, 1)] == [1, 2, 3, 4]


def test_a_pass_process_runs_only_in_its_phases(tmp_path):
    """`calibration.loop` on a real network: passes in the phases it is active in, none in the others, each phase's
    passes inside its window; the first phase is late by no more than the time it was told to wait."""
    import subprocess
    import sys
    import time

    from calibration.measure import SIZES, SMALL, save_size_networks

    _, folders, inputs = save_size_networks(tmp_path)
    small = folders[list(SIZES).index(SMALL)]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"folders": [str(small)], "inputs": str(inputs), "phase_s": 0.2,
                                "phases": [[0, [1]], [0, [0, 1]], [0, [1]]]}))
    proc = subprocess.Popen([sys.executable, "-m", "calibration.loop", str(plan), "0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    out, _ = proc.communicate(f"{time.perf_counter() + 0.05!r}\n", timeout=60)
    first, second, third = json.loads(out)["passes_ms"]
    assert first == [] and third == []  # process 0 is not active there: it slept
    assert len(second) > 20 and all(0 < ms < 200 for ms in second) and sum(second) <= 200 + max(second)


def test_corun_rows_from_real_pass_processes(tmp_path):
    from calibration.measure import SIZES, measure_corun, save_size_networks

    _, folders, inputs = save_size_networks(tmp_path)
    names = list(SIZES)[:2]
    iso = {name: np.array([0.1 * (k + 1)] * 5) for k, name in enumerate(names)}
    rows = measure_corun(folders[:2], inputs, names, iso, others_max=1, rounds=2, phase_s=0.15)
    assert [(r.network, r.others) for r in rows] == [(names[0], 0), (names[0], 1), (names[1], 0), (names[1], 1)]
    for r in rows:
        assert r.n >= 10 and 0 < r.median_ms < 100 and r.isolated_median_ms == iso[r.network][0]
        # j = 0 is the reference; with one other on the second core a pass is neither stopped nor sped up much
        assert r.stretch_median == 1.0 if r.others == 0 else 0.3 < r.stretch_median < 5
    assert measure_corun(folders[:2], inputs, names, iso, others_max=0) == []  # one CPU: nothing side by side


def test_the_wake_curve_is_read_at_the_networks_size():
    """Two sizes (isolated passes 0.1 and 3.0 ms, curves on different idle times): a network between them reads
    each curve on the union of idle times, halfway in log pass time; outside them, the nearest size's curve."""
    import math

    cal = sample()
    small = cal.wake.model_copy(update={"network": "a", "idle_ms": [1.0, 4.0], "extra_ms": [0.1, 0.3]})
    large = cal.wake.model_copy(update={"network": "c", "idle_ms": [2.0, 8.0], "extra_ms": [0.5, 1.5]})
    cal = cal.model_copy(update={"wake_sizes": [large, small]})
    mid = math.sqrt(0.1 * 3.0)
    table = cal.wake_table(mid)
    assert table["idle_ms"] == [1.0, 2.0, 4.0, 8.0]
    # small held/interpolated on the grid: 0.1, 0.1667, 0.3, 0.3; large: 0.5, 0.5, 0.8333, 1.5; halfway:
    assert table["extra_ms"] == pytest.approx([0.3, 1 / 3, (0.3 + 0.8333333) / 2, 0.9])
    assert cal.wake_table(0.01)["extra_ms"] == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.3, 0.3])
    assert cal.wake_table(30.0)["extra_ms"] == pytest.approx([0.5, 0.5, 0.5 + 1 / 3, 1.5])
    assert cal.wake_table()["idle_ms"] == list(cal.wake.idle_ms)  # no network: the wake network's own curve
    only_one = cal.model_copy(update={"wake_sizes": [small]})
    assert only_one.wake_table(mid)["extra_ms"] == list(cal.wake.extra_ms)


def test_what_serving_adds_to_a_pass_is_read_at_the_size_and_the_utilization():
    from calibration.file import PassLevel

    def level(network: str, u: float, extra: float) -> PassLevel:
        return PassLevel(network=network, utilization=u, rate_per_ms=1.0, n_lone=100, lone_pass_mean_ms=1.0 + extra,
                         busy_pass_mean_ms=1.0, extra_ms=extra)

    # sizes a (0.1 ms) and c (3.0 ms): a adds 0.2 ms at 20 % busy and 0.4 at 60 %; c adds 1.0 and 2.0
    cal = sample().model_copy(update={"passes_under_load": [level("c", 0.6, 2.0), level("a", 0.2, 0.2),
                                                            level("a", 0.6, 0.4), level("c", 0.2, 1.0)]})
    assert cal.serving_extra_ms(0.1, 0.4) == pytest.approx(0.3)
    assert cal.serving_extra_ms(3.0, 0.1) == pytest.approx(1.0) and cal.serving_extra_ms(3.0, 0.9) == 2.0  # held
    import math

    assert cal.serving_extra_ms(math.sqrt(0.3), 0.4) == pytest.approx((0.3 + 1.5) / 2)  # halfway in log pass time
    assert cal.serving_extra_ms(100.0, 0.6) == 2.0 and cal.serving_extra_ms(0.01, 0.6) == pytest.approx(0.4)
    negative = cal.model_copy(update={"passes_under_load": [level("a", 0.2, -0.3)]})
    assert negative.serving_extra_ms(0.1, 0.2) == 0.0  # noise below a busy pass: nothing added
    assert sample().serving_extra_ms(1.0, 0.5) is None  # not measured
