"""The joint run: validated up front, joined per query, written atomically, same numbers locally and on Dask."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from scenarios.cli import cli
from scenarios.points import AnswerTables, join_correctness
from scenarios.runner import run_scenario
from scenarios.schema import ScenarioError, builtin_names, load_scenario, load_zoo_config, scenario_from_dict
from tests.conftest import tiny_zoo_table

SIM_ONLY = {
    "name": "simonly",
    "seed": 3,
    "sim": {
        "n_experts": 2,
        "r": 1,
        "n_queries": 3000,
        "policies": ["uncoded", {"kind": "coded", "dispatch": "hedged", "delay_ms": "p95"}],
        "traffic": {"kind": "poisson", "load": 0.4},
        "service": {"expert": {"kind": "exponential", "mean_ms": 2.0}},
        "stragglers": {"p": 0.0, "slowdown": 8.0},
    },
    "sweep": {"axis": "stragglers.p", "values": [0.0, 0.05, 0.1]},
}


def _tiny_networks(cache_dir):
    return {
        "name": "tinyrun",
        "seed": 0,
        "device": "cpu",
        "models": tiny_zoo_table(cache_dir),
        "coding": {"method": "coin", "compare": ["vanilla"], "samples": 50},
        "profile": {"warmup": 2, "samples": 30, "live_check_queries": 300},
        "sim": {
            "r": 1,
            "n_queries": 2000,
            "policies": ["uncoded", "replication", {"kind": "coded", "dispatch": "redundant"}],
            "traffic": {"kind": "poisson", "load": 0.3, "ensemble_rate_per_ms": 0.0},
            "stragglers": {"p": 0.1, "slowdown": 10.0},
        },
    }


def _tables(r: int = 1, corrupt_coded: bool = False) -> AnswerTables:
    """Three experts, 4 classes; coded outputs are the exact linear combination (or garbage)."""
    from coin.multicode import cauchy_coding_matrix

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=12)
    outs = rng.normal(size=(3, 12, 4))
    outs[:, np.arange(12), labels] += 3.0  # every expert is right everywhere ...
    outs[1, 5] = 0.0
    outs[1, 5, (labels[5] + 1) % 4] = 5.0  # ... except expert 1 on row 5
    matrix = cauchy_coding_matrix(3, r)
    coded = np.einsum("kj,jsc->ksc", matrix, outs)
    if corrupt_coded:
        coded = rng.normal(size=coded.shape) * 10
    return AnswerTables(labels, np.array([0, 4, 8, 12]), outs, coded, matrix)


def test_join_decodes_from_exactly_the_outputs_that_came_back():
    records = pd.DataFrame({
        "model": [1, 1, 1, -1, -1],
        "sample_id": [1, 1, 1, 5, 2],
        # expert 1 direct (bit 1) / decoded from experts 0, 2 + coded server 3 / same, second coded server 4
        "answered_by": ["direct", "decoded", "decoded", "direct", "decoded"],
        "answer_mask": [0b00010, 0b01101, 0b10101, 0b00111, 0b01011],
    })
    exact = _tables(r=2)
    # row 5 is expert 1's sample 1; it gets that wrong, so does its exact decode; ensemble queries stay right
    assert join_correctness(records, exact, 3).tolist() == [False, False, False, True, True]
    records.loc[:, "sample_id"] = [0, 0, 0, 0, 0]
    assert join_correctness(records, exact, 3).tolist() == [True] * 5
    garbage = _tables(r=2, corrupt_coded=True)
    decoded_ok = join_correctness(records, garbage, 3)
    assert decoded_ok[0] and decoded_ok[3] and not decoded_ok[1:3].all()


def test_replica_outputs_are_their_experts_outputs_not_coded_ones():
    garbage = _tables(r=2, corrupt_coded=True)
    records = pd.DataFrame({
        "model": [-1, -1],
        "sample_id": [0, 4],
        "answered_by": ["replica", "replica"],
        "answer_mask": [0b01110, 0b10101],  # a replica of expert 0 (server 3) / of expert 1 (server 4) answered
    })
    hosts = ["0", "1", "2", "0", "1"]
    assert join_correctness(records, garbage, 3, hosts).tolist() == [True, True]


def test_two_missing_outputs_are_recovered_with_two_coded_models():
    exact = _tables(r=2)
    rows = np.arange(12)
    both = exact.decoded([0, 2], [0, 1], rows)
    assert np.allclose(both, exact.expert_outs[[0, 2]])


def test_sim_only_run_writes_a_complete_folder(tmp_path):
    scenario = scenario_from_dict(SIM_ONLY)
    folder = run_scenario(scenario, SIM_ONLY, tmp_path, quiet=True)
    assert {p.name for p in folder.iterdir()} >= {"scenario.toml", "summary.json", "queries.parquet", "sweep.parquet"}
    sweep = pd.read_parquet(folder / "sweep.parquet")
    assert sorted(sweep["straggler_p"].unique()) == [0.0, 0.05, 0.1]
    assert set(sweep["policy"]) == {"uncoded", "coded-hedged"}
    # more stragglers never make the uncoded tail shorter (monotone coupling of straggler draws)
    tail = sweep[sweep.policy == "uncoded"].sort_values("straggler_p")["p99_ms"].to_numpy()
    assert np.all(np.diff(tail) >= 0)
    # load 0.4 of two exponential(2 ms) experts = 0.4 queries/ms in total
    queries = pd.read_parquet(folder / "queries.parquet")
    first = queries[(queries.point == 0) & (queries.policy == "uncoded")]
    rate = len(first) / first["arrival_ms"].max()
    assert abs(rate - 0.4) < 4 * np.sqrt(0.4 / first["arrival_ms"].max())
    assert not [p for p in tmp_path.rglob(".partial-*")]


def test_sim_only_same_seed_same_numbers_and_dask_agrees(tmp_path):
    scenario = scenario_from_dict(SIM_ONLY)
    a = pd.read_parquet(run_scenario(scenario, SIM_ONLY, tmp_path / "a", quiet=True) / "sweep.parquet")
    b = pd.read_parquet(run_scenario(scenario, SIM_ONLY, tmp_path / "b", quiet=True) / "sweep.parquet")
    pd.testing.assert_frame_equal(a, b)
    on_dask = dict(SIM_ONLY, sweep=dict(SIM_ONLY["sweep"], executor="dask", workers=2))
    c = pd.read_parquet(run_scenario(scenario_from_dict(on_dask), on_dask, tmp_path / "c", quiet=True)
                        / "sweep.parquet")
    pd.testing.assert_frame_equal(a, c)
    in_processes = dict(SIM_ONLY, sweep=dict(SIM_ONLY["sweep"], executor="local", workers=2))
    d = pd.read_parquet(run_scenario(scenario_from_dict(in_processes), in_processes, tmp_path / "d", quiet=True)
                        / "sweep.parquet")
    pd.testing.assert_frame_equal(a, d)


def test_failed_write_leaves_no_result_folder(tmp_path, monkeypatch):
    scenario = scenario_from_dict(SIM_ONLY)

    real_to_parquet = pd.DataFrame.to_parquet

    def disk_full(self, path, *args, **kwargs):  # the points are saved, the result folder's tables are not
        if Path(path).name.startswith("."):
            return real_to_parquet(self, path, *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    with pytest.raises(OSError):
        run_scenario(scenario, SIM_ONLY, tmp_path, quiet=True)
    # no result folder; only the hidden work folder that `--resume` continues from
    assert [p.name[:12] for p in (tmp_path / "simonly").iterdir()] == [".unfinished-"]


class Interrupt:
    """Stands in for `scenarios.runner.run_point`: logs each point's straggler p in `calls` and raises
    KeyboardInterrupt (Ctrl-C) at call number `at` while `armed`."""

    def __init__(self, monkeypatch, at: int) -> None:
        import scenarios.runner as runner

        self.calls: list[float] = []
        self.at, self.armed, self.real = at, True, runner.run_point
        monkeypatch.setattr(runner, "run_point", self)

    def __call__(self, config, seed, answers, out=None):
        self.calls.append(config.stragglers.p)
        if self.armed and len(self.calls) == self.at:
            raise KeyboardInterrupt
        return self.real(config, seed, answers, out)


def test_interrupted_sweep_resumes_without_redoing_finished_points(tmp_path, monkeypatch):
    scenario = scenario_from_dict(SIM_ONLY)
    fresh = pd.read_parquet(run_scenario(scenario, SIM_ONLY, tmp_path / "fresh", quiet=True) / "sweep.parquet")
    calls = Interrupt(monkeypatch, at=3).calls
    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario, SIM_ONLY, tmp_path / "out", quiet=True)
    calls.clear()
    folder = run_scenario(scenario, SIM_ONLY, tmp_path / "out", quiet=True, resume=True)
    assert calls == [0.1], "only the unfinished point is simulated again"
    pd.testing.assert_frame_equal(fresh, pd.read_parquet(folder / "sweep.parquet"))
    assert [p.name for p in (tmp_path / "out" / "simonly").iterdir()] == [folder.name]


def test_a_failing_renderer_keeps_the_results(tmp_path, capsys):
    scenario = scenario_from_dict(SIM_ONLY)

    def broken_render(folder):
        raise RuntimeError("renderer crashed")

    folder = run_scenario(scenario, SIM_ONLY, tmp_path, quiet=True, render=broken_render)
    assert (folder / "summary.json").is_file() and not (folder / "report.html").exists()
    assert "coinsim report" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    ({"sim": dict(SIM_ONLY["sim"], policies=["teleport"])}, "teleport"),
    ({"sweep": {"axis": "stragglers.p", "values": [0.1, 1.5]}}, "sweep stragglers.p = 1.5"),
    ({"sim": dict(SIM_ONLY["sim"], traffic={"kind": "poisson", "load": -1})}, "load"),
    ({"coding": {"method": "magic"}, "models": {"experts": [{"name": "a", "dataset": "mnist5k"},
                                                            {"name": "b", "dataset": "digits"}]}}, "magic"),
    ({"unknown_table": {}}, "unknown_table"),
])
def test_bad_scenarios_fail_before_any_work(change, message):
    with pytest.raises(ScenarioError, match=message.replace(".", r"\.")):
        scenario_from_dict({**SIM_ONLY, **change})


def test_cli_bad_scenario_is_one_line_exit_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[sim]\nn_experts = 2\ntraffic = { kind = "poisson", rate_per_ms = -3 }\n')
    result = CliRunner().invoke(cli, ["run", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "rate_per_ms" in result.stderr
    assert not (tmp_path / "out").exists()


def test_builtin_scenarios_validate():
    names = builtin_names()
    wanted = {"quickstart", "negative-correlation", "ensemble", "dataset-pair", "paper-table1", "paper-table2", "fleet",
              "coin-vs-parity"}
    assert wanted <= set(names)
    for name in names:
        if name.startswith("paper-"):
            with pytest.raises(ScenarioError, match="data_root"):
                load_scenario(name)
        else:
            scenario, _ = load_scenario(name)
            assert scenario.sim


def test_paper_scenarios_run_validation_when_the_data_root_exists(tmp_path):
    scenario, _ = load_scenario("paper-table2", {"models.data_root": str(tmp_path)})
    assert [e.dataset for e in scenario.models.experts] == ["cifar10", "mnist"]


@pytest.fixture
def zoo_cache(tiny_cache):
    return tiny_cache


def test_networks_run_joins_real_answers(tmp_path, zoo_cache):
    raw = _tiny_networks(zoo_cache)
    scenario = scenario_from_dict(raw)
    folder = run_scenario(scenario, raw, tmp_path / "out", quiet=True)
    summary = json.loads((folder / "summary.json").read_text())
    queries = pd.read_parquet(folder / "queries.parquet")
    nda = pd.read_csv(folder / "nda.csv")
    assert set(nda["method"]) == {"coin", "vanilla"}
    # issue 11, one unit one name: percent as *_pct and seconds as *_s, as in summary.json's coding section
    assert {"nda_pct", "decoded_acc_pct", "expert_acc_pct", "encode_s"} <= set(nda.columns)
    assert not {"nda", "decoded_acc", "expert_acc", "encode_seconds"} & set(nda.columns)
    for method, rows in nda.groupby("method"):
        assert dict(zip(rows["expert"], rows["nda_pct"], strict=True)) == summary["coding"][method]["nda_pct"]
    assert set(summary["profile"]) == {"low", "high", "coded"}
    for point in summary["points"]:  # the query rate the load came to, against the arrivals actually drawn
        arrivals = queries.loc[(queries.point == point["point"]) & (queries.policy == "uncoded"), "arrival_ms"]
        n = len(arrivals)
        assert point["rate_per_ms"] > 0 and point["ensemble_rate_per_ms"] == 0
        assert (n - 1) / (arrivals.max() - arrivals.min()) == pytest.approx(point["rate_per_ms"], rel=5 / n ** 0.5)
    measured = queries[~queries["warmup"]]
    for policy, stats in summary["policies"].items():
        rows = measured[measured.policy == policy]
        assert stats["accuracy_pct"] == pytest.approx(rows["correct"].mean() * 100)
    # the uncoded policy answers every query directly: its accuracy is the experts' accuracy on drawn samples
    uncoded = measured[measured.policy == "uncoded"]
    assert set(uncoded["answered_by"]) == {"direct"}
    expert_acc = {e["name"]: e["accuracy_pct"] for e in summary["experts"]}
    for name, rows in uncoded.groupby("model_name", observed=True):
        n = len(rows)
        assert abs(rows["correct"].mean() * 100 - expert_acc[name]) < 100 * 4 * np.sqrt(0.25 / n)
    coded = measured[measured.policy == "coded"]
    assert (coded["answered_by"] == "decoded").mean() > 0.05
    # recompute every query's correctness from queries.parquet and the saved network outputs alone
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    labels, offsets = saved["labels"], saved["offsets"]
    experts, coded_out, beta = saved["expert_outputs"], saved["coded_outputs"][0], saved["coding_matrix"][0]
    for row in queries.itertuples():
        index = offsets[row.model] + row.sample_id
        if row.answered_by == "decoded":
            other = 1 - row.model
            output = (coded_out[index] - beta[other] * experts[other, index]) / beta[row.model]
        else:
            output = experts[row.model, index]
        assert (output.argmax() == labels[index]) == row.correct, row
    live = summary["live_check"]
    assert live["n_queries"] == 300 and set(live["per_policy"]) == set(summary["policies"])
    assert all(v > 0 for stats in live["per_policy"].values() for v in stats.values())

    # same seed + the same (replayed) latency profile → the same numbers, query for query
    raw_again = dict(raw, profile={"replay": str(folder)})
    again = run_scenario(scenario_from_dict(raw_again), raw_again, tmp_path / "again", quiet=True)
    pd.testing.assert_frame_equal(pd.read_csv(folder / "nda.csv").drop(columns="encode_s"),
                                  pd.read_csv(again / "nda.csv").drop(columns="encode_s"))
    pd.testing.assert_frame_equal(queries, pd.read_parquet(again / "queries.parquet"))


def test_live_mode_times_every_task_with_a_real_forward_pass(tmp_path, zoo_cache):
    raw = _tiny_networks(zoo_cache)
    raw["profile"] = {"mode": "live", "warmup": 2, "samples": 30}
    raw["sim"] = dict(raw["sim"], n_queries=400, policies=["uncoded", "coded"])
    scenario = scenario_from_dict(raw)
    from scenarios.runner import build_point_configs, prepare_networks

    facts = prepare_networks(scenario, quiet=True)
    (_, config), = build_point_configs(scenario, facts)
    from sim import simulate

    result = simulate(config, 0)
    live = config.service.experts[0]
    assert live._times is not None and len(live._times) == 400 and np.all(live._times > 0)
    # with no stragglers and an idle system, an uncoded query's latency is its own measured forward pass
    calm = config.model_copy(update={"stragglers": config.stragglers.model_copy(update={"p": 0.0})})
    first = simulate(calm, 0).records.query("policy == 'uncoded'").iloc[0]
    times = config.service.experts[int(first["model"])]._times
    assert first["latency_ms"] == pytest.approx(times[0])
    assert set(result.records["policy"]) == {"uncoded", "coded"}


def test_builtin_zoo_tables():
    quick = load_zoo_config("quickstart")
    assert [e.labels for e in quick.experts] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert load_zoo_config("quickstart", seed=4).seed == 4
    # the default base is a "foundation model" trained on other data than the experts fine-tune on
    for name in ("quickstart", "ensemble", "negative-correlation", "three-experts", "four-experts"):
        zoo = load_zoo_config(name)
        assert zoo.base_datasets() == ["digits"] and {e.dataset for e in zoo.experts} == {"mnist5k"}, name
        assert zoo.network.activation == "gelu", name  # ReLU loses a third or more of its hidden units here
    assert [e.dataset for e in load_zoo_config("dataset-pair").experts] == ["mnist5k", "digits"]
    with pytest.raises(ValueError, match="unknown scenario"):
        load_zoo_config("nope")


def test_sweep_workers_do_not_import_torch():
    import subprocess
    import sys

    code = "import scenarios.points, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_load_knobs_turn_into_rates_from_the_service_means():
    from scenarios.schema import sim_config_for

    table = dict(SIM_ONLY["sim"], service={"experts": [{"kind": "exponential", "mean_ms": 2.0},
                                                       {"kind": "exponential", "mean_ms": 4.0}]})
    scenario = scenario_from_dict({k: v for k, v in SIM_ONLY.items() if k != "sweep"})
    routed = sim_config_for(scenario, dict(table, traffic={"kind": "poisson", "load": 0.5}))
    assert routed.traffic.rate_per_ms == pytest.approx(0.5 * (1 / 2 + 1 / 4))
    ensemble = sim_config_for(scenario, dict(table, traffic={"kind": "poisson", "ensemble_load": 0.5}))
    assert ensemble.traffic.ensemble_rate_per_ms == pytest.approx(0.5 / 4) and not ensemble.traffic.rate_per_ms


def test_a_sweep_starts_no_more_workers_than_it_has_points(tmp_path, monkeypatch):
    # a fork-started pool starts every worker it may at once: asked for 1,000 workers on a few points, it forked a
    # thousand processes (100,000 took the machine's load average to 1,140)
    import concurrent.futures

    started = []
    real = concurrent.futures.ProcessPoolExecutor

    def counting(max_workers=None, **kwargs):
        started.append(max_workers)
        return real(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", counting)
    many = dict(SIM_ONLY, sweep=dict(SIM_ONLY["sweep"], executor="local", workers=1000))
    run_scenario(scenario_from_dict(many), many, tmp_path, quiet=True)
    assert started == [len(SIM_ONLY["sweep"]["values"])]
