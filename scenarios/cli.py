"""The `coinsim` command line.

User mistakes (bad files, unknown names, missing data, unusable output folders or schedulers, wrong options)
end as one line `error: ...` on stderr and exit code 2, before any work is done; `--verbose` shows the
traceback instead. `coinsim validate` runs exactly the checks `run` and `sweep` run before working.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click

from resultschema import SUMMARY, SWEEP
from scenarios.overrides import parse_sets


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user asked for something impossible', not 'coinsim has a bug'.

    Imported directly: a module that fails to import is a bug and must show as one. OSError covers files and
    folders that cannot be read or written, a full disk, and Dask's connection errors (which are OSErrors);
    pydantic's ValidationError is a table that does not fit its model.
    """
    from pydantic import ValidationError

    from calibration.file import CalibrationError
    from coin.errors import CodingError
    from models.config import ConfigError
    from models.data import DataError
    from models.networks import DeviceError
    from reports.load import ReportError
    from scenarios.schema import ScenarioError
    from sim.errors import SimConfigError

    return (ConfigError, DataError, DeviceError, CodingError, SimConfigError, ScenarioError, ReportError,
            CalibrationError, ValidationError, OSError)


def one_line(error: BaseException) -> str:
    """The message of a user error as one line."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        from models.config import validation_problems

        return "; ".join(validation_problems(error))
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        target = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 is not None else "")
        return f"{target}: {error.strerror}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class UserError(click.ClickException):
    """Printed as the one line `error: ...` on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _as_user_error(error: click.ClickException) -> click.ClickException:
    """Click's own errors (usage, bad option values) as one line; `coinsim` with no arguments still shows help."""
    if isinstance(error, UserError | click.exceptions.NoArgsIsHelpError):
        return error
    text = error.format_message().strip()
    return UserError(text.splitlines()[0] if text else type(error).__name__)


class _Cli(click.Group):
    """Group that turns user errors raised anywhere below into a one-line message and exit code 2."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as error:
            raise _as_user_error(error) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as error:
            raise _as_user_error(error) from None
        except user_errors() as error:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            raise UserError(one_line(error)) from None


DEFAULT_THREADS = 1


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """--threads N sets torch's intra-op threads; without it (before or after the subcommand) one thread.

    Why one: on a CPU another process is competing for, every multi-threaded op waits for its slowest thread. On the
    project's 2-core machine (bench/bench_threads.py, an epoch of the default expert) two threads were 1.55x faster
    when idle, 2.5x slower with one busy process and 38x slower at load 2.8. Results do not depend on the count
    (tests/models/test_thread_determinism.py). A user's OMP_NUM_THREADS is respected.
    """
    meta = ctx.find_root().meta
    if value is not None:
        meta["coinsim.threads"] = value
    elif "coinsim.threads" in meta:
        return value  # given before the subcommand; nothing to default
    threads = value if value is not None else int(os.environ.get("OMP_NUM_THREADS") or DEFAULT_THREADS)
    if value is None and "torch" not in sys.modules:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # torch reads it when first imported
        return value
    import torch

    torch.set_num_threads(threads)
    return value


_THREADS_HELP = ("Torch intra-op threads on a CPU (default 1, or OMP_NUM_THREADS: more threads only pay on an "
                 "otherwise idle machine with networks larger than the default).")


def _threads_option(command):
    """--threads after a subcommand (`coinsim run --threads 1`), same as before it."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, expose_value=False,
                        callback=_set_threads, help=_THREADS_HELP)(command)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("coinsim"), prog_name="coinsim")
@click.option("--verbose", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@_threads_option
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Erasure-coded neural-network inference: train experts, code them, simulate serving, report."""
    ctx.ensure_object(dict)
    ctx.obj.update(verbose=verbose, quiet=quiet)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@cli.group()
def models() -> None:
    """Train and inspect the base model and experts."""


def _progress(ctx: click.Context) -> bool:
    return not ctx.obj.get("quiet") and sys.stderr.isatty()


@models.command("train")
@click.option("--config", "config", default="quickstart", show_default=True,
              help="Built-in scenario name or a TOML file (zoo table, or a scenario with [models]).")
@click.option("--seed", type=int, default=None, help="Override the seed.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Checkpoint cache folder.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@_threads_option
@click.pass_context
def models_train(ctx: click.Context, config: str, seed: int | None, cache_dir: Path | None, device: str) -> None:
    """Train (or fetch from the cache) the base model and every expert, then print a table."""
    import time

    from models.zoo import build_zoo
    from scenarios.schema import load_zoo_config

    zoo_config = load_zoo_config(config, seed=seed, cache_dir=cache_dir)
    started = time.perf_counter()
    zoo = build_zoo(zoo_config, device=device, progress=not ctx.obj.get("quiet"))
    rows = [("base", zoo.base_status, "+".join(zoo_config.base_datasets()), zoo.base_accuracy,
             zoo.base_train_seconds, zoo.base_cache_path)]
    rows += [(e.name, e.status, e.partition, e.accuracy, e.train_seconds, e.cache_path) for e in zoo.experts]
    _print_table(["model", "cache", "partition", "test acc %", "train s", "cache path"],
                 [(m, s, p, f"{a:.2f}", f"{t:.1f}", str(c)) for m, s, p, a, t, c in rows])
    click.echo(f"{len(zoo.experts)} experts ready on {zoo.device} in {time.perf_counter() - started:.1f} s "
               f"(zoo '{zoo_config.name}', seed {zoo_config.seed})")


@models.command("list")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help="Checkpoint cache folder.")
def models_list(cache_dir: Path | None) -> None:
    """List cached base models and experts."""
    from models.cache import ModelCache
    from models.config import default_cache_dir

    root = cache_dir or default_cache_dir()
    entries = ModelCache(root).entries()
    if not entries:
        click.echo(f"no cached models in {root}")
        return
    _print_table(["zoo", "role", "model", "partition", "test acc %", "path"],
                 [(m.get("zoo", "?"), m.get("role", "?"), m.get("name", "?"), m.get("partition", "?"),
                   f"{m.get('accuracy', float('nan')):.2f}", m["path"]) for m in entries])


@models.command("export")
@click.argument("scenario", default="quickstart")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="New (or empty) folder for checkpoints, data and the scenario file.")
@click.option("--format", "data_format", type=click.Choice(["auto", "imagefolder", "npz"]), default="auto",
              show_default=True, help="Data as PNGs in ImageFolder layout, or .npz; auto: PNGs where lossless.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N] (for training)")
@click.pass_context
def models_export(ctx: click.Context, scenario: str, out: Path, data_format: str, device: str) -> None:
    """Write SCENARIO's zoo as given networks: checkpoints, data and a scenario TOML that reads them."""
    from models.export import export_zoo, run_export_checks
    from models.zoo import build_zoo
    from scenarios.schema import load_scenario

    config, raw = load_scenario(scenario)
    run_export_checks(config.models, out)
    zoo = build_zoo(config.models, device=device, progress=not ctx.obj.get("quiet"))
    path = export_zoo(zoo, raw, out, data_format)  # type: ignore[arg-type]
    click.echo(f"wrote {len(zoo.experts)} experts, their base and data to {out}\nrun it:  coinsim run {path}")


def _print_table(header: list[str], rows: list[tuple]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for line in [header, ["-" * w for w in widths], *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


SET_HELP = ("Override a scenario field by its dotted path; VALUE is read as TOML (numbers, true/false, [lists], "
            '"strings"), e.g. --set sim.n_queries=5000 --set sweep.values=[0,0.1]. Repeatable.')


def _run_options(command):
    """Options shared by `run` and `sweep`."""
    options = [
        click.argument("scenario", default="quickstart"),
        click.option("--out", "out_root", type=click.Path(path_type=Path), default=Path("results"),
                     show_default=True, help="Results go to OUT/<scenario>/<timestamp>/."),
        click.option("--seed", type=int, default=None,
                     help="Every seed: the networks' (retrains) and the simulation's."),
        _sim_seed_option,
        _zoo_seed_option,
        _latency_model_option,
        _calibration_option,
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP),
        click.option("--device", default=None, help="auto | cpu | cuda[:N] (default: the scenario's)"),
        click.option("--no-report", is_flag=True, help="Skip figures and the HTML report."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run of the same scenario."),
        _threads_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _sweep_options(grid_required: bool):
    """Options of `sweep` (also accepted by `validate`)."""
    def decorate(command):
        options = [
            click.option("--grid", "grids", multiple=True, metavar="KEY=V1,V2,...", required=grid_required,
                         help="A sim field and its values, e.g. stragglers.p=0,0.05,0.1; several --grid make a "
                              "product."),
            click.option("--workers", type=int, default=None, help="Worker processes (default: the scenario's, or 1)."),
            click.option("--scheduler", default=None, help="Run the points on the Dask scheduler at this address."),
            click.option("--executor", type=click.Choice(["local", "dask"]), default=None,
                         help="local process pool, or Dask (a LocalCluster unless --scheduler is given)."),
        ]
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def _seed_callback(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None:
        ctx.meta.setdefault("coinsim_seeds", {})[param.name] = value
    return value


def _latency_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None:
        ctx.meta.setdefault("coinsim_profile", {})[param.name] = value
    return value


_latency_model_option = click.option(
    "--latency-model", type=click.Choice(["served", "compute"]), default=None, expose_value=False,
    callback=_latency_callback,
    help="served (default): predict what serving the networks on this machine shows, from the machine's serving "
         "calibration; compute: bare forward passes only.")
_calibration_option = click.option(
    "--calibration", type=click.Path(path_type=Path), default=None, expose_value=False, callback=_latency_callback,
    help="Serving calibration file to use (default: this machine's, from `coinsim calibrate`, measured first when "
         "there is none).")

_sim_seed_option = click.option(
    "--sim-seed", type=int, default=None, expose_value=False, callback=_seed_callback,
    help="Seed of the simulation and of the coding samples only; the experts are not retrained.")
_zoo_seed_option = click.option(
    "--zoo-seed", type=int, default=None, expose_value=False, callback=_seed_callback,
    help="Seed of the base model and experts only (trains, or takes that zoo from the cache).")


def _overrides(sets: tuple[str, ...], seed: int | None, device: str | None) -> dict:
    """--set pairs plus the seed options: --seed sets every seed, --sim-seed the scenario's (simulation, coding
    samples), --zoo-seed the networks' (a scenario file's own models.seed, if it has one, is kept otherwise)."""
    overrides = parse_sets(sets)
    if seed is not None:
        from scenarios.schema import EVERY_SEED

        overrides[EVERY_SEED] = seed
    seeds = click.get_current_context().meta.get("coinsim_seeds", {})
    if "sim_seed" in seeds:
        overrides["seed"] = seeds["sim_seed"]
    if "zoo_seed" in seeds:
        overrides["models.seed"] = seeds["zoo_seed"]
    if device is not None:
        overrides["device"] = device
    profile = click.get_current_context().meta.get("coinsim_profile", {})
    if "latency_model" in profile:
        overrides["profile.latency_model"] = profile["latency_model"]
    if "calibration" in profile:
        overrides["profile.calibration"] = str(profile["calibration"])
    return overrides


def _sweep_overrides(overrides: dict, grids: tuple[str, ...], workers: int | None, scheduler: str | None,
                     executor: str | None) -> dict:
    """The overrides `sweep` (and `validate` given the same options) applies on top of --set."""
    overrides = dict(overrides)
    if grids:
        grid = {}
        for item in grids:
            key, sep, text = item.partition("=")
            if not sep or not key.strip() or not text.strip():
                raise click.UsageError(f"--grid expects KEY=V1,V2,..., got '{item}'")
            grid[key.strip()] = [parse_sets((f"v={v}",))["v"] for v in text.split(",")]
        overrides["sweep.axis"] = None
        overrides["sweep.values"] = None
        overrides["sweep.grid"] = grid
    if workers is not None:
        overrides["sweep.workers"] = workers
    if scheduler is not None:
        overrides["sweep.scheduler"] = scheduler
        overrides["sweep.executor"] = "dask"
    if executor is not None:
        overrides["sweep.executor"] = executor
    return overrides


def _checked(scenario: str, overrides: dict, out_root: Path, resume: bool, report: bool):
    """Load the scenario and run every check made before work; what `run`, `sweep` and `validate` share."""
    from scenarios.preflight import check_before_work
    from scenarios.schema import load_scenario

    config, raw = load_scenario(scenario, overrides)
    check_before_work(config, raw, out_root, resume, report=report)
    return config, raw


def _run(ctx: click.Context, scenario: str, overrides: dict, out_root: Path, no_report: bool, resume: bool) -> None:
    from scenarios.runner import run_scenario

    config, raw = _checked(scenario, overrides, out_root, resume, report=not no_report)
    render = None
    if not no_report:
        from reports import render
    try:
        folder = run_scenario(config, raw, out_root, quiet=ctx.obj.get("quiet", False), render=render,
                              resume=resume)
    except KeyboardInterrupt:
        from scenarios.runner import PointStore, _work_folder

        done = PointStore(_work_folder(out_root, config.name, raw)).finished()
        click.echo(f"\ninterrupted with {done} point(s) finished: run the same command again with --resume to "
                   "continue from there", err=True)
        ctx.exit(130)
    _print_run_summary(folder)


@cli.command("run", short_help="The main job: experts, coding, served simulation, report.")
@_run_options
@click.pass_context
def run(ctx: click.Context, scenario: str, out_root: Path, seed: int | None, sets: tuple[str, ...],
        device: str | None, no_report: bool, resume: bool) -> None:
    """Run SCENARIO (a built-in name or a TOML file; default: quickstart, `coinsim scenarios` lists them all):
    train or take the experts, code them, profile them, simulate every policy at every sweep point as served on
    this machine, join each answer with its correctness, and write OUT/<scenario>/<timestamp>/ with
    summary.json, queries.parquet and report.html."""
    _run(ctx, scenario, _overrides(sets, seed, device), out_root, no_report, resume)


@cli.command("sweep", short_help="The same run over a grid of points (local or Dask).")
@_run_options
@_sweep_options(grid_required=True)
@click.pass_context
def sweep(ctx: click.Context, scenario: str, out_root: Path, seed: int | None, sets: tuple[str, ...],
          device: str | None, no_report: bool, resume: bool, grids: tuple[str, ...], workers: int | None,
          scheduler: str | None, executor: str | None) -> None:
    """Run SCENARIO at every point of a grid; the experts and coded models are built once for all points."""
    overrides = _sweep_overrides(_overrides(sets, seed, device), grids, workers, scheduler, executor)
    _run(ctx, scenario, overrides, out_root, no_report, resume)


@cli.command("scenarios", short_help="List the built-in scenarios.")
def scenarios_list() -> None:
    """List the built-in scenarios."""
    from scenarios.schema import builtin_names, read_toml

    rows = []
    for name in builtin_names():
        data, _ = read_toml(name)
        rows.append((name, data.get("description", "")))
    _print_table(["scenario", "description"], rows)


@cli.command("validate", short_help="Check a scenario without running anything.")
@_run_options
@_sweep_options(grid_required=False)
def validate(scenario: str, out_root: Path, seed: int | None, sets: tuple[str, ...], device: str | None,
             no_report: bool, resume: bool, grids: tuple[str, ...], workers: int | None, scheduler: str | None,
             executor: str | None) -> None:
    """Check SCENARIO without running anything: every check `run` / `sweep` make before working, with the same
    options (--set, --out, --resume, --grid, --scheduler, ...)."""
    overrides = _sweep_overrides(_overrides(sets, seed, device), grids, workers, scheduler, executor)
    config, _ = _checked(scenario, overrides, out_root, resume, report=not no_report)
    points = len(config.sweep_points())
    click.echo(f"{scenario}: ok ({config.n_experts} experts, {points} point(s), "
               f"{len(config.sim.policies)} policies)")


def _print_run_summary(folder: Path) -> None:
    """The NDA table and every sweep point's numbers, from the files just written (same names and units)."""
    import json

    summary = json.loads((folder / SUMMARY).read_text())
    model = summary.get("latency_model") or {}
    if model:
        cal = model.get("calibration") or {}
        where = f" (calibration {cal.get('path') or 'calibration.json'}, made {cal.get('created', '?')})" \
            if cal else ""
        click.echo(f"latency model: {model.get('name')} — {model.get('meaning', '')}{where}")
        from reports.load import served_profile_text

        if served := served_profile_text(model.get("served_profile")):
            click.echo(f"served profile: {served}")
        click.echo("")
    axes = summary.get("sweep_axes") or ([summary["sweep_axis"]] if summary.get("sweep_axis") else [])
    if summary.get("coding"):
        def num(value: float | None) -> str:  # NaN (an expert right nowhere) is null in summary.json
            return "nan" if value is None else f"{value:.2f}"

        rows = [(m, num(c["nda_avg_pct"]), *(num(c["nda_pct"][e["name"]]) for e in summary["experts"]),
                 f"{c['encode_s']:.2f}") for m, c in summary["coding"].items()]
        _print_table(["method", "nda_avg_pct", *(f"{e['name']} nda_pct" for e in summary["experts"]),
                      "encode_s"], rows)
        click.echo("")
    import pandas as pd

    sweep = pd.read_parquet(folder / SWEEP)
    backup = "backup_pct" if "kind" in sweep and (sweep["kind"] == "backup").any() else None
    cols = [c for c in [*axes, "policy", "mean_ms", "p50_ms", "p99_ms", "p999_ms", "accuracy_pct", "decoded_pct",
                        backup, "extra_load_vs_uncoded_pct", "hedges_denied_pct"] if c and c in sweep]
    rows = [tuple(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r)
            for r in sweep[cols].itertuples(index=False)]
    _print_table(cols, rows)
    click.echo(f"\nresults: {folder}")
    if (folder / "report.html").exists():
        click.echo(f"report:  {folder / 'report.html'}")


@cli.command("report", short_help="Re-render the figures and report of a result folder.")
@click.argument("result_dir", type=click.Path(path_type=Path))
def report(result_dir: Path) -> None:
    """(Re-)render figures and report.html of a result folder."""
    import os

    from reports import ReportError, render
    from reports.testbed import is_testbed_folder, render_testbed

    if not result_dir.is_dir():
        raise ReportError(f"result folder {result_dir} does not exist" if not result_dir.exists()
                          else f"{result_dir} is not a folder")
    if not os.access(result_dir, os.W_OK | os.X_OK):
        raise ReportError(f"no permission to write the report into {result_dir}")
    for name, want_dir in (("figures", True), ("report.html", False)):
        path = result_dir / name
        if path.exists() and path.is_dir() != want_dir:
            raise ReportError(f"cannot write the report: {path} is {'a file' if want_dir else 'a folder'}")
        if want_dir and path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise ReportError(f"no permission to write the figures into {path}")
    click.echo(render_testbed(result_dir) if is_testbed_folder(result_dir) else render(result_dir))


@cli.command("calibrate", short_help="Measure what serving costs on this machine (once).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Calibration file (default: $COINSIM_CACHE/calibration/<machine hash>.json).")
@click.option("--force", is_flag=True, help="Measure again even if a valid calibration of this machine is cached.")
@click.option("--show", "show", is_flag=False, flag_value="", default=None, metavar="[FILE]",
              help="Print a calibration file (default: this machine's, or --out) as tables and exit.")
@click.pass_context
def calibrate_command(ctx: click.Context, device: str, out: Path | None, force: bool, show: str | None) -> None:
    """Measure, once per machine and device, what serving costs beyond a network's isolated forward pass: the
    per-task cycle against pass time, one-way delays (idle and under traffic), time slicing of several servers and
    how servers computing side by side slow each other, the dispatcher's CPU share
    (real server processes over ZeroMQ; about half a minute on 2 cores)."""
    import time

    from calibration.file import default_path, load_calibration, machine_key, save_calibration
    from calibration.show import describe

    if show is not None and show != "":
        click.echo(describe(load_calibration(show), show))
        return
    resolved = device
    if device == "auto" or device.startswith("cuda"):
        from models.networks import pick_device

        resolved = str(pick_device(device))
    path = out or default_path(resolved)
    if show is not None:
        click.echo(describe(load_calibration(path), path))
        return
    from atomic import why_blocked
    from calibration.file import CalibrationError

    blocked = why_blocked(Path(path).expanduser().parent)
    if blocked is not None:  # before half a minute of measuring, not after it
        raise click.UsageError(f"--out {path}: {blocked}")
    if not force and path.exists():
        try:
            cal = load_calibration(path, expect_machine=machine_key(resolved))
        except CalibrationError as error:
            click.echo(f"cached calibration not usable ({error}); measuring again", err=True)
        else:
            click.echo(f"using the cached calibration of this machine, {path} (made {cal.created}); "
                       "--force measures again\n")
            click.echo(describe(cal, path))
            return
    from calibration.measure import calibrate

    started = time.perf_counter()
    try:
        cal = calibrate(resolved, progress=not ctx.obj.get("quiet"))
        save_calibration(cal, path)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: servers stopped, nothing written", err=True)
        ctx.exit(130)
    click.echo(describe(cal, path))
    click.echo(f"\nmeasured in {time.perf_counter() - started:.1f} s; saved {path}")


@cli.command("testbed", short_help="Serve a scenario for real and judge the simulator.")
@click.argument("scenario", default="testbed")
@click.option("--out", "out_root", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Results go to OUT/<scenario>/testbed-<timestamp>/.")
@click.option("--seed", type=int, default=None, help="Every seed: the networks' (retrains) and the simulation's.")
@click.option("--sim-seed", type=int, default=None, expose_value=False, callback=_seed_callback,
              help="Seed of the served draws and the coding samples only; the experts are not retrained.")
@click.option("--zoo-seed", type=int, default=None, expose_value=False, callback=_seed_callback,
              help="Seed of the base model and experts only.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--latency-model", type=click.Choice(["served", "compute"]), default=None, expose_value=False,
              callback=_latency_callback,
              help="served (default): the headline `predicted` variant from the machine's serving calibration.")
@click.option("--calibration", type=click.Path(path_type=Path), default=None, expose_value=False,
              callback=_latency_callback, help="Serving calibration file to use.")
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Identical repeats (default: scenario's).")
@click.option("--device", default=None, help="auto | cpu | cuda[:N] (default: the scenario's)")
@click.option("--no-report", is_flag=True, help="Skip figures and the HTML report.")
@click.option("--resimulate", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Serve nothing: simulate a finished testbed run FOLDER again with this coinsim (its own "
                   "profiles, calibration and hedge delays) and judge it against its measured queries; writes "
                   "FOLDER/resimulated-<timestamp>/fidelity.csv.")
@click.option("--compare", type=click.Path(path_type=Path, file_okay=False), nargs=2, default=None,
              metavar="FOLDER OTHER",
              help="Serve nothing: judge finished testbed run OTHER's measured latencies as a prediction of run "
                   "FOLDER's, by the simulator's limits, intervals and ranking — how closely this machine "
                   "reproduces itself; writes FOLDER/compared-<timestamp>/fidelity.csv.")
@_threads_option
@click.pass_context
def testbed_command(ctx: click.Context, scenario: str, out_root: Path, seed: int | None, sets: tuple[str, ...],
                    repeats: int | None, device: str | None, no_report: bool, resimulate: Path | None,
                    compare: tuple[Path, Path] | None) -> None:
    """Serve SCENARIO's points for real (one process per server) and measure the simulator against it."""
    from scenarios.schema import load_scenario
    from scenarios.testbed_run import check_testbed, fidelity_folder_text, run_testbed

    if compare and resimulate is not None:
        raise click.UsageError("--compare and --resimulate: one at a time")
    if compare:
        from scenarios.testbed_compare import compare_runs, comparison_text

        for given in compare:
            if not given.is_dir():
                raise click.BadParameter(f"{given} is not a folder", param_hint="--compare")
        folder = compare_runs(*compare)
        click.echo(fidelity_folder_text(folder))
        click.echo(comparison_text(folder))
        click.echo(f"\nresults: {folder}")
        return
    if resimulate is not None:
        from scenarios.testbed_run import resimulate as again

        if not resimulate.is_dir():
            raise click.BadParameter(f"{resimulate} is not a folder", param_hint="--resimulate")
        folder = again(resimulate, quiet=ctx.obj.get("quiet", False))
        click.echo(fidelity_folder_text(folder))
        click.echo(f"\nresults: {folder}")
        return

    overrides = _overrides(sets, seed, device)
    if repeats is not None:
        overrides["testbed.repeats"] = repeats
    config, raw = load_scenario(scenario, overrides)
    check_testbed(config, out_root)
    render = None
    if not no_report:
        from reports.testbed import render_testbed as render
    try:
        folder = run_testbed(config, raw, out_root, quiet=ctx.obj.get("quiet", False), render=render)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: servers stopped, nothing written (a testbed run is not resumable)", err=True)
        ctx.exit(130)
    click.echo(fidelity_folder_text(folder))
    click.echo(f"\nresults: {folder}")


def _register_commands() -> None:
    from scenarios.coding import code, parity

    cli.add_command(_threads_option(code))  # --threads after these subcommands too
    cli.add_command(_threads_option(parity))


_register_commands()


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
