"""sweep / scenarios / validate from the command line."""

import pandas as pd
import tomli_w
from click.testing import CliRunner

from scenarios.cli import cli
from tests.scenarios.test_runner import SIM_ONLY


def _write(tmp_path, table):
    path = tmp_path / "s.toml"
    path.write_text(tomli_w.dumps(table))
    return path


def test_sweep_grid_is_a_product_and_writes_one_row_per_point_and_policy(tmp_path):
    table = {k: v for k, v in SIM_ONLY.items() if k != "sweep"}
    path = _write(tmp_path, table)
    result = CliRunner().invoke(cli, [
        "--quiet", "sweep", str(path), "--grid", "stragglers.p=0,0.1", "--grid", "traffic.load=0.3,0.5",
        "--workers", "2", "--no-report", "--out", str(tmp_path / "out"), "--set", "sim.n_queries=2000",
    ])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "out" / "simonly").iterdir()
    sweep = pd.read_parquet(folder / "sweep.parquet")
    assert len(sweep) == 4 * 2
    assert sorted(set(zip(sweep["straggler_p"], sweep["load"], strict=True))) == [
        (0.0, 0.3), (0.0, 0.5), (0.1, 0.3), (0.1, 0.5)]
    # a heavier load makes the uncoded mean latency longer at the same straggler rate
    uncoded = sweep[sweep.policy == "uncoded"].set_index(["straggler_p", "load"])["mean_ms"]
    assert uncoded[(0.0, 0.5)] > uncoded[(0.0, 0.3)]


def test_sweep_needs_a_well_formed_grid(tmp_path):
    path = _write(tmp_path, SIM_ONLY)
    result = CliRunner().invoke(cli, ["sweep", str(path), "--grid", "stragglers.p"])
    assert result.exit_code == 2 and "KEY=V1,V2" in result.output


def test_scenarios_lists_descriptions_and_validate_checks_without_running(tmp_path):
    listed = CliRunner().invoke(cli, ["scenarios"])
    assert listed.exit_code == 0 and "negative-correlation" in listed.output and "Markov" in listed.output
    ok = CliRunner().invoke(cli, ["validate", str(_write(tmp_path, SIM_ONLY))])
    assert ok.exit_code == 0 and "3 point(s)" in ok.output
    bad = dict(SIM_ONLY, bogus=1, seed="x")
    failed = CliRunner().invoke(cli, ["validate", str(_write(tmp_path, bad))])
    assert failed.exit_code == 2
    message = failed.stderr.strip()
    assert len(message.splitlines()) == 1 and "bogus" in message and "seed" in message
