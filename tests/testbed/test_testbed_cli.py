"""`coinsim testbed` end to end on a tiny zoo: served for real, simulated on the same draws, compared."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w
from click.testing import CliRunner

from scenarios.cli import cli
from scenarios.testbed_run import latency_metrics
from tests.conftest import tiny_zoo_table


def test_tiny_testbed_run(tiny_cache, tmp_path):
    scenario = {
        "name": "tinybed", "seed": 0, "device": "cpu",
        "models": tiny_zoo_table(tiny_cache),
        "coding": {"method": "coin", "samples": 50},
        "profile": {"warmup": 5, "samples": 200},
        "testbed": {"repeats": 2, "lead_ms": 50.0},
        "sim": {"r": 1, "n_queries": 300,
                "policies": ["uncoded", {"kind": "replication", "replica_of": "spread"},
                             {"kind": "coded", "dispatch": "hedged", "delay_ms": "p80"}],
                "traffic": {"kind": "poisson", "load": 0.2},
                # one query in ten straggles: the primary's p95 lies among the stragglers themselves, so a hedge
                # at it would come no sooner than the straggler's own answer. At p80 (the unstraggled tail) the
                # decode group is sent early and beats a straggler held 19 passes: real decoded answers occur
                # however fast this machine serves the tiny networks today
                "stragglers": {"p": 0.1, "slowdown": 20.0}},
    }
    path = tmp_path / "tinybed.toml"
    path.write_text(tomli_w.dumps(scenario))
    result = CliRunner().invoke(cli, ["--quiet", "testbed", str(path), "--out", str(tmp_path / "out")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "out" / "tinybed").glob("testbed-*"))
    measured = pd.read_parquet(folder / "testbed.parquet")
    assert len(measured) == 300 * 3 * 2  # queries × policies × repeats, every one answered
    assert measured["latency_ms"].notna().all() and (measured["latency_ms"] > 0).all()
    assert set(measured.loc[measured["policy"] == "coded-hedged", "answered_by"]) >= {"direct", "decoded"}
    # accuracy from the outputs that came back = the simulator-join's accuracy for the same answers
    agree = (measured["correct"] == measured["correct_sim_join"]).mean()
    assert agree >= 0.995, agree
    fidelity = pd.read_csv(folder / "fidelity.csv")
    assert set(fidelity["metric"]) == {"mean", "p50", "p95", "p99", "p999"}
    # the headline variant predicts from the calibration alone (the suite's hand-written one), the others are
    # in-sample diagnostics
    assert set(fidelity["service"]) == {"predicted", "isolated", "in_situ", "in_situ+network", "model"}
    summary_json = json.loads((folder / "summary.json").read_text())
    assert summary_json["headline_service"] == "predicted" and summary_json["latency_model"]["name"] == "served"
    assert (folder / "calibration.json").is_file()
    # the median over repeats of each repeat's own statistic, and the pooled statistic the error is against
    # (independent recomputation)
    row = fidelity[(fidelity["policy"] == "uncoded") & (fidelity["metric"] == "p99")
                   & (fidelity["service"] == "isolated")].iloc[0]
    real = measured[(measured["policy"] == "uncoded") & ~measured["warmup"]]
    per_repeat = [np.percentile(g["latency_ms"], 99) for _, g in real.groupby("repeat")]
    assert row["measured_median_of_repeats_ms"] == pytest.approx(np.median(per_repeat), rel=1e-5)  # csv: 6 digits
    pooled = np.percentile(real["latency_ms"], 99)
    assert row["measured_pooled_ms"] == pytest.approx(pooled, rel=1e-5) and row["n_measured"] == len(real)
    assert row["measured_lo_ms"] <= row["measured_pooled_ms"] <= row["measured_hi_ms"]
    assert row["rel_error_pct"] == pytest.approx(100 * (row["simulated_ms"] / pooled - 1), rel=1e-4, abs=1e-3)
    ranking = pd.read_csv(folder / "ranking.csv")
    assert set(ranking["service"]) == set(fidelity["service"]) and (ranking["n_agree"]
                                                                    <= ranking["n_pairs_distinguishable"]).all()
    simulated = pd.read_parquet(folder / "simulated.parquet")
    sim = simulated[(simulated["policy"] == "uncoded") & (simulated["service"] == "isolated")
                    & ~simulated["warmup"]]
    assert row["simulated_ms"] == pytest.approx(latency_metrics(sim["latency_ms"].to_numpy())["p99"], rel=1e-5)
    # the same arrivals were served as simulated
    first = measured[(measured["policy"] == "uncoded") & (measured["repeat"] == 0)].sort_values("query_id")
    np.testing.assert_allclose(first["arrival_ms"].to_numpy(), sim_all(simulated)["arrival_ms"].to_numpy())
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["kind"] == "testbed" and summary["repeats"] == 2
    # the collector was paused for serving: a full collection made before the runs (none if the frontend served
    # with it on), and no collection inside a serving loop (a full one stops the dispatcher for 100 ms or more)
    assert summary["overheads"]["0"]["gc_before_ms_max"] > 0
    assert [o["gc_collections"] for o in summary["overheads"].values()] == [0]
    late = (measured["dispatch_ms"] - measured["arrival_ms"]).max()
    assert summary["overheads"]["0"]["dispatch_lateness_ms_max"] == pytest.approx(late)
    assert summary["headline_service"] == "predicted" and set(summary["ranking"]) == set(fidelity["service"])
    assert (folder / "report.html").read_text().count("<img") == 2  # the point's CDFs and the machine's pace
    pace = pd.read_csv(folder / "pace.csv")  # one row per served run, every run with lone passes
    assert len(pace) == 3 * 2 and (pace["lone_passes"] > 0).all() and summary["machine_pace"]["runs"] == 6
    # simulated again from the folder alone (its profiles, calibration and the hedge delays it served with, read
    # off its task records), the predicted variant comes out as the run itself computed it
    again = CliRunner().invoke(cli, ["--quiet", "testbed", "--resimulate", str(folder)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    (redo,) = folder.glob("resimulated-*")
    keys = ["point", "policy", "metric"]
    second = pd.read_csv(redo / "fidelity.csv").set_index(keys).sort_index()
    first_run = fidelity[fidelity["service"] == "predicted"].set_index(keys).sort_index()
    assert set(second["service"]) == {"predicted"} and list(second.index) == list(first_run.index)
    np.testing.assert_allclose(second["simulated_ms"], first_run["simulated_ms"], rtol=1e-5)
    np.testing.assert_allclose(second["measured_pooled_ms"], first_run["measured_pooled_ms"], rtol=1e-9)
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(cli, ["testbed", "--resimulate", str(empty)])
    assert bad.exit_code == 2 and "not a served testbed run" in bad.output
    # what else the host did during the runs, per point: finite, non-negative core counts (Linux)
    host = summary["overheads"]["0"]
    if Path("/proc/stat").exists():
        assert 0 <= host["other_cores_median"] <= host["other_cores_max"] <= (os.cpu_count() or 1)
        assert host["steal_cores_max"] >= 0
        # the run's own processes: at least the frontend's own CPU (up to a clock tick of 10 ms per second)
        own = host["own_cores_by_policy"]
        assert set(own) == {"uncoded", "replication", "coded-hedged"}
        assert all(0 < v and host["frontend_cores_median"] - 0.1 <= v <= (os.cpu_count() or 1) for v in own.values())
        assert host["own_cores_median"] <= host["own_cores_max"]


def test_tiny_testbed_serves_the_generalist_backup(tiny_cache, tmp_path, monkeypatch):
    """Both backup dispatch rules, the generalist a network of its own (task_arithmetic, net 3 after the two
    experts and the coded model): served, judged on the backup server's real output, simulated in four variants.

    The calibration is the suite's hand-made one with the work beside a pass the same for every size (a pass in
    service as long as the line says): under the suite's, where that work grows with the pass (0.2 + 0.4 x pass),
    a generalist timed at under a quarter of the experts' pass would cost less than the experts' work beside it —
    this tiny run's profiles differed that much once in a loaded full run, a timing accident, not the test's point."""
    from tests.calibration_testutil import SLOPE, write_calibration

    flat = write_calibration(tmp_path / "flat.json")
    data = json.loads(flat.read_text())
    for point in data["serving"]["points"]:
        point["compute_mean_ms"] = SLOPE * point["isolated_mean_ms"]
    flat.write_text(json.dumps(data))
    monkeypatch.setenv("COINSIM_CALIBRATION", str(flat))
    scenario = {
        "name": "tinybackup", "seed": 0, "device": "cpu",
        "models": tiny_zoo_table(tiny_cache),
        "coding": {"method": "coin", "samples": 50, "backup": "task_arithmetic"},
        "profile": {"warmup": 5, "samples": 200},
        "testbed": {"repeats": 1, "lead_ms": 50.0},
        "sim": {"r": 1, "n_queries": 300,
                "policies": [{"kind": "backup", "dispatch": "redundant"},
                             {"kind": "backup", "dispatch": "hedged", "delay_ms": "p50"}],
                "traffic": {"kind": "poisson", "load": 0.2, "ensemble_load": 0.03},
                "stragglers": {"p": 0.1, "slowdown": 10.0}},
    }
    path = tmp_path / "tinybackup.toml"
    path.write_text(tomli_w.dumps(scenario))
    result = CliRunner().invoke(cli, ["--quiet", "testbed", str(path), "--out", str(tmp_path / "out"),
                                      "--no-report"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "out" / "tinybackup").glob("testbed-*"))
    measured = pd.read_parquet(folder / "testbed.parquet")
    tasks = pd.read_parquet(folder / "testbed_tasks.parquet")
    assert len(measured) == 300 * 2 and measured["latency_ms"].notna().all()
    for policy in ("backup-redundant", "backup"):
        mine = measured[measured["policy"] == policy]
        assert set(mine["answered_by"]) >= {"direct", "backup"}, policy
        assert (mine["model"] < 0).any()
    assert set(tasks.loc[tasks["server"] == 2, "net"]) == {3}  # the backup server ran the generalist
    # judged on the generalist's real output: the same verdict as the simulator-join on every backup answer
    backup = measured[measured["answered_by"] == "backup"]
    assert len(backup) > 20 and (backup["correct"] == backup["correct_sim_join"]).all()
    fidelity = pd.read_csv(folder / "fidelity.csv")
    rows = fidelity[fidelity["policy"].isin(["backup-redundant", "backup"])]
    assert len(rows) == 2 * 5 * 5 and rows["simulated_ms"].gt(0).all()  # policies x variants x metrics
    summary = json.loads((folder / "summary.json").read_text())
    assert np.isfinite(summary["service_ms"]["backup"]["in_situ_mean_ms"])  # its passes, timed while serving


def sim_all(simulated: pd.DataFrame) -> pd.DataFrame:
    return simulated[(simulated["policy"] == "uncoded") & (simulated["service"] == "isolated")].sort_values(
        "query_id")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_testbed_input_is_one_line_before_any_work(tiny_cache, tmp_path, monkeypatch):
    import scenarios.testbed_run as tr

    monkeypatch.setattr(tr, "prepare_networks", lambda *a, **k: pytest.fail("work started on bad input"))
    base = tmp_path / "bed.toml"
    base.write_text(tomli_w.dumps({"name": "bed", "models": tiny_zoo_table(tiny_cache),
                                   "sim": {"r": 1, "n_queries": 100, "traffic": {"kind": "poisson", "load": 0.2}}}))
    cases = [
        (["--set", 'testbed.addresses=["tcp://127.0.0.1:1"]'], "lists 1 servers"),
        (["--set", 'testbed.addresses=["a", "b", "c"]'], "not a ZeroMQ address"),
        # nobody listens there: the probe gives up after its 5 s, long before any network is trained
        (["--set", f'testbed.addresses=["tcp://127.0.0.1:{_free_port()}", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"]'],
         "did not answer within 5 s"),
        (["--set", 'testbed.addresses=["tcp://127.0.0.1:port", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"]'],
         "cannot be used"),
        (["--set", 'testbed.straggle="sideways"'], "straggle"),
        (["--out", str(base)], "not a folder"),
        (["--set", 'sim.policies=[{kind="replication", dispatch="pool"}]'], "pool"),
        (["--set", 'sim.deployment={instances=2, balancer="power_of_d"}'], "power_of_d' is not served"),
        (["--set", 'sim.draws="task"'], "draws = 'task' is not served"),
        # a server process per server, ~300 MiB each with torch loaded: 20,001 of them fit no machine's memory
        (["--set", 'sim.deployment={instances=10000}'], "would start 20,001 server processes here"),
        (["--set", 'sim.deployment={instances=2}', "--set", 'testbed.addresses=["tcp://127.0.0.1:1"]'],
         "lists 1 servers; the scenario has 5"),
    ]
    for args, needle in cases:
        result = CliRunner().invoke(cli, ["testbed", str(base), *args, "--out", str(tmp_path / "out")]
                                    if "--out" not in args else ["testbed", str(base), *args])
        assert result.exit_code == 2, (args, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_failed_simulation_keeps_every_served_point_for_resimulate(tiny_cache, tmp_path, monkeypatch):
    """Serving is what takes the time: when simulating a served point fails, the other points are still served,
    and the measured records, profiles and calibration are published as a folder `--resimulate` completes."""
    import scenarios.testbed_run as testbed_run

    scenario = {"name": "tinyfail", "seed": 0, "device": "cpu", "models": tiny_zoo_table(tiny_cache),
                "coding": {"method": "coin", "samples": 50}, "profile": {"warmup": 5, "samples": 200},
                "testbed": {"repeats": 1, "lead_ms": 50.0},
                "sim": {"r": 1, "n_queries": 200, "policies": ["uncoded"], "traffic": {"kind": "poisson", "load": 0.2}},
                "sweep": {"axis": "stragglers.p", "values": [0.0, 0.1]}}
    path = tmp_path / "tinyfail.toml"
    path.write_text(tomli_w.dumps(scenario))
    real = testbed_run._simulate_variants
    calls = []

    def broken(*args, **kwargs):
        calls.append(args[3])  # the point index
        raise RuntimeError("a bug in the simulator")

    monkeypatch.setattr(testbed_run, "_simulate_variants", broken)
    result = CliRunner().invoke(cli, ["--quiet", "testbed", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and calls == [0], (result.output, calls)  # tried once, not per point
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    (folder,) = (tmp_path / "out" / "tinyfail").glob("testbed-*")
    assert "a bug in the simulator" in line and f"--resimulate {folder}" in line
    measured = pd.read_parquet(folder / "testbed.parquet")
    assert sorted(measured["point"].unique()) == [0, 1] and len(measured) == 2 * 200  # both points served
    assert "incomplete" in json.loads((folder / "summary.json").read_text())
    report = CliRunner().invoke(cli, ["report", str(folder)])  # measurements only: says so, renders nothing
    assert report.exit_code == 2 and "--resimulate" in report.output and not (folder / "report.html").exists()
    monkeypatch.setattr(testbed_run, "_simulate_variants", real)
    again = CliRunner().invoke(cli, ["--quiet", "testbed", "--resimulate", str(folder)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    (redo,) = folder.glob("resimulated-*")
    fidelity = pd.read_csv(redo / "fidelity.csv")
    assert set(fidelity["point"]) == {0, 1} and set(fidelity["policy"]) == {"uncoded"}
