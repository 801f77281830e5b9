"""Distillation at scale (issue 10, item 6): does ensemble distillation overfit its P coding samples when the
coded network is a torchvision ResNet-18 (11.2 M parameters) instead of the 106 k-parameter SmallCNN?

    python bench/repro_distill_resnet18.py --out results/resnet18-distill [--seeds 3] [--samples 20,50,100,200]

Zoo: torchvision ResNet-18 (3-channel stem, 10-way head) on 32×32 inputs. The base ("foundation model") is
trained on scikit-learn digits only; two experts start from it and are fine-tuned on the MNIST-5k label halves
0–4 and 5–9 (frozen BatchNorm statistics, as in the project's zoos). β = (½, ½); the P coding samples are drawn
P/2 from each expert's training partition (``coin.draw_coding_samples``); NDA is measured on each expert's own
test partition. Distillation uses the paper's settings (``coin/methods/distill.py``: AdamW lr 1e-5, batch 8,
weight decay 0.1, 20 epochs, student started at the β-average); its per-epoch train NDA is measured on the P
samples it is fitted to and its test NDA on the test partitions (logging time is excluded from encode time).
``learned`` (a coded network trained on the experts' whole training pools, 10 epochs) ignores P: it runs once per
seed and its rows carry the pools' size as samples.

Measured outputs (written to --out, one row per record):
- ``nda.csv``: the columns of ``coinsim code``'s nda.csv (per seed × P × method × expert, ``encode_s``);
- ``runs.csv``: per seed × P × method, P-sample (train) NDA vs test NDA of the coded model and encode seconds;
- ``distill_epochs.csv``: per seed × P × epoch, distillation's train / test NDA (epoch 0 = the β-average it
  starts from);
- ``experts.csv``: base and expert test accuracies and training seconds; ``meta.json``: parameter count,
  device, threads, load averages and times at start and end, the settings.

Sizing (timed on the project's shared 2-core CPU, torch 2.14 CPU): idle (load ≈ 0.2–0.7, 2 threads) a ResNet-18
forward+backward at 32×32, batch 64, takes ≈ 0.09 s (the ImageNet stem reduces 32×32 to 8×8, so the net is
cheap per image), a distillation step at batch 8 ≈ 0.045 s, and COIN's exact output Fisher ≈ 0.22 s per sample
per expert (≈ 90 s for P = 200 and two experts). Hence the defaults: base 15 epochs on the 1,438 digits
training images (≈ 345 steps), experts 10 epochs at lr 1e-3 on ≈ 2,000 images each (≈ 320 steps each),
P ∈ {20, 50, 100, 200}: about 10 minutes per seed on an idle machine. Threads default to 1: with other jobs
on the machine (load 5–7), 2 threads made a training step ≈ 9× slower than 1 thread (9.8 s vs 1.1 s per
batch-64 step, measured back to back), because each thread waits for the other at every operation while
the scheduler runs someone else's job. The documented run (docs/coin.md: 3 seeds, every P, split over three
commands) took 35 minutes of wall time at load 2–7, plus 9 minutes for a 100-epoch distillation check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

import coin
from models.config import ZooConfig
from models.networks import build_network, pick_device
from models.zoo import Zoo, build_zoo

METHODS = ("coin", "regmean", "distill", "vanilla", "learned")
SAMPLES = (20, 50, 100, 200)


def zoo_config(seed: int, base_epochs: int = 15, finetune_epochs: int = 10, finetune_lr: float = 1e-3,
               arch: str = "resnet18", image_size: int = 32, cache_dir: Path | None = None) -> ZooConfig:
    """Base on scikit-learn digits (all of its train split), experts on the MNIST-5k label halves."""
    return ZooConfig.model_validate({
        "name": f"{arch}-distill",
        "seed": seed,
        "network": {"arch": arch, "in_channels": 3, "image_size": image_size, "num_classes": 10},
        "base": {"datasets": ["digits"], "fraction": 1.0,
                 "train": {"lr": 1e-3, "batch_size": 64, "epochs": base_epochs, "freeze_bn": False}},
        "finetune": {"lr": finetune_lr, "batch_size": 64, "weight_decay": 0.01, "epochs": finetune_epochs,
                     "freeze_bn": True},
        "experts": [{"name": "digits-0-4", "dataset": "mnist5k", "labels": [0, 1, 2, 3, 4]},
                    {"name": "digits-5-9", "dataset": "mnist5k", "labels": [5, 6, 7, 8, 9]}],
        "cache_dir": None if cache_dir is None else str(cache_dir),
    })


def _test_nda(model: torch.nn.Module, zoo: Zoo, beta: torch.Tensor) -> tuple[float, list[coin.NDARow]]:
    rows = coin.evaluate(model, zoo.models, beta, [(e.test_x, e.test_y) for e in zoo.experts])
    return statistics.fmean(r.nda for r in rows), rows


def _train_nda(model: torch.nn.Module, zoo: Zoo, beta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               owner: torch.Tensor) -> float:
    """NDA on the P coding samples themselves (each expert decoded on the samples drawn from its partition)."""
    expert_outs = [coin.outputs(m, x) for m in zoo.models]
    return coin.score_outputs(coin.outputs(model, x), expert_outs, beta, y, owner)["nda"]


def code_zoo(zoo: Zoo, samples: Sequence[int] = SAMPLES, methods: Sequence[str] = METHODS,
             distill_epochs: int = 20, keep_models: bool = False, progress: bool = True) -> dict:
    """Encode the zoo's experts with every method at every P; NDA records, per-run train/test NDA and
    distillation's per-epoch history. ``keep_models`` adds the coded models and coding samples (for tests)."""
    seed = zoo.config.seed
    n = len(zoo.experts)
    beta = coin.check_beta([1.0 / n] * n, n)
    names = [e.name for e in zoo.experts]
    pools = [(e.train_x, e.train_y) for e in zoo.experts]
    records, runs, epochs, kept = [], [], [], {}
    trained_once: set[str] = set()
    for p in samples:
        for method in methods:
            fn = coin.get_method(method)
            if getattr(fn, "training_pools", False):  # trained on every training query: P does not apply
                if method in trained_once:
                    continue
                trained_once.add(method)
            x, y, owner = coin.coding_samples(fn, pools, p, seed)
            x = x.to(zoo.device)
            if progress:
                print(f"[{time.strftime('%H:%M:%S')}] seed {seed} P={p}: {method}", file=sys.stderr, flush=True)
            opts: dict = {}
            if method == "distill":
                opts = {"epochs": distill_epochs, "eval_fn": lambda m: {"test_nda_pct": _test_nda(m, zoo, beta)[0]}}
            res = coin.encode(method, zoo.models, beta, x, y=y, owner=owner, base=zoo.base, seed=seed, **opts)
            test_nda_pct, rows = _test_nda(res.model, zoo, beta)
            train_nda_pct = _train_nda(res.model, zoo, beta, x, y, owner)
            n_seen = int(x.shape[0])  # P, or every training query for a method trained on the pools
            for r in rows:
                records.append({"scenario": zoo.config.name, "seed": seed, "samples": n_seen, "method": method,
                                "expert": r.expert, "name": names[r.expert], "nda_pct": r.nda,
                                "decoded_acc_pct": r.decoded_acc, "expert_acc_pct": r.expert_acc, "n": r.n,
                                "encode_s": res.seconds})
            runs.append({"seed": seed, "samples": n_seen, "method": method, "train_nda_pct": train_nda_pct,
                         "test_nda_pct": test_nda_pct, "encode_s": res.seconds, "lam": res.info.get("lam")})
            if method == "distill":
                start = coin.encode("vanilla", zoo.models, beta, x).model  # distill's init="average" start point
                epochs.append({"seed": seed, "samples": p, "epoch": 0, "train_loss": float("nan"),
                               "train_nda_pct": _train_nda(start, zoo, beta, x, y, owner),
                               "test_nda_pct": _test_nda(start, zoo, beta)[0]})
                for h in res.info["history"]:
                    epochs.append({"seed": seed, "samples": p, "epoch": h["epoch"], "train_loss": h["train_loss"],
                                   "train_nda_pct": h["train_nda_pct"], "test_nda_pct": h["test_nda_pct"]})
            if keep_models:
                kept[(p, method)] = res.model
        if keep_models:
            kept[(p, "samples")] = coin.draw_coding_samples(pools, p, seed)
    out = {"records": records, "runs": runs, "epochs": epochs}
    if keep_models:
        out["models"] = kept
    return out


def expert_table(zoo: Zoo) -> list[dict]:
    """Test accuracy (%) and training seconds of the base and of every expert (from the zoo cache's record)."""
    rows = [{"seed": zoo.config.seed, "model": "base", "partition": "+".join(zoo.config.base_datasets()),
             "accuracy": zoo.base_accuracy, "train_seconds": zoo.base_train_seconds, "status": zoo.base_status}]
    rows += [{"seed": zoo.config.seed, "model": e.name, "partition": e.partition, "accuracy": e.accuracy,
              "train_seconds": e.train_seconds, "status": e.status} for e in zoo.experts]
    return rows


def nda_vs_p(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of the average test NDA, one row per P, one column per method."""
    g = runs.groupby(["samples", "method"])["test_nda_pct"]
    cell = (g.mean().round(2).astype(str) + " ± " + g.std(ddof=1).fillna(0).round(2).astype(str))
    return cell.unstack("method")


def epoch_table(epochs: pd.DataFrame, p: int) -> pd.DataFrame:
    """Distillation's train / test NDA per epoch at P = p, mean over seeds."""
    sel = epochs[epochs["samples"] == p]
    return sel.groupby("epoch")[["train_nda_pct", "test_nda_pct", "train_loss"]].mean().round(2)


def _load() -> dict:
    one, five, fifteen = os.getloadavg()
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        uptime = ""
    return {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load1": one, "load5": five,
            "load15": fifteen, "uptime": uptime}


def _write(out: Path, frames: dict[str, pd.DataFrame], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="result folder (not tracked in git)")
    parser.add_argument("--seeds", type=int, default=3, help="zoo seeds 0 .. seeds-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--samples", default=",".join(map(str, SAMPLES)), help="P values, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--distill-epochs", type=int, default=20)
    parser.add_argument("--base-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--arch", default="resnet18", help="network of the zoo (cnn for a quick smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine 2 threads were 9x slower, see docs/coin.md)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", type=Path, default=None, help="zoo checkpoint cache (default: coinsim's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = [int(v) for v in args.samples.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    dev = pick_device(args.device)
    cfg0 = zoo_config(args.first_seed, args.base_epochs, args.finetune_epochs, args.finetune_lr,
                      arch=args.arch, cache_dir=args.cache_dir)
    n_params = sum(p.numel() for p in build_network(cfg0.network).parameters())
    meta = {"argv": list(sys.argv if argv is None else argv), "device": str(dev), "threads": args.threads,
            "torch": torch.__version__, "parameters": n_params, "load_start": _load(), "seeds_done": []}
    print(f"{cfg0.network.arch}: {n_params:,} parameters; device {dev}; load at start: "
          f"{meta['load_start']['uptime']}", flush=True)
    records, runs, epochs, experts = [], [], [], []
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cfg = zoo_config(seed, args.base_epochs, args.finetune_epochs, args.finetune_lr, arch=args.arch,
                         cache_dir=args.cache_dir)
        zoo = build_zoo(cfg, device=dev, progress=True)
        experts += expert_table(zoo)
        res = code_zoo(zoo, samples, methods, args.distill_epochs)
        records += res["records"]
        runs += res["runs"]
        epochs += res["epochs"]
        meta["seeds_done"].append(seed)
        meta["load_end"] = _load()
        meta["wall_seconds"] = time.perf_counter() - started
        frames = {"nda": pd.DataFrame(records), "runs": pd.DataFrame(runs), "distill_epochs": pd.DataFrame(epochs),
                  "experts": pd.DataFrame(experts)}
        _write(args.out, frames, meta)  # after every seed, so an interrupted run leaves its finished seeds
        print(f"seed {seed} done after {meta['wall_seconds']:.0f} s", flush=True)

    runs_df = frames["runs"]
    pd.set_option("display.width", 200)
    print("\nexperts (test accuracy %, training s):")
    print(frames["experts"].to_string(index=False))
    print("\nNDA vs P (test, mean ± std over seeds):")
    print(nda_vs_p(runs_df).to_string())
    print("\nP-sample (train) vs test NDA and encode seconds, mean over seeds:")
    print(runs_df.groupby(["samples", "method"])[["train_nda_pct", "test_nda_pct", "encode_s"]].mean().round(2)
          .to_string())
    if "distill" in methods:
        print(f"\ndistillation per epoch at P = {max(samples)} (mean over seeds):")
        print(epoch_table(frames["distill_epochs"], max(samples)).to_string())
    print(f"\nload at start: {meta['load_start']['uptime']}\nload at end:   {meta['load_end']['uptime']}")
    print(f"wall {meta['wall_seconds']:.0f} s; wrote {args.out}/{{nda,runs,distill_epochs,experts}}.csv, meta.json")


if __name__ == "__main__":
    main()
