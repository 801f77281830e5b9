"""`coinsim report` and `--resume` through the command line (click's CliRunner), not through run_scenario."""

from __future__ import annotations

import pandas as pd
import pytest
import tomli_w
from click.testing import CliRunner

from scenarios.cli import cli
from tests.scenarios.test_runner import SIM_ONLY, Interrupt


@pytest.fixture
def scenario_file(tmp_path):
    path = tmp_path / "simonly.toml"
    path.write_text(tomli_w.dumps(dict(SIM_ONLY, sim=dict(SIM_ONLY["sim"], n_queries=1500))))
    return path


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_report_renders_a_result_folder_written_without_one(tmp_path, scenario_file):
    out = tmp_path / "out"
    run = CliRunner().invoke(cli, ["--quiet", "run", str(scenario_file), "--no-report", "--out", str(out)])
    assert run.exit_code == 0, run.output
    (folder,) = (out / "simonly").iterdir()
    assert not (folder / "report.html").exists() and not (folder / "figures").exists()
    report = CliRunner().invoke(cli, ["report", str(folder)])
    assert report.exit_code == 0, report.output
    html = (folder / "report.html").read_text()
    assert "report.html" in report.output and "<html" in html.lower()
    assert "coded-hedged" in html and "uncoded" in html  # both policies are reported
    figures = list((folder / "figures").iterdir())
    assert figures and all(f.stat().st_size > 0 for f in figures)
    # rendering again replaces the report instead of failing on what is there
    assert CliRunner().invoke(cli, ["report", str(folder)]).exit_code == 0
    missing = _one_error_line(CliRunner().invoke(cli, ["report", str(tmp_path / "nowhere")]))
    assert "nowhere" in missing


def test_resume_through_the_cli_finishes_an_interrupted_run(tmp_path, scenario_file, monkeypatch):
    args = ["--quiet", "run", str(scenario_file), "--no-report"]
    fresh = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "fresh")])
    assert fresh.exit_code == 0, fresh.output
    (fresh_folder,) = (tmp_path / "fresh" / "simonly").iterdir()

    calls = Interrupt(monkeypatch, at=3).calls
    out = tmp_path / "out"
    stopped = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert stopped.exit_code == 130
    assert "2 point(s) finished" in stopped.stderr and "--resume" in stopped.stderr
    (work,) = (out / "simonly").iterdir()
    assert work.name.startswith(".unfinished-") and len(list(work.glob("point-*.json"))) == 2

    # the same command again without --resume refuses, before any work, and keeps the finished points
    calls.clear()
    refused = _one_error_line(CliRunner().invoke(cli, [*args, "--out", str(out)]))
    assert "--resume" in refused and calls == []
    assert len(list(work.glob("point-*.json"))) == 2

    resumed = CliRunner().invoke(cli, [*args, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert calls == [0.1], "only the unfinished point is simulated again"
    (folder,) = (out / "simonly").iterdir()
    assert not folder.name.startswith(".") and str(folder) in resumed.output
    pd.testing.assert_frame_equal(pd.read_parquet(fresh_folder / "sweep.parquet"),
                                  pd.read_parquet(folder / "sweep.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(fresh_folder / "queries.parquet"),
                                  pd.read_parquet(folder / "queries.parquet"))


def test_resume_runs_again_the_points_whose_files_were_damaged(tmp_path, scenario_file, monkeypatch):
    args = ["run", str(scenario_file), "--no-report"]
    fresh = CliRunner().invoke(cli, ["--quiet", *args, "--out", str(tmp_path / "fresh")])
    assert fresh.exit_code == 0, fresh.output
    (fresh_folder,) = (tmp_path / "fresh" / "simonly").iterdir()

    interrupt = Interrupt(monkeypatch, at=3)
    calls = interrupt.calls
    out = tmp_path / "out"
    assert CliRunner().invoke(cli, ["--quiet", *args, "--out", str(out)]).exit_code == 130
    (work,) = (out / "simonly").iterdir()
    first, second = sorted(work.glob("point-*.parquet"))
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])  # a truncated table
    second.with_suffix(".json").write_text('{"n_queries": 15')  # a summary cut mid-write by another tool
    calls.clear()
    interrupt.armed = False
    resumed = CliRunner().invoke(cli, [*args, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "point(s) 0, 1 are damaged" in resumed.output
    assert sorted(calls) == sorted([0.0, 0.05, 0.1]), "the two damaged points and the unfinished one are run again"
    (folder,) = (out / "simonly").iterdir()
    pd.testing.assert_frame_equal(pd.read_parquet(fresh_folder / "sweep.parquet"),
                                  pd.read_parquet(folder / "sweep.parquet"))


@pytest.mark.parametrize(("name", "text"), [("calibration.json", '{"schema": 3, "cyc'),
                                            ("served_profile.csv", "model,ms\nlow,0.5\n")])
def test_resume_over_a_damaged_profile_is_one_line_before_any_work(tmp_path, scenario_file, monkeypatch, name, text):
    args = ["--quiet", "run", str(scenario_file), "--no-report"]
    calls = Interrupt(monkeypatch, at=2).calls
    out = tmp_path / "out"
    assert CliRunner().invoke(cli, [*args, "--out", str(out)]).exit_code == 130
    (work,) = (out / "simonly").iterdir()
    (work / name).write_text(text)
    calls.clear()
    line = _one_error_line(CliRunner().invoke(cli, [*args, "--out", str(out), "--resume"]))
    assert name in line and "damaged" in line and calls == []
