"""The served latency model at the CLI boundary and in the runner: calibration files named, corrupt, of another
machine, or missing — one line and exit 2 before any work, or a new measurement that says why."""

# ruff: noqa: F811 - the fixtures home and no_work come from test_validation and are taken by name
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import calibration_testutil as cu
from tests.scenarios.test_validation import home, networks_scenario, no_work, refused, run_args, write  # noqa: F401


def test_a_corrupt_calibration_named_on_the_command_line_is_refused(home: Path, no_work: None) -> None:
    bad = home / "cal.json"
    good = cu.write_calibration(home / "good.json").read_text()
    bad.write_text(good[: len(good) // 3])
    line = refused(run_args(write(home, networks_scenario()), home / "out", "--calibration", str(bad)), home,
                   expect="--calibration")
    assert "truncated" in line and str(bad) in line


def test_a_calibration_of_another_machine_is_refused(home: Path, no_work: None) -> None:
    other = dict(cu.calibration_dict()["machine"], cpu_model="Some Other CPU")
    path = cu.write_calibration(home / "other.json", machine=other)
    line = refused(run_args(write(home, networks_scenario()), home / "out", "--calibration", str(path)), home,
                   expect="another machine")
    assert "cpu_model" in line


def test_compute_latency_model_needs_no_calibration(home: Path, no_work: None) -> None:
    # a missing calibration file is not looked at when the run simulates bare compute
    from click.testing import CliRunner

    from scenarios.cli import cli

    args = ["validate", str(write(home, networks_scenario())), "--latency-model", "compute", "--calibration",
            str(home / "missing.json")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def _scenario(**profile):
    from scenarios.schema import scenario_from_dict

    table = networks_scenario()
    table["profile"] = {**table.get("profile", {}), **profile}
    return scenario_from_dict(table, "nets.toml")


def test_unusable_cached_calibration_is_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import calibration.measure
    from scenarios.runner import serving_calibration

    cached = tmp_path / "cal.json"
    cached.write_text('{"schema_version": 1}')  # an older schema
    monkeypatch.setenv("COINSIM_CALIBRATION", str(cached))
    measured = []
    monkeypatch.setattr(calibration.measure, "calibrate",
                        lambda device, progress=True: measured.append(device) or cu.hand_calibration())
    cal, path = serving_calibration(_scenario(), quiet=False)
    assert measured == ["cpu"] and path == cached and cal.serving.slope == cu.SLOPE
    assert "schema_version 1" in capsys.readouterr().err
    from calibration.file import SCHEMA_VERSION

    assert SCHEMA_VERSION > 1 and json.loads(cached.read_text())["schema_version"] == SCHEMA_VERSION  # saved, whole
    # now valid: used as it is, nothing measured
    serving_calibration(_scenario(), quiet=True)
    assert measured == ["cpu"]


def test_no_calibration_for_compute_or_live() -> None:
    from scenarios.runner import serving_calibration

    assert serving_calibration(_scenario(latency_model="compute")) == (None, None)
    assert serving_calibration(_scenario(mode="live")) == (None, None)


def test_a_run_serves_its_own_networks_once_and_keeps_their_served_passes(home: Path, tiny_cache: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd
    from click.testing import CliRunner

    import scenarios.runner as runner
    from scenarios.cli import cli

    # caching, not the busy-machine guard (which keeps a profile measured beside other work out of the cache: the
    # suite runs its tests two at a time)
    monkeypatch.setattr(runner, "BUSY_CORES_LIMIT", float("inf"))
    # real servers, shorter levels than a user's profile (1,500 lone passes per level took a minute here; 100 are
    # enough to tell a cached profile from a new one): a profile's levels and a probe's are told apart by what they
    # are asked for
    import calibration.measure as measure

    asked: list[tuple[float, ...]] = []
    real = measure.measure_served_passes

    def shorter(*args, **kwargs):
        asked.append(tuple(kwargs.get("utilizations", measure.REHEARSAL_UTILIZATION)))
        kwargs["min_lone"] = min(kwargs.get("min_lone", 300), 100)
        kwargs.setdefault("span_ms", 300.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(measure, "measure_served_passes", shorter)

    table = networks_scenario()
    table["models"]["cache_dir"] = str(tiny_cache)  # the session's trained tiny zoo
    # (drift of the isolated passes between the two runs re-measures, tests/scenarios/test_served_drift.py; a
    # tiny network's 0.1 ms median moved 8 % between two runs here, so this caching test allows any)
    table["profile"] = {**table["profile"], "served_passes": "measured", "served_drift_pct": 100.0,
                        "served_probe_pct": 100.0}
    table["sim"] = {**table["sim"], "n_queries": 300}
    path = write(home, table)
    first = CliRunner().invoke(cli, ["run", str(path), "--out", str(home / "a"), "--no-report"])
    assert first.exit_code == 0, first.output
    assert "served profile: serving coded, high, low" in first.output
    (folder,) = (home / "a" / "nets").iterdir()
    profile = pd.read_csv(folder / "served_profile.csv")
    assert set(profile["model"]) == {"low", "high", "coded"}
    assert (profile.groupby("model")["utilization"].nunique() == 2).all() and (profile["ms"] > 0).all()
    assert len(list((home / "cache" / "served").glob("*.csv"))) == 1
    said = json.loads((folder / "summary.json").read_text())["latency_model"]["served_profile"]
    assert said == {"source": "measured", "why": "none cached", "cached": True}
    assert "served profile: measured in this run\n" in first.output
    assert asked == [measure.REHEARSAL_UTILIZATION]
    # the same networks under the same calibration: the cached profile, once a probe of its lowest level agrees
    # (its limit is open too: a probe's 200 passes of a 0.1 ms network on a shared machine)
    second = CliRunner().invoke(cli, ["run", str(path), "--out", str(home / "b"), "--no-report"])
    assert second.exit_code == 0, second.output
    assert "served profile: the cached one, confirmed by a probe" in second.output
    assert "served profile: serving" not in second.output
    assert asked[1:] == [measure.REHEARSAL_UTILIZATION[:1]]
    (again,) = (home / "b" / "nets").iterdir()
    assert (again / "served_profile.csv").read_bytes() == (folder / "served_profile.csv").read_bytes()
    said = json.loads((again / "summary.json").read_text())["latency_model"]["served_profile"]
    assert said["source"] == "cached" and set(said["probe_change_pct"]) == {"low", "high", "coded"}
    assert "served profile: taken from the cache, confirmed by a probe" in second.output
    # and a replay of the first run uses its own copy
    table["profile"]["replay"] = str(folder)
    third = CliRunner().invoke(cli, ["run", str(write(home, table, "r.toml")), "--out", str(home / "c"),
                                     "--no-report"])
    assert third.exit_code == 0, third.output
    (replayed,) = (home / "c" / "nets").iterdir()
    said = json.loads((replayed / "summary.json").read_text())["latency_model"]["served_profile"]
    assert said == {"source": "replayed", "from": str(folder)}
    pd.testing.assert_frame_equal(pd.read_parquet(replayed / "sweep.parquet"),
                                  pd.read_parquet(folder / "sweep.parquet"))
