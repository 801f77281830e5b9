"""Training throughput of the default expert network on 1 vs more torch threads, interleaved in one run.

    python bench/bench_threads.py [--threads 1,2] [--rounds 5] [--busy 0|1]

One epoch (2,000 MNIST-sized images, batch 64, AdamW) of the quickstart network per measurement, thread counts
alternated round by round so machine drift hits them alike. `--busy 1` starts one process spinning on a core
for the duration (what another tenant or a test suite does to a shared 2-core machine). Prints the median epoch
time per thread count and its ratio to one thread: the reason `coinsim` defaults to one thread.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

import torch

from models.networks import NetworkSpec, build_network


def _spin(stop: mp.synchronize.Event) -> None:
    while not stop.is_set():
        pass


def epoch_seconds(threads: int, spec: NetworkSpec, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    """Seconds for one training epoch of a fresh `spec` network on (x, y) with `threads` intra-op threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_network(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    for i in range(0, len(x), batch):
        loss = torch.nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 2}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy", type=int, default=0, choices=(0, 1))
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    spec = NetworkSpec(arch="cnn", width=12, activation="gelu")  # the quickstart network
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 1, 28, 28, generator=g), torch.randint(0, 10, (2000,), generator=g)
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,), daemon=True) if args.busy else None
    if spinner:
        spinner.start()
    try:
        epoch_seconds(1, spec, x, y)  # warm-up
        times: dict[int, list[float]] = {t: [] for t in counts}
        for _ in range(args.rounds):
            for t in counts:
                times[t].append(epoch_seconds(t, spec, x, y))
    finally:
        stop.set()
        if spinner:
            spinner.join()
    load = os.getloadavg()[0]
    base = statistics.median(times[counts[0]])
    print(f"load average {load:.2f}, {os.cpu_count()} cores, busy spinner: {bool(args.busy)}")
    print("threads  median epoch s  ratio to first")
    for t in counts:
        med = statistics.median(times[t])
        print(f"{t:>7}  {med:>14.3f}  {med / base:>14.2f}")


if __name__ == "__main__":
    main()
