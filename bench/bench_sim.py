"""Benchmark of the sim engine against peers measured in the same run (customers per second and ratios).

    python bench/bench_sim.py            # default sizes
    python bench/bench_sim.py --n 50000 --repeat 5

1. M/M/1 (rho = 0.8): the fast engine vs an idiomatic SimPy model (a process per customer + Resource) on the
   same arrival and service times (their sojourns are checked equal), and vs Ciw (its own random numbers). The
   fast engine runs an uncoded FIFO configuration like this one as Lindley's recursion without events; the same
   engine's event loop on the same plan (records checked identical) is timed beside it.
2. Coded policy with cancellation (N = 2 experts + 1 coded server, redundant dispatch, 5% stragglers): the
   fast engine vs the idiomatic SimPy version of itself (sim.reference: process per query and per copy,
   AnyOf, Interrupt), on the same plan; records are checked identical.
3. A fleet point (`--fleet-instances` per expert of 8 experts behind JSQ, two code groups, one coded server per
   four base servers, coded-hedged, 5% stragglers, per-task draws): the fast engine vs the idiomatic SimPy version
   on the same plan (query for query); then the target point itself, 1,000 servers (8 x 111 instances + 2 x 56
   coded) and `--n-target` queries (10^6), drawn, planned and run whole (target <= 10 s per point); with the
   compiled engine (accel/), the same point again on the pure-Python modules in a process of their own (records
   checked identical; `--no-pure` skips it).
4. A fleet's per-server random streams (`--n-streams` servers, one purpose): made in bulk (sim.seeds) against one
   SeedSequence at a time (sim.draws.stream), their first numbers checked equal.

Each contender runs `--repeat` times interleaved and its best time counts, which damps noise from other
processes on a shared machine. Targets: M/M/1 >= 10x idiomatic SimPy (issue 17; 4x in issue 4) and >= 7x Ciw;
coded >= 5x its idiomatic version.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import simpy

import accel
from sim.config import SimConfig
from sim.draws import draw
from sim.engine import FastEngine
from sim.parse import parse_config
from sim.plan import make_plan
from sim.reference import ReferenceEngine


def idiomatic_mm1(arrival_ms: np.ndarray, service_ms: np.ndarray) -> np.ndarray:
    """Textbook SimPy: a source process spawning one process per customer that holds a Resource."""
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    finish = np.zeros(len(arrival_ms))
    arr, svc = arrival_ms.tolist(), service_ms.tolist()

    def customer(k: int):
        with server.request() as req:
            yield req
            yield env.timeout(svc[k])
        finish[k] = env.now

    def source():
        for k, t in enumerate(arr):
            yield env.timeout(t - env.now)
            env.process(customer(k))

    env.process(source())
    env.run()
    return finish - arrival_ms


def ciw_mm1(n: int, lam: float, mu: float, seed: int) -> None:
    import ciw

    net = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(lam)],
        service_distributions=[ciw.dists.Exponential(mu)],
        number_of_servers=[1],
    )
    ciw.seed(seed)
    q = ciw.Simulation(net)
    q.simulate_until_max_customers(n, method="Finish")


def event_loop(plan, d) -> object:
    """The fast engine's event loop on a plan it would otherwise run as the recursion."""
    engine = FastEngine(plan, d)
    engine.recursion = False
    return engine.run()


def best_of(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="customers for the M/M/1 runs")
    ap.add_argument("--n-coded", type=int, default=40_000, help="queries for the coded runs")
    ap.add_argument("--n-ciw", type=int, default=30_000, help="customers for Ciw (slowest peer)")
    ap.add_argument("--n-fleet", type=int, default=5_000, help="queries for the fleet runs")
    ap.add_argument("--fleet-instances", type=int, default=25, help="instances per expert in the fleet race")
    ap.add_argument("--n-target", type=int, default=1_000_000, help="queries of the 1,000-server target point")
    ap.add_argument("--n-streams", type=int, default=20_000, help="servers whose streams are made")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-pure", action="store_true", help="skip the target point on the pure-Python modules")
    ap.add_argument("--point-only", action="store_true", help="run only the target point; print it as JSON")
    a = ap.parse_args()
    if a.point_only:
        print(json.dumps(target_point(a.n_target, a.seed)))
        return
    print(f"engine: {accel.status()}")

    # ---- M/M/1
    cfg = parse_config(
        {"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": 0.8}, "n_queries": a.n, "policies": ["uncoded"]}
    )
    d = draw(cfg, a.seed)
    plan = make_plan(cfg, cfg.policies[0], d)
    fast_out = FastEngine(plan, d).run()
    idio = idiomatic_mm1(d.arrival_ms, plan.service_ms[:, 0])
    assert np.allclose(fast_out.finish_ms - d.arrival_ms, idio, atol=1e-9), "engines disagree on M/M/1"
    assert FastEngine(plan, d).recursion, "M/M/1 should run as the recursion"
    looped = event_loop(plan, d)
    assert np.array_equal(looped.finish_ms, fast_out.finish_ms) and np.array_equal(looped.busy_ms, fast_out.busy_ms)
    t = best_of(
        {
            "fast": lambda: FastEngine(plan, d).run(),
            "loop": lambda: event_loop(plan, d),
            "simpy": lambda: idiomatic_mm1(d.arrival_ms, plan.service_ms[:, 0]),
            "ciw": lambda: ciw_mm1(a.n_ciw, 0.8, 1.0, a.seed),
        },
        a.repeat,
    )
    rate = {"fast": a.n / t["fast"], "loop": a.n / t["loop"], "simpy": a.n / t["simpy"], "ciw": a.n_ciw / t["ciw"]}
    print(f"M/M/1 rho=0.8 (best of {a.repeat})")
    for k, label in (("fast", "fast engine (recursion)"), ("loop", "fast engine, event loop"),
                     ("simpy", "idiomatic SimPy"), ("ciw", "Ciw")):
        print(f"  {label:<28s} {rate[k]:>10,.0f} customers/s")
    r1, r2, r0 = rate["fast"] / rate["simpy"], rate["fast"] / rate["ciw"], rate["loop"] / rate["simpy"]
    print(f"  ratio fast/idiomatic SimPy    {r1:6.2f}x  (target >= 10) {'OK' if r1 >= 10 else 'MISSED'}")
    print(f"  ratio fast/Ciw                {r2:6.2f}x  (target >= 7)  {'OK' if r2 >= 7 else 'MISSED'}")
    print(f"  ratio event loop/idiomatic    {r0:6.2f}x  (what every other policy runs on)")

    # ---- coded with cancellation
    cfg = parse_config(
        {
            "n_experts": 2,
            "r": 1,
            "traffic": {"rate_per_ms": 1.2, "ensemble_rate_per_ms": 0.1},
            "stragglers": {"p": 0.05, "slowdown": 5.0},
            "n_queries": a.n_coded,
            "policies": [{"kind": "coded", "dispatch": "redundant", "cancel": True}],
        }
    )
    r3 = race(cfg, a, f"coded N=2 r=1 redundant + cancel, 5% stragglers (best of {a.repeat})")
    print(f"  ratio fast/idiomatic          {r3:6.2f}x  (target >= 5)  {'OK' if r3 >= 5 else 'MISSED'}")
    fleet(a)
    streams_race(a)


def race(cfg: SimConfig, a: argparse.Namespace, title: str) -> float:
    """The fast engine against the idiomatic SimPy one on the same plan (checked query for query); prints both
    rates and returns their ratio."""
    d = draw(cfg, a.seed)
    plan = make_plan(cfg, cfg.policies[0], d)
    fo, ro = FastEngine(plan, d).run(), ReferenceEngine(plan, d).run()
    assert np.allclose(fo.finish_ms, ro.finish_ms, atol=1e-9) and (fo.how == ro.how).all() \
        and (fo.mask == ro.mask).all(), f"engines disagree: {title}"
    t = best_of({"fast": lambda: FastEngine(plan, d).run(), "ref": lambda: ReferenceEngine(plan, d).run()}, a.repeat)
    rf, rr = d.n / t["fast"], d.n / t["ref"]
    print(title)
    print(f"  {'fast engine':<28s} {rf:>10,.0f} queries/s")
    print(f"  {'idiomatic SimPy (reference)':<28s} {rr:>10,.0f} queries/s")
    return rf / rr


def fleet_config(instances: int, r: int, n: int) -> SimConfig:
    """8 experts behind JSQ in two code groups, coded-hedged, 5% stragglers, per-task draws, load 0.5 per server."""
    return parse_config({
        "n_experts": 8, "r": r, "n_queries": n, "traffic": {"rate_per_ms": 0.5 * 8 * instances}, "draws": "task",
        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0},
                    "coded": {"kind": "exponential", "mean_ms": 1.0}},
        "stragglers": {"p": 0.05, "slowdown": 10.0},
        "policies": [{"kind": "coded", "dispatch": "hedged", "delay_ms": 2.0}],
        "deployment": {"instances": instances, "balancer": "jsq", "groups": [[0, 1, 2, 3], [4, 5, 6, 7]]}})


def fleet(a: argparse.Namespace) -> None:
    """A fleet point: engines against each other, then the issue-17 target point run whole (draw, plan, run)."""
    k = a.fleet_instances
    cfg = fleet_config(k, k // 2, a.n_fleet)
    ratio = race(cfg, a, f"fleet: 8 experts x {k} instances (JSQ), 2 code groups, {cfg.n_servers} servers, "
                         f"coded-hedged, per-task draws (best of {a.repeat})")
    print(f"  ratio fast/idiomatic          {ratio:6.2f}x")
    point = target_point(a.n_target, a.seed)
    total = point["total_s"]
    print(f"the target point: {point['servers']:,} servers, {a.n_target:,} queries, engine {accel.status()}: "
          f"draw {point['draw_s']:.2f} s, plan {point['plan_s']:.2f} s, run {point['run_s']:.2f} s, "
          f"total {total:.1f} s (target <= 10 s) {'OK' if total <= 10 else 'MISSED'}; "
          f"{a.n_target / total:,.0f} queries/s; peak memory of the process {point['peak_mb']:,.0f} MB")
    if accel.status() == "compiled" and not a.no_pure:  # the same point on the pure-Python modules, in a process
        env = os.environ | {accel.PURE_ENV: "1"}  # of its own (the choice is made at import)
        got = subprocess.run([sys.executable, __file__, "--point-only", "--n-target", str(a.n_target),
                              "--seed", str(a.seed)], capture_output=True, text=True, env=env, check=True)
        pure = json.loads(got.stdout)
        assert pure["records"] == point["records"], "the compiled and pure-Python engines disagree"
        print(f"  the same point, pure-Python modules: run {pure['run_s']:.2f} s, total {pure['total_s']:.1f} s "
              f"(records identical); ratio compiled/pure {pure['total_s'] / total:6.2f}x")


def target_point(n: int, seed: int) -> dict[str, float | str]:
    """The issue-17 point, 8 x 111 instances + 56 coded servers per group = 1,000 servers and n queries, drawn,
    planned and run whole; its timings, the process's peak memory and a digest of its records."""
    cfg = fleet_config(111, 56, n)
    started = time.perf_counter()
    d = draw(cfg, seed)
    drawn = time.perf_counter()
    plan = make_plan(cfg, cfg.policies[0], d)
    planned = time.perf_counter()
    out = FastEngine(plan, d).run()
    ran = time.perf_counter()
    digest = hashlib.sha256(out.finish_ms.tobytes() + out.how.tobytes() + out.n_tasks.tobytes()).hexdigest()
    return {"servers": cfg.n_servers, "draw_s": drawn - started, "plan_s": planned - drawn, "run_s": ran - planned,
            "total_s": ran - started, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "records": digest}


def streams_race(a: argparse.Namespace) -> None:
    """Per-server streams made in bulk against one at a time, on the same keys."""
    from sim.draws import SERVICE, stream
    from sim.seeds import streams

    def bulk() -> list[float]:
        return [rng.random() for _, rng in streams(a.seed, SERVICE, range(a.n_streams))]

    def one_by_one() -> list[float]:
        return [stream(a.seed, SERVICE, s).random() for s in range(a.n_streams)]

    assert bulk() == one_by_one(), "bulk streams differ from numpy's own"
    t = best_of({"bulk": bulk, "one": one_by_one}, a.repeat)
    print(f"per-server streams, {a.n_streams:,} servers (best of {a.repeat})")
    print(f"  {'in bulk (sim.seeds)':<28s} {a.n_streams / t['bulk']:>10,.0f} streams/s")
    print(f"  {'one SeedSequence at a time':<28s} {a.n_streams / t['one']:>10,.0f} streams/s")
    print(f"  ratio bulk/one at a time      {t['one'] / t['bulk']:6.2f}x")


if __name__ == "__main__":
    main()
