"""Bad input is refused before any work: one `error:` line on stderr, exit code 2, nothing written, nothing
trained, and `coinsim validate` refuses the same command line with the same line (issue 11).

Most cases use a pure simulation; `no_work` then replaces the runner's training, coding and simulating with
functions that fail the test, so a check that moved behind the work fails fast. The cases about [models]
scenarios run unguarded and check the model cache stays empty.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner, Result

from scenarios.cli import cli
from tests.conftest import tiny_zoo_table

SIM: dict = {
    "name": "checks",
    "seed": 1,
    "sim": {
        "n_experts": 2,
        "r": 1,
        "n_queries": 1000,
        "policies": ["uncoded", {"kind": "coded", "dispatch": "hedged", "delay_ms": "p95"}],
        "traffic": {"kind": "poisson", "load": 0.4},
        "service": {"expert": {"kind": "exponential", "mean_ms": 2.0}},
        "stragglers": {"p": 0.0, "slowdown": 8.0},
    },
    "sweep": {"axis": "stragglers.p", "values": [0.0, 0.1]},
}


def networks_scenario(**changes) -> dict:
    """A scenario with [models] whose zoo would be trained into $COINSIM_CACHE (no cache_dir of its own)."""
    models = tiny_zoo_table(None)
    del models["cache_dir"]
    table = {
        "name": "nets",
        "seed": 0,
        "device": "cpu",
        "models": models,
        "coding": {"method": "coin", "samples": 20},
        "profile": {"warmup": 1, "samples": 10},
        "sim": {"r": 1, "n_queries": 500, "policies": ["uncoded", "coded"],
                "traffic": {"kind": "poisson", "load": 0.3}},
    }
    table.update(changes)
    return table


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with its own (empty) model cache; `validate`'s default --out lands here too."""
    monkeypatch.setenv("COINSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training, coding and simulating a point fail the test."""
    import scenarios.runner as runner

    def started(*args, **kwargs):
        raise AssertionError("work started before the input was refused")

    monkeypatch.setattr(runner, "prepare_networks", started)
    monkeypatch.setattr(runner, "run_point", started)
    monkeypatch.setattr(runner, "run_scenario", started)


def write(folder: Path, table: dict, name: str = "s.toml") -> Path:
    path = folder / name
    path.write_text(tomli_w.dumps(table))
    return path


def snapshot(path: Path) -> object:
    if path.is_file():
        return path.read_bytes()
    if path.is_dir():
        return sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    return None


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def refused(args: list[str], home: Path, out: Path | None = None, expect: str = "") -> str:
    """Run `coinsim ARGS` (ARGS[0] is run or sweep), check the refusal, then `coinsim validate` with the same
    arguments; both must print the same one line. Returns that line."""
    out = out if out is not None else home / "out"
    before = snapshot(out)
    line = one_error_line(CliRunner().invoke(cli, args))
    assert expect in line, line
    assert snapshot(out) == before, "something was written under --out"
    cache = home / "cache"
    assert not cache.exists() or not any(cache.iterdir()), "something was trained into the cache"
    assert one_error_line(CliRunner().invoke(cli, ["validate", *args[1:]])) == line
    return line


def run_args(scenario: Path | str, out: Path, *extra: str) -> list[str]:
    return ["run", str(scenario), "--out", str(out), "--no-report", *extra]


# ----------------------------------------------------------------------------------- 1. files a scenario names
TRACES = {
    "missing": (None, "cannot read trace"),
    "not-csv": (b"\xff\xfe\x00\x81garbage", "cannot read trace"),
    "wrong-columns": (b"time,who\n1,0\n", "needs columns timestamp_ms, model"),
    "no-arrivals": (b"timestamp_ms,model\n", "no arrivals"),
    "unknown-model": (b"timestamp_ms,model\n1.0,0\n2.0,cat\n", "unknown model"),
    "infinite-time": (b"timestamp_ms,model\n1.0,0\ninf,1\n", "finite"),
}


@pytest.mark.parametrize("case", sorted(TRACES))
def test_trace_csv_is_checked_before_work(home: Path, no_work: None, case: str) -> None:
    content, expect = TRACES[case]
    trace = home / "trace.csv"
    if content is not None:
        trace.write_bytes(content)
    sim = dict(SIM["sim"], traffic={"kind": "trace", "trace_csv": str(trace)})
    del sim["n_queries"]
    scenario = write(home, dict(SIM, sim=sim))
    refused(run_args(scenario, home / "out"), home, expect=expect)


def test_trace_with_no_arrival_inside_the_horizon(home: Path, no_work: None) -> None:
    trace = home / "trace.csv"
    trace.write_text("timestamp_ms,model\n100,0\n200,1\n")
    sim = dict(SIM["sim"], traffic={"kind": "trace", "trace_csv": str(trace)}, horizon_ms=50.0)
    del sim["n_queries"]
    refused(run_args(write(home, dict(SIM, sim=sim)), home / "out"), home, expect="no arrivals in the horizon")


def test_a_trace_url_is_refused_and_never_fetched(home: Path, no_work: None) -> None:
    """A scenario reads local files only: a trace given as a URL is refused, and no request reaches the server."""
    import http.server
    import threading

    hits = []

    class Count(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the handler's name is http.server's)
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"timestamp_ms,model\n1.0,0\n2.0,1\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Count)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/trace.csv"
        sim = dict(SIM["sim"], traffic={"kind": "trace", "trace_csv": url})
        del sim["n_queries"]
        refused(run_args(write(home, dict(SIM, sim=sim)), home / "out"), home, expect="not a URL")
        from sim import SimConfigError
        from sim.config import SimConfig, Traffic
        from sim.draws import _read_trace  # below the validator too: pandas is handed a local path

        traffic = Traffic.model_construct(kind="trace", trace_csv=url, trace_times_ms=None)
        config = SimConfig.model_construct(traffic=traffic, n_experts=2, model_names=None)
        with pytest.raises(SimConfigError, match="cannot read trace"):
            _read_trace(config)
    finally:
        server.shutdown()
    assert hits == []


@pytest.mark.parametrize("name", ["../escape", "../../tmp/x", "/abs/path", "a/b", "..", ".hidden", "c:\\d"])
def test_a_scenario_name_is_a_folder_name_not_a_path(home: Path, no_work: None, name: str) -> None:
    out = home / "deep" / "out"
    out.mkdir(parents=True)
    refused(run_args(write(home, dict(SIM, name=name)), out), home, out=out, expect="plain folder name")
    assert sorted(p.name for p in (home / "deep").iterdir()) == ["out"] and not any(out.iterdir())
    assert not (home / "tmp").exists() and not Path("/abs").exists()


def test_a_file_stem_that_is_no_folder_name_is_made_one(home: Path) -> None:
    table = {k: v for k, v in SIM.items() if k not in ("name", "sweep")}
    path = write(home, table, name="run(1)..v2.toml")
    result = CliRunner().invoke(cli, run_args(path, home / "out"))
    assert result.exit_code == 0, result.output
    assert [p.name for p in (home / "out").iterdir()] == ["run_1__v2"]


def test_loading_a_scenario_reads_its_trace(home: Path) -> None:
    """scenario_from_dict itself (not only the CLI's later checks) refuses a trace it cannot use."""
    from scenarios.schema import ScenarioError, scenario_from_dict

    sim = dict(SIM["sim"], traffic={"kind": "trace", "trace_csv": str(home / "none.csv")})
    with pytest.raises(ScenarioError, match="cannot read trace"):
        scenario_from_dict(dict(SIM, sim=sim))


def test_networks_scenario_with_a_bad_trace_trains_nothing_end_to_end(home: Path) -> None:
    """A real process, nothing patched: the trace names a model the scenario does not have."""
    trace = home / "trace.csv"
    trace.write_text("timestamp_ms,model\n1.0,low\n2.0,middle\n")
    sim = {"r": 1, "policies": ["uncoded", "coded"], "traffic": {"kind": "trace", "trace_csv": str(trace)}}
    scenario = write(home, networks_scenario(sim=sim))
    for command in (["run", str(scenario), "--out", str(home / "out")], ["validate", str(scenario)]):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "scenarios.cli", *command], capture_output=True, text=True,
                                timeout=300, cwd=home)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and "unknown model" in line and "middle" in line, line
        assert time.perf_counter() - started < 60, "took long enough to have trained"
    assert not (home / "out").exists()
    assert not (home / "cache").exists() or not any((home / "cache").iterdir())


def test_replay_folder_without_the_scenarios_networks_trains_nothing(home: Path) -> None:
    earlier = home / "earlier"
    earlier.mkdir()
    (earlier / "profile.csv").write_text("model,ms\nlow,1.0\ncoded,1.2\n")  # no samples for 'high'
    scenario = write(home, networks_scenario(profile={"replay": str(earlier)}))
    line = refused(run_args(scenario, home / "out"), home, expect="has no samples for high")
    assert "profile.replay" in line
    assert not list(home.rglob(".unfinished-*"))


def test_replay_profile_that_does_not_parse(home: Path, no_work: None) -> None:
    earlier = home / "earlier"
    earlier.mkdir()
    (earlier / "profile.csv").write_text("model,ms\nlow,fast\nhigh,1.0\ncoded,1.0\n")
    scenario = write(home, networks_scenario(profile={"replay": str(earlier)}))
    refused(run_args(scenario, home / "out"), home, expect="not positive numbers for low")


# ------------------------------------------------------------------------------------------ 2. output location
def test_out_that_is_a_file(home: Path, no_work: None) -> None:
    target = home / "taken"
    target.write_text("keep me")
    refused(run_args(write(home, SIM), target), home, out=target, expect="is a file")
    assert target.read_text() == "keep me"


def test_out_below_a_file(home: Path, no_work: None) -> None:
    target = home / "taken"
    target.write_text("keep me")
    refused(run_args(write(home, SIM), target / "results"), home, out=target, expect="which is a file")


def test_out_where_the_scenario_folder_is_a_file(home: Path, no_work: None) -> None:
    (home / "out").mkdir()
    (home / "out" / "checks").write_text("not a folder")
    refused(run_args(write(home, SIM), home / "out"), home, expect="which is a file")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="as root (or on Windows) a read-only mode does not stop writes")
def test_out_without_write_permission(home: Path, no_work: None) -> None:
    locked = home / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(run_args(write(home, SIM), locked / "results"), home, out=locked, expect="no permission")
    finally:
        locked.chmod(0o700)


@pytest.fixture(scope="module")
def result_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scenarios.runner import run_scenario
    from scenarios.schema import scenario_from_dict

    raw = dict(SIM, sim=dict(SIM["sim"], n_queries=300))
    return run_scenario(scenario_from_dict(raw), raw, tmp_path_factory.mktemp("results"), quiet=True)


@pytest.mark.parametrize("blocker", ["figures", "report.html"])
def test_report_into_a_folder_it_cannot_write(tmp_path: Path, result_folder: Path, blocker: str) -> None:
    folder = tmp_path / "result"
    shutil.copytree(result_folder, folder)
    if blocker == "figures":
        (folder / "figures").write_text("a file where the figures go")
    else:
        (folder / "report.html").mkdir()
    before = snapshot(folder)
    line = one_error_line(CliRunner().invoke(cli, ["report", str(folder)]))
    assert blocker in line
    assert snapshot(folder) == before


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="as root (or on Windows) a read-only mode does not stop writes")
def test_report_into_a_read_only_folder(tmp_path: Path, result_folder: Path) -> None:
    folder = tmp_path / "result"
    shutil.copytree(result_folder, folder)
    folder.chmod(0o500)
    try:
        assert "no permission" in one_error_line(CliRunner().invoke(cli, ["report", str(folder)]))
    finally:
        folder.chmod(0o700)


def test_report_renders_a_writable_result_folder(tmp_path: Path, result_folder: Path) -> None:
    folder = tmp_path / "result"
    shutil.copytree(result_folder, folder)
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").is_file()


# ------------------------------------------------------------------------------------------ 3. Dask scheduler
@pytest.mark.parametrize("address", ["banana", "tcp://host:notaport", "http://10.0.0.1:8786", "tcp://:8786"])
def test_malformed_scheduler_address(home: Path, no_work: None, address: str) -> None:
    args = ["sweep", str(write(home, SIM)), "--grid", "stragglers.p=0,0.1", "--scheduler", address,
            "--out", str(home / "out"), "--no-report"]
    refused(args, home, expect="tcp://host:port")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_scheduler_is_refused_quickly(home: Path, no_work: None) -> None:
    address = f"tcp://127.0.0.1:{_closed_port()}"
    args = ["sweep", str(write(home, SIM)), "--grid", "stragglers.p=0,0.1", "--scheduler", address,
            "--out", str(home / "out"), "--no-report"]
    assert address in refused(args, home, expect="no Dask scheduler answers")


def test_a_port_that_accepts_but_never_speaks_dask_is_refused_within_two_seconds(home: Path, no_work: None) -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nothing is ever sent
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        table = dict(SIM, sweep=dict(SIM["sweep"], executor="dask",
                                     scheduler=f"127.0.0.1:{silent.getsockname()[1]}"))
        started = time.perf_counter()
        line = one_error_line(CliRunner().invoke(cli, run_args(write(home, table), home / "out")))
        assert "no answer" in line
        assert time.perf_counter() - started < 4.0
        assert not (home / "out").exists()


def test_scheduler_in_the_file_needs_the_dask_executor(home: Path, no_work: None) -> None:
    table = dict(SIM, sweep=dict(SIM["sweep"], scheduler="tcp://127.0.0.1:8786"))
    refused(run_args(write(home, table), home / "out"), home, expect="only used with executor = 'dask'")


def test_a_running_scheduler_passes_the_check(home: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = CliRunner().invoke(cli, ["validate", str(write(home, SIM)), "--grid", "stragglers.p=0,0.1",
                                          "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------------------- 4. sizes
def test_available_memory_is_measured() -> None:
    from scenarios.preflight import available_memory

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < available_memory() <= total


def test_records_that_cannot_fit_in_memory(home: Path, no_work: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import scenarios.preflight as preflight

    monkeypatch.setattr(preflight, "available_memory", lambda: 16 * 2**30)  # run and validate see the same
    # per-task draws: no per-(query, server) floor, so the estimate from short runs speaks
    args = run_args(write(home, SIM), home / "out", "--set", "sim.n_queries=10000000000000", "--set",
                    'sim.draws="task"')
    line = refused(args, home, expect="a point of 10,000,000,000,000 queries needs about")
    assert "PiB" in line and "more than the 16.0 GiB available" in line
    assert "report" not in line  # --no-report: no report reads the records back
    line = refused([a for a in args if a != "--no-report"], home, expect="needs about")
    assert "the report about" in line and "the headline point's 20,000,000,000,000 query records" in line


def test_a_horizon_too_long_for_memory(home: Path, no_work: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import scenarios.preflight as preflight

    monkeypatch.setattr(preflight, "available_memory", lambda: 16 * 2**30)
    sim = {k: v for k, v in SIM["sim"].items() if k != "n_queries"}
    scenario = write(home, dict(SIM, sim=dict(sim, horizon_ms=1e15)))
    refused(run_args(scenario, home / "out"), home, expect="draws a number for every (query, server) pair")
    scenario = write(home, dict(SIM, sim=dict(sim, horizon_ms=1e15, draws="task")))
    refused(run_args(scenario, home / "out"), home, expect="while it is simulated")


def test_a_horizon_with_a_load_is_accepted(home: Path) -> None:
    sim = {k: v for k, v in SIM["sim"].items() if k != "n_queries"}
    result = CliRunner().invoke(cli, ["validate", str(write(home, dict(SIM, sim=dict(sim, horizon_ms=2000.0))))])
    assert result.exit_code == 0, result.output


def test_memory_estimate_comes_from_real_records(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scenarios.preflight as preflight
    from scenarios.schema import scenario_from_dict, sim_config_for
    from sim import simulate

    scenario = scenario_from_dict(SIM)
    config = sim_config_for(scenario, scenario.sweep_points()[0][1]).model_copy(update={"n_queries": 20_000})
    from reports.load import report_query_columns

    result = simulate(config, 0)
    kept = result.records[report_query_columns(result.records.columns)]
    measured = kept.memory_usage(deep=True).sum() / len(kept)
    estimate = preflight.record_bytes(config, 0)
    assert measured <= estimate <= 1.5 * measured + 64
    # the refusal compares the estimates with the memory available: 1e5 queries × 2 policies at the headline point
    big = dict(SIM, sim=dict(SIM["sim"], n_queries=100_000))
    monkeypatch.setattr(preflight, "available_memory", lambda: 8 * 2**20)
    line = refused(run_args(write(home, big), home / "out"), home, expect="8.0 MiB available")
    assert "a point of 100,000 queries needs about" in line
    monkeypatch.setattr(preflight, "available_memory", lambda: 8 * 2**30)
    assert CliRunner().invoke(cli, ["validate", str(home / "s.toml")]).exit_code == 0


# --------------------------------------------------------------------------------------------- 5. finite numbers
@pytest.mark.parametrize("setting,where", [
    ("sim.stragglers.slowdown=inf", "sim.stragglers.slowdown"),
    ("sim.service.expert.mean_ms=nan", "sim.service.expert.mean_ms"),
    ("sim.traffic.load=-inf", "sim.traffic.load"),
    ("sim.warmup_fraction=nan", "sim.warmup_fraction"),
    ("sweep.values=[0.0, inf]", "sweep.values[1]"),
    ('sim.stragglers.slowdown="inf"', "slowdown"),  # a string pydantic would read as a float
])
def test_non_finite_numbers(home: Path, no_work: None, setting: str, where: str) -> None:
    line = refused(run_args(write(home, SIM), home / "out", "--set", setting), home, expect=where)
    assert "finite" in line


def test_non_finite_number_in_a_file_and_in_models(home: Path, no_work: None) -> None:
    models = networks_scenario()["models"]
    models["finetune"] = dict(models["finetune"], lr=float("nan"))
    scenario = write(home, networks_scenario(models=models))
    refused(run_args(scenario, home / "out"), home, expect="models.finetune.lr: must be a finite number")
    (home / "plain.toml").write_text(tomli_w.dumps(SIM).replace("slowdown = 8.0", "slowdown = inf"))
    refused(run_args(home / "plain.toml", home / "out"), home, expect="sim.stragglers.slowdown")


def test_sim_config_refuses_non_finite_numbers_on_its_own() -> None:
    from sim import SimConfigError, parse_config

    table = {"n_experts": 2, "n_queries": 10, "traffic": {"rate_per_ms": 0.1}}
    for change in ({"stragglers": {"slowdown": float("inf")}}, {"horizon_ms": float("nan"), "n_queries": None},
                   {"service": {"expert": {"kind": "exponential", "mean_ms": float("inf")}}}):
        with pytest.raises(SimConfigError, match="finite"):
            parse_config({**table, **change})


# ------------------------------------------------------------------------------------------------ 6. unstable load
@pytest.mark.parametrize("load", ["1.0", "1.5"])
def test_load_at_or_above_capacity(home: Path, no_work: None, load: str) -> None:
    line = refused(run_args(write(home, SIM), home / "out", "--set", f"sim.traffic.load={load}"), home,
                   expect=f"sim.traffic.load = {load}")
    assert "allow_unstable" in line


def test_ensemble_load_at_capacity(home: Path, no_work: None) -> None:
    setting = 'sim.traffic={kind = "poisson", ensemble_load = 1.0}'
    refused(run_args(write(home, SIM), home / "out", "--set", setting), home, expect="sim.traffic.ensemble_load")


def test_load_outside_the_capacity_region_names_load_and_capacity(home: Path, no_work: None) -> None:
    # 0.6 of the experts' capacity, but one task in ten is 8x slower: 0.6 * 1.7 > 1 at p = 0.1
    line = refused(run_args(write(home, SIM), home / "out", "--set", "sim.traffic.load=0.6"), home,
                   expect="unstable load")
    assert "sim.traffic.load = 0.6" in line and "serve at most" in line and "stragglers.p = 0.1" in line


def test_networks_scenario_with_load_above_capacity_trains_nothing(home: Path, no_work: None) -> None:
    scenario = write(home, networks_scenario())
    refused(run_args(scenario, home / "out", "--set", "sim.traffic.load=1.2"), home, expect="sim.traffic.load = 1.2")


def test_allow_unstable_lets_the_transient_run(home: Path) -> None:
    table = dict(SIM, allow_unstable=True, sim=dict(SIM["sim"], n_queries=300))
    table["sim"]["traffic"] = {"kind": "poisson", "load": 1.5}
    scenario = write(home, table)
    assert CliRunner().invoke(cli, ["validate", str(scenario)]).exit_code == 0
    result = CliRunner().invoke(cli, ["--quiet", *run_args(scenario, home / "out")])
    assert result.exit_code == 0, result.output


def test_allow_unstable_is_documented() -> None:
    from scenarios.schema import Scenario

    assert "traffic.load >= 1" in Scenario.model_fields["allow_unstable"].description


# ------------------------------------------------------------------------------ nesting the parsers cannot read
DEEP = 3000  # levels: past Python's recursion limit in tomllib and json alike


def test_a_scenario_nested_too_deeply(home: Path, no_work: None) -> None:
    scenario = home / "deep.toml"
    scenario.write_text("x = " + "[" * DEEP + "]" * DEEP + "\n" + tomli_w.dumps(SIM))
    refused(run_args(scenario, home / "out"), home, expect="nested too deeply")


def test_a_set_value_nested_too_deeply(home: Path, no_work: None) -> None:
    scenario = write(home, SIM)
    refused(run_args(scenario, home / "out", "--set", "sim.x=" + "[" * DEEP + "]" * DEEP), home,
            expect="nested too deeply")


def test_a_summary_nested_too_deeply(home: Path) -> None:
    folder = home / "result"
    folder.mkdir()
    (folder / "summary.json").write_text('{"a": ' + "[" * DEEP + "]" * DEEP + "}")
    line = one_error_line(CliRunner().invoke(cli, ["report", str(folder)]))
    assert "summary.json" in line and "nested too deeply" in line
    assert sorted(p.name for p in folder.iterdir()) == ["summary.json"]


# ---------------------------------------------------------------------------------------- 7. not UTF-8 text
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_scenario_file_that_is_not_utf8(home: Path, no_work: None, command: str) -> None:
    scenario = home / "latin1.toml"
    scenario.write_bytes('name = "café"\n[sim]\nn_experts = 2\n'.encode("latin-1"))
    args = [command, str(scenario), "--out", str(home / "out")] + (["--grid", "stragglers.p=0"] if command == "sweep"
                                                                    else [])
    refused(args, home, expect="not UTF-8 text")


def test_zoo_file_that_is_not_utf8(home: Path) -> None:
    zoo = home / "zoo.toml"
    zoo.write_bytes(b"\xff\xfeexperts = []\n")
    line = one_error_line(CliRunner().invoke(cli, ["models", "train", "--config", str(zoo)]))
    assert "not UTF-8 text" in line
    assert not (home / "cache").exists()


# ---------------------------------------------------------------------------- 8. library errors at the boundary
def test_user_error_types_are_imported_not_guessed(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from reports import ReportError
    from scenarios.cli import user_errors
    from scenarios.schema import ScenarioError
    from sim import SimConfigError

    found = user_errors()
    for kind in (ScenarioError, SimConfigError, ReportError, ValidationError, OSError):
        assert kind in found
    monkeypatch.setitem(sys.modules, "reports.load", None)  # a module that fails to import is a bug ...
    with pytest.raises(ImportError):
        user_errors()  # ... not a reason to leave its error type out


@pytest.mark.parametrize("raised,expect", [
    (OSError(28, "No space left on device", "/data/results/x"), "/data/results/x: No space left on device"),
    (TimeoutError("Timed out trying to connect to tcp://10.0.0.9:8786 after 30 s"), "Timed out trying to connect"),
])
def test_os_and_dask_connection_errors_become_one_line(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                       raised: Exception, expect: str) -> None:
    import scenarios.runner as runner

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(runner, "run_scenario", fail)
    line = one_error_line(CliRunner().invoke(cli, run_args(write(home, SIM), home / "out")))
    assert expect in line


def test_pydantic_errors_become_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scenarios.runner as runner
    from scenarios.schema import ProfileSpec

    def fail(*args, **kwargs):
        ProfileSpec.model_validate({"samples": 1, "warmup": -1})

    monkeypatch.setattr(runner, "run_scenario", fail)
    line = one_error_line(CliRunner().invoke(cli, run_args(write(home, SIM), home / "out")))
    assert "samples" in line and "warmup" in line


@pytest.mark.parametrize("args,expect", [
    (["sweep", "sim-what-if", "--grid", "stragglers.p"], "--grid expects"),
    (["run", "sim-what-if", "--no-such-option"], "No such option"),
    (["validate", "sim-what-if", "--set", "novalue"], "--set expects KEY=VALUE"),
    (["--threads", "x", "scenarios"], "--threads"),
])
def test_click_usage_errors_are_one_line(home: Path, no_work: None, args: list[str], expect: str) -> None:
    assert expect in one_error_line(CliRunner().invoke(cli, args))


def test_a_bug_is_not_dressed_up_as_a_user_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scenarios.runner as runner

    def bug(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(runner, "run_scenario", bug)
    result = CliRunner().invoke(cli, run_args(write(home, SIM), home / "out"))
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_no_arguments_still_shows_help() -> None:
    result = CliRunner().invoke(cli, [])
    assert "Usage:" in result.output and "error:" not in result.output


# -------------------------------------------------------------------------------- 9. interrupted, repeated runs
def _interrupt_at(monkeypatch: pytest.MonkeyPatch, call: int, error: type[BaseException] = KeyboardInterrupt) -> list:
    import scenarios.runner as runner

    real, calls = runner.run_point, []

    def run_point(config, seed, answers, out=None):
        calls.append(config.stragglers.p)
        if len(calls) == call:
            raise error("stop")
        return real(config, seed, answers, out)

    monkeypatch.setattr(runner, "run_point", run_point)
    return calls


def test_interrupted_run_says_how_to_resume_and_a_rerun_keeps_its_points(home: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = write(home, SIM)
    args = ["--quiet", *run_args(scenario, home / "out")]
    calls = _interrupt_at(monkeypatch, 2)
    interrupted = CliRunner().invoke(cli, args)
    assert interrupted.exit_code == 130
    (line,) = interrupted.stderr.strip().splitlines()
    assert "--resume" in line and "1 point(s) finished" in line
    (work,) = (home / "out" / "checks").glob(".unfinished-*")
    kept = snapshot(work)
    assert "point-0000.json" in kept

    # the same command again, without --resume: refused, the finished point stays
    again = one_error_line(CliRunner().invoke(cli, args))
    assert "--resume" in again and "1 finished point(s)" in again
    assert one_error_line(CliRunner().invoke(cli, ["validate", *args[2:]])) == again
    assert snapshot(work) == kept

    calls.clear()
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert calls == [0.1], "only the unfinished point runs again"
    assert [p.name for p in (home / "out" / "checks").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_failure_before_the_first_point_leaves_no_folders(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                          error: type[BaseException]) -> None:
    _interrupt_at(monkeypatch, 1, error)
    result = CliRunner().invoke(cli, ["--quiet", *run_args(write(home, SIM), home / "out")])
    assert result.exit_code == (130 if error is KeyboardInterrupt else 1)
    assert not (home / "out").exists()


def test_failure_while_saving_the_first_point_leaves_no_folders(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    def disk_full(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    import pyarrow.parquet as pq

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    def disk_full_streaming(self, table, *args, **kwargs):
        raise OSError(28, "No space left on device", self.where)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full_streaming)  # a point's records are streamed
    line = one_error_line(CliRunner().invoke(cli, ["--quiet", *run_args(write(home, SIM), home / "out" / "a" / "b")]))
    assert "No space left on device" in line
    assert not (home / "out").exists()


def test_failure_while_building_networks_leaves_no_folders(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scenarios.runner as runner
    from models.data import DataError

    def download_failed(*args, **kwargs):
        raise DataError("download of mnist5k failed")

    monkeypatch.setattr(runner, "prepare_networks", download_failed)
    (home / "out").mkdir()
    line = one_error_line(CliRunner().invoke(cli, run_args(write(home, networks_scenario()), home / "out")))
    assert "download of mnist5k failed" in line
    assert list((home / "out").iterdir()) == []


# ------------------------------------------------------------------------------------------------- 10. --threads
def test_threads_after_the_subcommand(home: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        result = CliRunner().invoke(cli, ["validate", "--threads", "1", str(write(home, SIM))])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        result = CliRunner().invoke(cli, ["--quiet", *run_args(write(home, SIM), home / "out"), "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
        assert "--threads" in one_error_line(CliRunner().invoke(cli, ["run", "--threads", "0", "sim-what-if"]))
    finally:
        torch.set_num_threads(before)


def test_networks_scenario_outside_the_capacity_region_trains_nothing(home: Path, no_work: None) -> None:
    # load 0.6 < 1, but with one task in ten 8x slower each expert needs 0.6 * 1.7 > 1 of its capacity: every
    # network shares one architecture, so this holds whatever their measured pass time turns out to be
    table = networks_scenario()
    table["sim"] = dict(table["sim"], traffic={"kind": "poisson", "load": 0.6},
                        stragglers={"p": 0.1, "slowdown": 8.0})
    line = refused(run_args(write(home, table), home / "out"), home, expect="unstable load")
    assert "sim.traffic.load = 0.6" in line and "serve at most" in line


def test_measured_pass_times_outside_the_capacity_region_are_refused_before_simulating() -> None:
    # equal stand-in pass times pass the check; measured ones (expert 1 three times slower) do not: at load 0.6
    # the routed rate is 0.6 * (1/1 + 1/3) = 0.8/ms, half of it for expert 1, which serves at most 1/3 per ms
    from types import SimpleNamespace

    from scenarios.runner import build_point_configs
    from scenarios.schema import ScenarioError, scenario_from_dict

    table = networks_scenario()
    table["sim"] = dict(table["sim"], traffic={"kind": "poisson", "load": 0.6})
    scenario = scenario_from_dict(table, "nets.toml")
    rng = np.random.default_rng(0)
    names = [e.name for e in scenario.models.experts]
    profile = {names[0]: rng.uniform(0.9, 1.1, 200), names[1]: rng.uniform(2.9, 3.1, 200),
               "coded": rng.uniform(0.9, 1.1, 200)}
    facts = SimpleNamespace(experts=[{"name": n} for n in names], profile_ms=profile,
                            answers=SimpleNamespace(pools=[50, 50]))
    with pytest.raises(ScenarioError, match="unstable load.*model 1 gets"):
        build_point_configs(scenario, facts)  # type: ignore[arg-type]
    profile[names[1]] = rng.uniform(0.9, 1.1, 200)
    assert len(build_point_configs(scenario, facts)) == 1  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- the typed [sim] table
@pytest.mark.parametrize("setting, expect", [
    ("sim.r=-1", "sim.r: Input should be greater than or equal to 0"),
    ("sim.r=1.5", "sim.r: Input should be a valid integer"),
    ('sim.policies=["magic"]', "sim.policies.0.kind: unknown policy kind 'magic' (choose from uncoded"),
    ('sim.policies=[{kind="coded",dispatch="x"}]', "sim.policies.0: policy 'coded': unknown dispatch 'x'"),
    ('sim.traffic.load="high"', "sim.traffic.load: Input should be a valid number"),
])
def test_the_sim_tables_typed_fields_are_refused_where_they_are(home: Path, no_work: None, setting: str,
                                                                 expect: str) -> None:
    # the scenario layer's own fields of [sim] are checked with the scenario, named by their place in it
    line = refused(run_args(write(home, SIM), home / "out", "--set", setting), home)
    assert expect in line, line


def test_the_sim_table_reads_typed_and_gives_back_only_what_was_set() -> None:
    from scenarios.schema import SimTable, scenario_from_dict

    scenario = scenario_from_dict(SIM, "inline")
    assert scenario.sim.r == 1 and scenario.sim.traffic.load == 0.4 and len(scenario.sim.policies) == 2
    assert scenario.sim.policies[1].delay_ms == "p95" and scenario.sim.policies[1].name == "coded-hedged"
    # the simulator's own keys pass through untouched; nothing the scenario did not set is added
    assert scenario.sim.table() == {**SIM["sim"], "policies": [{"kind": "uncoded"},
                                                              {"kind": "coded", "dispatch": "hedged",
                                                               "delay_ms": "p95"}]}
    assert SimTable.model_validate({}).table() == {}
    points = scenario.sweep_points()
    assert [p[1]["stragglers"]["p"] for p in points] == [0.0, 0.1] and scenario.sim.table()["stragglers"]["p"] == 0.0


def test_a_fleet_point_too_wide_for_memory_is_refused_by_its_own_peak(home: Path, no_work: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # few records (100,000) but 1,001 servers: each query draws and plans a task time on every server, so the point's
    # own peak (measured on two short runs of the widest point) is what does not fit
    import scenarios.preflight as preflight

    monkeypatch.setattr(preflight, "available_memory", lambda: 2 * 2**30)
    sim = dict(SIM["sim"], n_queries=100_000, deployment={"instances": 500}, policies=["uncoded"],
               traffic={"kind": "poisson", "load": 0.1})
    line = refused(run_args(write(home, dict(SIM, sim=sim)), home / "out"), home, expect="on up to 1,001 servers")
    assert "more than the 2.0 GiB available" in line
    per_query = preflight.peak_bytes_per_query(preflight.stand_in_configs(
        preflight.Scenario.model_validate(dict(SIM, sim=sim)))[-1][1], 1)
    assert per_query > 8 * 1001  # at least one float64 task time per server per query


def test_the_memory_check_measures_the_share_only_where_the_bound_does_not_fit(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    """A run that fits even by the cheap bound (one short run's whole peak per query) is passed without the slope's
    two runs; one that does not is judged by the slope, and refused only when that does not fit either."""
    import scenarios.preflight as preflight

    scenario = preflight.Scenario.model_validate(dict(SIM, sim=dict(SIM["sim"], n_queries=10_000)))
    slopes: list[int] = []
    monkeypatch.setattr(preflight, "record_bytes", lambda config, seed: 100.0)  # report: 3 x 10,000 x k x 100 B
    monkeypatch.setattr(preflight, "peak_bound_per_query", lambda config, seed: 5_000.0)
    monkeypatch.setattr(preflight, "_peak_slope", lambda config, seed: slopes.append(1) or 1_000.0)
    monkeypatch.setattr(preflight, "_PEAK_SLOPES", {})
    preflight.check_memory(scenario, available=50_000_000)  # 10,000 x 5,000 B = 50 MB by the bound: fits
    assert slopes == []
    preflight.check_memory(scenario, available=20_000_000)  # not by the bound, by the slope (10 MB)
    assert slopes == [1]
    with pytest.raises(preflight.ScenarioError, match="1000 bytes per query"):
        preflight.check_memory(scenario, available=9_000_000)


def test_the_report_s_read_back_counts_only_when_a_report_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """A point that fits but whose report could not read its records back is refused for the report, and run
    when no report is asked (`--no-report`), without the probe that measures a record's bytes."""
    import scenarios.preflight as preflight

    scenario = preflight.Scenario.model_validate(dict(SIM, sim=dict(SIM["sim"], n_queries=10_000)))
    probes: list[int] = []
    monkeypatch.setattr(preflight, "record_bytes", lambda config, seed: probes.append(1) or 100.0)
    monkeypatch.setattr(preflight, "peak_bound_per_query", lambda config, seed: 10.0)  # the point: 100 kB
    monkeypatch.setattr(preflight, "_peak_slope", lambda config, seed: 10.0)
    monkeypatch.setattr(preflight, "_PEAK_SLOPES", {})
    # the report: 3 copies x 10,000 queries x 2 policies x 100 B = 6 MB
    with pytest.raises(preflight.ScenarioError, match="the report about 5.7 MiB"):
        preflight.check_memory(scenario, available=1_000_000)
    assert probes == [1]
    preflight.check_memory(scenario, available=1_000_000, report=False)
    assert probes == [1]
    preflight.check_memory(scenario, available=7_000_000)


def test_per_pair_draws_that_cannot_fit_are_refused_without_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-(query, server) draws hold two float64 numbers per pair at once (service uniform, straggle factor): a
    point whose pairs alone exceed the memory is refused from that floor, before any short run (a short run of a
    200,000-server point is itself gigabytes); under per-task draws the floor is zero."""
    import scenarios.preflight as preflight

    def ran(*args, **kwargs):
        raise AssertionError("a probe ran")

    monkeypatch.setattr(preflight, "_peaks", ran)
    monkeypatch.setattr(preflight, "record_bytes", lambda config, seed: 0.0)
    scenario = preflight.Scenario.model_validate(dict(SIM, sim=dict(SIM["sim"], n_queries=1_000_000)))
    config = preflight.stand_in_configs(scenario)[-1][1]
    assert preflight.pair_draw_bytes(config) == 2 * 8 * 3  # N = 2 + r = 1 servers
    with pytest.raises(preflight.ScenarioError, match="at least 45.8 MiB.*sim.draws = \"task\""):
        preflight.check_memory(scenario, available=40_000_000)
    task = preflight.Scenario.model_validate(dict(SIM, sim=dict(SIM["sim"], n_queries=1_000_000, draws="task")))
    assert preflight.pair_draw_bytes(preflight.stand_in_configs(task)[-1][1]) == 0.0


def test_the_memory_probes_are_sized_by_the_tasks_a_query_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A redundant dispatch copies each query to every instance of its expert: the short runs that measure memory
    are sized by the tasks a query sends, counted on a pilot run, not by a fixed number of queries (a 1,000-query
    screen of a fleet of 100,000 instances an expert was 10^8 tasks)."""
    import scenarios.preflight as preflight

    sim = dict(SIM["sim"], deployment={"instances": 300}, stragglers={"p": 0.0, "slowdown": 8.0},
               policies=["uncoded", {"kind": "replication", "dispatch": "redundant"}])
    config = preflight.stand_in_configs(preflight.Scenario.model_validate(dict(SIM, sim=sim)))[-1][1]
    # uncoded sends one task, redundant replication one to each of the expert's 300 instances and to the extra
    # server when it holds that expert (r = 1 replica, of one of the two experts)
    per_query = preflight.tasks_per_query(config, 1)
    assert 1 + 300 <= per_query <= 1 + 301
    sizes: list[tuple[int, ...]] = []
    monkeypatch.setattr(preflight, "_peaks", lambda config, seed, ns: sizes.append(ns) or [1000 * n for n in ns])
    monkeypatch.setattr(preflight, "PROBE_TASKS", 6_000)
    assert preflight.peak_bound_per_query(config, 1) == 1000.0
    preflight._peak_slope(config, 1)
    (screen,), slope = sizes
    assert screen == 6_000 // 302 or screen == 6_000 // 301  # 19 or 20 queries, where the screen runs 1,000
    assert slope == (preflight.PILOT_QUERIES, 4 * preflight.PILOT_QUERIES)  # the floor: 6,000 tasks over 5 runs
    monkeypatch.setattr(preflight, "PROBE_TASKS", 10**9)  # room for every query asked: the sizes are as before
    sizes.clear()
    preflight.peak_bound_per_query(config, 1)
    preflight._peak_slope(config, 1)
    assert sizes == [(preflight.SCREEN_QUERIES,), (128, 512)]


@pytest.mark.parametrize("sizes, expect", [
    ({"deployment": {"instances": 10**12}}, "2,000,000,000,001 servers (2,000,000,000,000 experts' instances"),
    ({"r": 10**12}, "servers (2 experts' instances and 1,000,000,000,000 extra)"),
])
def test_a_fleet_whose_servers_alone_cannot_fit_is_refused_from_its_counts(home: Path, no_work: None, sizes,
                                                                           expect) -> None:
    # its layout is never built: 2 x 10^9 servers took the machine's memory while theirs was (killed after 2 min)
    import time

    started = time.perf_counter()
    line = refused(run_args(write(home, dict(SIM, sim=dict(SIM["sim"], **sizes))), home / "out"), home,
                   expect=expect)
    assert "of memory before any query" in line and "lower deployment.instances or r" in line
    assert time.perf_counter() - started < 60


def test_the_fleet_floor_is_the_servers_times_a_server_s_bytes() -> None:
    from sim.memory import SERVER_BYTES, fleet_problem
    from sim.parse import parse_config

    config = parse_config(dict(SIM["sim"], deployment={"instances": 1000},  # 2,001 servers
                               traffic={"kind": "poisson", "rate_per_ms": 0.4}))
    assert fleet_problem(config, available=2_001 * SERVER_BYTES) is None  # exactly enough
    assert "2,001 servers" in fleet_problem(config, available=2_001 * SERVER_BYTES - 1)
