"""`coinsim code`: build a scenario's experts, code them with each method, report NDA per expert.

For every seed (the scenario's seed, +1, +2, ...) the zoo is built (or read from the cache) with that seed,
P coding samples are drawn P/N from each expert's own training partition, every method encodes, and NDA is
measured on each expert's own test partition by decoding that expert from the coded model and the others.
Several P values make the NDA-vs-P sweep (paper Fig. 2b); distillation's per-epoch train/test NDA is kept
(Fig. 2a); ``--lambda-study`` also measures the test NDA of every λ on COIN's grid.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
import torch

import atomic
import coin
from scenarios.overrides import nested, parse_sets

DEFAULT_METHODS = ("coin", "vanilla", "task_arithmetic", "regmean", "distill", "fisher")
# percent as *_pct and seconds as *_s (issue 11: one unit, one name); the same names as summary.json's coding
CSV_FIELDS = ("scenario", "seed", "samples", "method", "expert", "name", "nda_pct", "decoded_acc_pct",
              "expert_acc_pct", "n", "encode_s")


def _deep_update(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(scenario: str, seed: int | None, overrides: dict):
    """The scenario's zoo config with ``--set`` overrides applied to its [models] table and a seed."""
    from models.tables import zoo_config_from_dict
    from scenarios.schema import read_toml

    data, source = read_toml(scenario)
    if "name" not in data and source.startswith("scenario"):
        data["name"] = scenario
    table = dict(data.get("models", data))
    table.setdefault("seed", data.get("seed", 0))
    table.setdefault("name", data.get("name", Path(scenario).stem))
    table = _deep_update(table, overrides)
    if seed is not None:
        table["seed"] = seed
    return zoo_config_from_dict(table, source)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _avg_nda_fn(experts, beta, tests):
    def fn(model) -> dict:
        rows = coin.evaluate(model, experts, beta, tests)
        return {"test_nda_pct": statistics.fmean(r.nda for r in rows)}

    return fn


def run_coding(
    scenario: str = "quickstart",
    methods: Sequence[str] = DEFAULT_METHODS,
    samples: Sequence[int] = (200,),
    seeds: int = 1,
    beta: Sequence[float] | None = None,
    overrides: dict | None = None,
    device: str = "auto",
    progress: bool = True,
    lambda_study: bool = False,
    method_options: dict[str, dict] | None = None,
) -> dict:
    """Run every (seed, P, method) and return all records; raises CodingError/ConfigError on bad input
    before any training."""
    from models.networks import pick_device
    from models.zoo import build_zoo

    known = coin.available()
    bad = [m for m in methods if m not in known]
    if bad:
        raise coin.CodingError(f"unknown coding method '{bad[0]}'; choose from {', '.join(known)}")
    if not methods:
        raise click.UsageError("--methods is empty")
    if seeds < 1:
        raise click.UsageError(f"--seeds must be ≥ 1, got {seeds}")
    if any(p < 1 for p in samples):
        raise coin.CodingError(f"P must be ≥ 1, got {min(samples)}")
    overrides = overrides or {}
    cfg0 = load_config(scenario, None, overrides)
    n = len(cfg0.experts)
    b = coin.check_beta(beta if beta is not None else [1.0 / n] * n, n)
    dev = pick_device(device)
    options = method_options or {}

    records, infos = [], []
    for s in range(seeds):
        cfg = load_config(scenario, cfg0.seed + s, overrides)
        zoo = build_zoo(cfg, device=dev, progress=progress)
        experts = zoo.models
        names = [e.name for e in zoo.experts]
        tests = [(e.test_x, e.test_y) for e in zoo.experts]
        pools = [(e.train_x, e.train_y) for e in zoo.experts]
        for p in samples:
            for method in methods:
                x, y, owner = coin.coding_samples(coin.get_method(method), pools, p, cfg.seed)
                if progress:
                    click.echo(f"seed {cfg.seed} P={p}: encoding with {method}", err=True)
                opts = dict(options.get(method, {}))
                if method in ("distill", "learned"):
                    opts.setdefault("eval_fn", _avg_nda_fn(experts, b, tests))
                if method == "coin" and lambda_study:
                    opts["return_grid"] = True
                res = coin.encode(method, experts, b, x, y=y, owner=owner, base=zoo.base, seed=cfg.seed, **opts)
                rows = coin.evaluate(res.model, experts, b, tests)
                for r in rows:
                    records.append({"scenario": cfg.name, "seed": cfg.seed, "samples": p, "method": method,
                                    "expert": r.expert, "name": names[r.expert], "nda_pct": r.nda,
                                    "decoded_acc_pct": r.decoded_acc, "expert_acc_pct": r.expert_acc, "n": r.n,
                                    "encode_s": res.seconds})
                info = {k: v for k, v in res.info.items() if k != "grid_models"}
                if method == "coin" and lambda_study:
                    for row, model in zip(info["grid"], res.info["grid_models"], strict=True):
                        row["test_nda_pct"] = statistics.fmean(r.nda for r in coin.evaluate(model, experts, b, tests))
                infos.append({"seed": cfg.seed, "samples": p, "method": method, "encode_s": res.seconds,
                              "info": info})
    return {"scenario": cfg0.name, "methods": list(methods), "samples": list(samples), "seeds": seeds,
            "beta": b.tolist(), "device": str(dev), "overrides": overrides, "records": records, "runs": infos,
            "torch": torch.__version__}


def summarize(result: dict) -> list[dict]:
    """One row per (P, method): mean ± std over seeds of each expert's NDA, the average NDA and encode time."""
    rows = []
    for p in result["samples"]:
        for method in result["methods"]:
            recs = [r for r in result["records"] if r["method"] == method and r["samples"] == p]
            experts = sorted({(r["expert"], r["name"]) for r in recs})
            seeds = sorted({r["seed"] for r in recs})
            row = {"samples": p, "method": method, "experts": {}}
            for idx, name in experts:
                row["experts"][name] = _mean_std([r["nda_pct"] for r in recs if r["expert"] == idx])
            avgs = [statistics.fmean(r["nda_pct"] for r in recs if r["seed"] == s) for s in seeds]
            row["avg"] = _mean_std(avgs)
            row["encode_s"] = _mean_std([next(r["encode_s"] for r in recs if r["seed"] == s)
                                               for s in seeds])
            rows.append(row)
    return rows


def format_table(result: dict) -> str:
    """Plain-text NDA table (mean ± std over seeds)."""
    summary = summarize(result)
    names = list(summary[0]["experts"]) if summary else []
    head = ["P", "method", *names, "avg NDA", "encode s"]
    lines = []
    for row in summary:
        pools = getattr(coin.get_method(row["method"]), "training_pools", False)  # trained on every query, not P
        cells = ["all" if pools else str(row["samples"]), row["method"]]
        cells += [f"{m:.2f} ± {s:.2f}" for m, s in (row["experts"][n] for n in names)]
        cells.append(f"{row['avg'][0]:.2f} ± {row['avg'][1]:.2f}")
        cells.append(f"{row['encode_s'][0]:.3f}")
        lines.append(cells)
    widths = [max(len(c) for c in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*c) for c in lines]
    return "\n".join(out)


def write_results(result: dict, out: Path) -> list[Path]:
    """nda.csv (one row per seed × P × method × expert), coding.json (everything, incl. λ/α grids and
    distillation histories) and distill_epochs.csv when distillation ran; each written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in result["records"]:
        w.writerow({k: r[k] for k in CSV_FIELDS})
    paths = [out / "nda.csv", out / "coding.json"]
    atomic.write_text(paths[0], buf.getvalue())
    payload = {**result, "summary": summarize(result)}
    atomic.write_text(paths[1], json.dumps(payload, indent=1, default=float) + "\n")
    hist = [(run["seed"], run["samples"], h) for run in result["runs"] if run["method"] == "distill"
            for h in run["info"].get("history", [])]
    if hist:
        buf = io.StringIO()
        fields = ["seed", "samples", *hist[0][2].keys()]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for seed, p, h in hist:
            w.writerow({"seed": seed, "samples": p, **h})
        paths.append(out / "distill_epochs.csv")
        atomic.write_text(paths[-1], buf.getvalue())
    return paths


def _csv_list(value: str, kind: type, what: str) -> list:
    try:
        items = [kind(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.UsageError(f"{what}: cannot parse '{value}'") from None
    if not items:
        raise click.UsageError(f"{what} is empty")
    return items


@click.command("code", short_help="NDA table of coding methods on a scenario's experts.")
@click.argument("scenario", default="quickstart")
@click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True,
              help="Comma-separated coding methods.")
@click.option("--samples", "-P", default="200", show_default=True,
              help="Coding samples P (comma-separated for an NDA-vs-P sweep); drawn P/N per expert.")
@click.option("--seeds", default=1, show_default=True, type=int, help="Seeds: scenario seed, +1, ...")
@click.option("--beta", default=None, help="Coding weights β, comma-separated (default uniform).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a [models] entry by its dotted path, VALUE read as TOML, e.g. finetune.epochs=10 "
                   "(repeatable).")
@click.option("--lambda-study", is_flag=True, help="Also measure test NDA at every λ of COIN's grid.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:i]")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Result folder (default results/<scenario>/code-<timestamp>).")
@click.pass_context
def code(ctx: click.Context, scenario: str, methods: str, samples: str, seeds: int, beta: str | None,
         sets: tuple[str, ...], lambda_study: bool, device: str, out: Path | None) -> None:
    """Code the SCENARIO's experts with each method and print the NDA table; writes nda.csv + coding.json."""
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    result = run_coding(
        scenario,
        methods=_csv_list(methods, str, "--methods"),
        samples=_csv_list(samples, int, "--samples"),
        seeds=seeds,
        beta=None if beta is None else _csv_list(beta, float, "--beta"),
        overrides=nested(parse_sets(sets)),
        device=device,
        progress=not quiet and sys.stderr.isatty(),
        lambda_study=lambda_study,
    )
    out = out or Path("results") / result["scenario"] / f"code-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_results(result, out)
    click.echo(format_table(result))
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


PARITY_FIELDS = ("scenario", "seed", "expert", "name", "k", "encoder", "init", "degraded_accuracy_pct",
                 "agreement_pct", "expert_accuracy_pct", "n", "train_s", "train_samples", "epochs")


def run_parity(scenario: str = "quickstart", ks: Sequence[int] = (2, 3, 4), encoders: Sequence[str] = ("sum",),
               inits: Sequence[str] = ("scratch", "base"), epochs: int = 20, lr: float = 1e-3,
               overrides: dict | None = None, device: str = "auto", progress: bool = True) -> list[dict]:
    """Learned parity models (coin.parity) for every expert of the scenario's zoo: per k, encoder and starting
    point ('scratch': the expert's architecture freshly initialised; 'base': the base model), trained on the
    expert's training pool and scored in degraded mode on its test partition. Bad input is refused before any
    training (CodingError / UsageError)."""
    from coin.parity import check_code, degraded_accuracy, train_parity
    from models.networks import pick_device
    from models.zoo import build_zoo

    for k in ks:
        for name in encoders:
            check_code(k, name)
    for name in inits:
        if name not in ("scratch", "base"):
            raise coin.CodingError(f"unknown parity start '{name}'; choose scratch or base")
    if epochs < 1:
        raise click.UsageError(f"--epochs must be ≥ 1, got {epochs}")
    cfg = load_config(scenario, None, overrides or {})
    zoo = build_zoo(cfg, device=pick_device(device), progress=progress)
    rows = []
    for index, expert in enumerate(zoo.experts):
        for k in ks:
            for encoder in encoders:
                for init in inits:
                    start = zoo.base if init == "base" else None
                    result = train_parity(expert.model, expert.train_x, k, encoder, init=start, init_name=init,
                                          epochs=epochs, lr=lr, seed=cfg.seed)
                    score = degraded_accuracy(result.model, expert.model, expert.test_x, expert.test_y, k,
                                              encoder, seed=cfg.seed)
                    rows.append({"scenario": cfg.name, "seed": cfg.seed, "expert": index, "name": expert.name,
                                 "k": k, "encoder": encoder, "init": init, **score, "train_s": result.seconds,
                                 "train_samples": result.samples, "epochs": result.epochs})
                    if progress:
                        print(f"parity: {expert.name} k={k} {encoder} from {init}: degraded accuracy "
                              f"{score['degraded_accuracy_pct']:.2f} % in {result.seconds:.1f} s", file=sys.stderr)
    return rows


def format_parity(rows: list[dict]) -> str:
    """Plain-text table: one line per (expert, k, encoder, start)."""
    head = ["expert", "k", "encoder", "start", "degraded acc %", "agreement %", "expert acc %", "train s",
            "samples", "epochs"]
    lines = [[r["name"], str(r["k"]), r["encoder"], r["init"], f"{r['degraded_accuracy_pct']:.2f}",
              f"{r['agreement_pct']:.2f}", f"{r['expert_accuracy_pct']:.2f}", f"{r['train_s']:.1f}",
              str(r["train_samples"]), str(r["epochs"])] for r in rows]
    widths = [max(len(c) for c in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*c) for c in lines)])


@click.command("parity", short_help="Learned parity models: degraded-mode accuracy and training cost.")
@click.argument("scenario", default="quickstart")
@click.option("--k", "ks", default="2,3,4", show_default=True, help="Queries per parity query, comma-separated.")
@click.option("--encoders", default="sum", show_default=True, help="Query encoders: sum, concat (comma-separated).")
@click.option("--inits", default="scratch,base", show_default=True,
              help="Where a parity network starts: scratch (freshly initialised), base (the base model).")
@click.option("--epochs", default=20, show_default=True, type=int, help="Training epochs over the expert's pool.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="AdamW learning rate.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a [models] entry by its dotted path, VALUE read as TOML (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:i]")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Result folder (default results/<scenario>/parity-<timestamp>).")
@click.pass_context
def parity(ctx: click.Context, scenario: str, ks: str, encoders: str, inits: str, epochs: int, lr: float,
           sets: tuple[str, ...], device: str, out: Path | None) -> None:
    """Train a learned parity model (coding over queries: f_p(E(x1..xk)) ≈ Σ f(xj)) for each of SCENARIO's
    experts at every k, encoder and starting point; print degraded-mode accuracy (a missing answer decoded as the
    parity output less the other k − 1) and training cost; write parity.csv."""
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    rows = run_parity(scenario, _csv_list(ks, int, "--k"), _csv_list(encoders, str, "--encoders"),
                      _csv_list(inits, str, "--inits"), epochs, lr, nested(parse_sets(sets)), device, not quiet)
    out = out or Path("results") / (rows[0]["scenario"] if rows else scenario) / \
        f"parity-{time.strftime('%Y%m%d-%H%M%S')}"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PARITY_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in PARITY_FIELDS})
    atomic.write_text(out / "parity.csv", buf.getvalue())
    click.echo(format_parity(rows))
    click.echo(f"wrote {out / 'parity.csv'}")
