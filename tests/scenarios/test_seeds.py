"""--seed sets every seed; --sim-seed only the simulation's (no retraining); --zoo-seed only the networks'."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

import scenarios.preflight as preflight
import scenarios.runner as runner
from scenarios.cli import cli
from scenarios.schema import load_scenario


@pytest.fixture(autouse=True)
def _no_preflight(monkeypatch):
    """Which seeds reach the run is all these tests ask: the checks before work (the memory probes run the
    scenario's points for a few seconds) are tested on their own."""
    monkeypatch.setattr(preflight, "check_before_work", lambda *a, **k: None)


@pytest.mark.parametrize("args, sim_seed, zoo_seed", [
    ([], 0, 0),
    (["--seed", "5"], 5, 5),
    (["--sim-seed", "7"], 7, 0),
    (["--zoo-seed", "3"], 0, 3),
    (["--sim-seed", "7", "--zoo-seed", "3"], 7, 3),
    (["--set", "seed=9"], 9, 0),  # a --set of the scenario's seed alone leaves the trained networks alone
])
def test_seed_options(monkeypatch, tmp_path, args, sim_seed, zoo_seed):
    seen = {}

    def fake_run(scenario, raw, out_root, **_kwargs):
        seen["sim"], seen["zoo"] = scenario.seed, scenario.models.seed
        raise KeyboardInterrupt  # stop before any work; the CLI turns it into exit 130

    monkeypatch.setattr(runner, "run_scenario", fake_run)
    result = CliRunner().invoke(cli, ["run", "quickstart", "--out", str(tmp_path), *args])
    assert result.exit_code == 130, result.output
    assert (seen["sim"], seen["zoo"]) == (sim_seed, zoo_seed)


@pytest.mark.parametrize("args, sim_seed", [(["--seed", "5"], 5), (["--sim-seed", "6"], 6),
                                            (["--seed", "5", "--sim-seed", "6"], 6)])
def test_seed_on_a_pure_simulation_sets_its_seed(monkeypatch, tmp_path, args, sim_seed):
    """A scenario without networks has one seed: --seed sets it (and asks for no networks' seed)."""
    seen = {}

    def fake_run(scenario, raw, out_root, **_kwargs):
        seen["sim"], seen["models"], seen["raw"] = scenario.seed, scenario.models, raw
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_scenario", fake_run)
    result = CliRunner().invoke(cli, ["run", "sim-what-if", "--out", str(tmp_path), *args])
    assert result.exit_code == 130, result.output
    assert seen["sim"] == sim_seed and seen["models"] is None and "models" not in seen["raw"]


def test_a_files_own_zoo_seed_is_kept():
    scenario, _ = load_scenario("quickstart", {"seed": 4, "models.seed": 2})
    assert (scenario.seed, scenario.models.seed) == (4, 2)


@pytest.mark.parametrize("command", ["code", "testbed"])
def test_threads_after_code_and_testbed(command):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result = CliRunner().invoke(cli, [command, "no-such-scenario", "--threads", "1"])
        assert result.exit_code == 2 and "no-such-scenario" in result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("args", "omp", "expected"), [
    (["code", "no-such-scenario"], None, 1),  # no --threads: one thread
    (["code", "no-such-scenario"], "2", 2),  # ... unless the user's OMP_NUM_THREADS says otherwise
    (["--threads", "2", "code", "no-such-scenario"], None, 2),  # given before the subcommand: kept after it
    (["code", "no-such-scenario", "--threads", "2"], None, 2),
])
def test_default_is_one_thread_and_an_explicit_count_wins(monkeypatch, args, omp, expected):
    import torch

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert CliRunner().invoke(cli, args).exit_code == 2
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_default_thread_count_in_a_fresh_process(tmp_path):
    # torch not yet imported when the CLI starts: the default reaches it through OMP_NUM_THREADS
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = ("import sys; from scenarios.cli import main; sys.argv = ['coinsim', 'scenarios']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "import torch; print('threads', torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "threads 1" in out.stdout, out.stdout + out.stderr
