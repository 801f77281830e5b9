"""The CLI's contract: one-line errors with exit code 2 and nothing written; a table on success."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from scenarios.cli import cli

BAD = {
    "unknown-dataset": 'experts=[{name="a",dataset="mnst"},{name="b",dataset="mnist5k"}]\n',
    "no-such-label": 'experts=[{name="a",dataset="mnist5k",labels=[0,12]},{name="b",dataset="mnist5k"}]\n',
    "missing-root": 'data_root="/does/not/exist"\nexperts=[{name="a",dataset="mnist"},{name="b",dataset="mnist5k"}]\n',
    "malformed": 'experts=[{name="a",dataset=',
    "unknown-key": 'experts=[{name="a",dataset="mnist5k"},{name="b",dataset="mnist5k"}]\nepochs=3\n',
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    config = tmp_path / f"{case}.toml"
    config.write_text(BAD[case])
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["models", "train", "--config", str(config), "--cache-dir", str(cache)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not cache.exists()


def test_real_process_exit_code_and_no_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(BAD["unknown-dataset"])
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-m", "scenarios.cli", "models", "train", "--config", str(config), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not cache.exists()


def test_threads_option_sets_torch_threads():
    import torch

    before = torch.get_num_threads()
    try:
        assert CliRunner().invoke(cli, ["--threads", "1", "scenarios"]).exit_code == 0
        assert torch.get_num_threads() == 1
        assert CliRunner().invoke(cli, ["--threads", "0", "scenarios"]).exit_code == 2
    finally:
        torch.set_num_threads(before)


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "coinsim" in result.output


def test_models_train_prints_table_then_reuses_cache(tmp_path):
    config = tmp_path / "zoo.toml"
    config.write_text(
        'name="clitest"\n[models]\nnetwork={width=4}\nbase={fraction=0.2,train={epochs=1}}\nfinetune={epochs=1}\n'
        'experts=[{name="low",dataset="mnist5k",labels=[0,1,2,3,4]},{name="high",dataset="mnist5k",labels=[5,6,7,8,9]}]\n'
    )
    args = ["--quiet", "models", "train", "--config", str(config), "--cache-dir", str(tmp_path / "c"),
            "--device", "cpu"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "mnist5k[0-4]" in first.output and "miss" in first.output
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0 and second.output.count(" hit ") == 3
    listed = CliRunner().invoke(cli, ["models", "list", "--cache-dir", str(tmp_path / "c")])
    assert "clitest" in listed.output and "high" in listed.output


def test_help_lists_every_command_uncut_and_run_help_names_its_defaults():
    # an 80-column terminal: click cuts a description that does not fit with "..."
    listing = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    commands = listing.split("Commands:")[1].strip().splitlines()
    assert {line.split()[0] for line in commands} == set(cli.commands)
    assert not any(line.rstrip().endswith("...") for line in commands), commands
    run_help = CliRunner().invoke(cli, ["run", "--help"], terminal_width=80).output
    assert "quickstart" in run_help and "TOML" in run_help and "sim.n_queries=5000" in run_help
