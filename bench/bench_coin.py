"""Benchmark of coin/: output-Fisher diagonal and COIN encode time, each against a peer in the same run.

1. Time per sample of the exact output-Fisher diagonal Σₖ (∂fₖ/∂θ)² on the default SmallCNN, on the same
   model and inputs: coin's layer-wise path (``coin.output_fisher``, default) and its generic vmap/jacrev
   path, a loop of K backward passes per sample, and BackPACK's DiagGGNExact (MSE loss, whose GGN
   diagonal is 2·Σₖ J²ₖ). Results are checked to agree before any ratio is printed.
2. COIN encode (both Fishers, the λ grid and its scoring) vs ensemble distillation (paper settings: AdamW
   lr 1e-5, batch 8, weight decay 0.1, 20 epochs) at the same P, on the quickstart experts.

Run: ``python bench/bench_coin.py [--samples 64] [--loop-samples 8] [--coded-samples 200]``.
BackPACK is a bench-only extra (``pip install backpack-for-pytorch``); without it that column is skipped.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import coin


def _timeit(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _interleaved(runs: dict, repeats: int) -> dict[str, float]:
    """Best wall time per named callable, timing them in turn each round after one warm-up round."""
    for fn in runs.values():
        fn()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _flat_sequential(model: nn.Module) -> nn.Sequential:
    """SmallCNN as one nn.Sequential sharing its parameters (BackPACK extends plain containers)."""
    return nn.Sequential(*model.features, *model.classifier)


def backpack_fisher(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Σₖ J²ₖ averaged over samples, from BackPACK's exact GGN diagonal of a summed MSE loss (H = 2I)."""
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact

    net = extend(_flat_sequential(copy.deepcopy(model)).eval())
    loss_fn = extend(nn.MSELoss(reduction="sum"))
    out = net(x)
    loss = loss_fn(out, out.detach())
    with backpack(DiagGGNExact()):
        loss.backward()
    return {n: p.diag_ggn_exact / (2 * x.shape[0]) for n, p in net.named_parameters()}


def bench_fisher(samples: int, loop_samples: int, repeats: int) -> dict[str, float]:
    from models.networks import NetworkSpec, build_network

    torch.manual_seed(0)
    model = build_network(NetworkSpec()).eval()
    x = torch.randn(samples, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Fisher diagonal: SmallCNN, {n_params} parameters, K=10 outputs, {torch.get_num_threads()} threads")

    ours = coin.output_fisher(model, x)
    ref = coin.loop_output_fisher(model, x[:loop_samples])
    sub = coin.output_fisher(model, x[:loop_samples])
    err = max((sub[n] - ref[n]).abs().max().item() for n in ref) / max(r.abs().max().item() for r in ref.values())
    print(f"  agreement with the K-backward loop: max relative error {err:.2e}")

    runs = {"layers": lambda: coin.output_fisher(model, x),
            "vmap": lambda: coin.output_fisher(model, x, method="vmap")}
    try:
        bp = backpack_fisher(model, x)
        runs["backpack"] = lambda: backpack_fisher(model, x)
    except ImportError:
        bp = None
    # interleaved, best of `repeats`: a shared machine's load hits every method alike
    best = _interleaved(runs, repeats)
    t_ours, t_vmap = best["layers"] / samples, best["vmap"] / samples
    t_loop = _timeit(lambda: coin.loop_output_fisher(model, x[:loop_samples]), 1) / loop_samples
    res = {"coin_ms_per_sample": 1e3 * t_ours, "coin_vmap_ms_per_sample": 1e3 * t_vmap,
           "loop_ms_per_sample": 1e3 * t_loop}
    print(f"  coin.output_fisher (layer-wise):  {1e3 * t_ours:8.3f} ms/sample")
    print(f"  coin.output_fisher (vmap/jacrev): {1e3 * t_vmap:8.3f} ms/sample   ratio vmap/layers = "
          f"{t_vmap / t_ours:.1f}x")
    print(f"  loop of K backward passes:        {1e3 * t_loop:8.3f} ms/sample   ratio loop/coin = "
          f"{t_loop / t_ours:.1f}x")
    if bp is None:
        print("  BackPACK not installed (pip install backpack-for-pytorch): skipped")
        return res
    names = list(ours)
    bp_err = max((bp[b] - ours[a]).abs().max().item() for a, b in zip(names, bp, strict=True))
    bp_err /= max(v.abs().max().item() for v in ours.values())
    t_bp = best["backpack"] / samples
    res["backpack_ms_per_sample"] = 1e3 * t_bp
    print(f"  BackPACK DiagGGNExact:            {1e3 * t_bp:8.3f} ms/sample   ratio backpack/coin = "
          f"{t_bp / t_ours:.2f}x  (agreement {bp_err:.1e})")
    return res


def bench_encode(coded_samples: int) -> dict[str, float]:
    from models.zoo import build_zoo
    from scenarios.schema import load_zoo_config

    zoo = build_zoo(load_zoo_config("quickstart"), device="cpu", progress=False)
    beta = [0.5, 0.5]
    x, y, owner = coin.draw_coding_samples([(e.train_x, e.train_y) for e in zoo.experts], coded_samples, 0)
    print(f"Encode time at P={coded_samples}, quickstart experts (cached zoo, CPU):")
    # COIN best of 3 (it is short, so load spikes distort it most); distillation runs once (20 epochs)
    c = min((coin.encode("coin", zoo.models, beta, x, y=y, owner=owner) for _ in range(3)),
            key=lambda r: r.seconds)
    d = coin.encode("distill", zoo.models, beta, x, y=y, owner=owner, log_train=False)
    print(f"  COIN (2 Fishers + 6-point λ grid, scored): {c.seconds:8.2f} s   (λ = {c.info['lam']:g})")
    print(f"  ensemble distillation (20 epochs):         {d.seconds:8.2f} s")
    print(f"  ratio distill/COIN = {d.seconds / c.seconds:.1f}x")
    return {"coin_encode_s": c.seconds, "distill_encode_s": d.seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--loop-samples", type=int, default=8)
    ap.add_argument("--coded-samples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-encode", action="store_true")
    args = ap.parse_args()
    bench_fisher(args.samples, args.loop_samples, args.repeats)
    if not args.skip_encode:
        bench_encode(args.coded_samples)


if __name__ == "__main__":
    main()
