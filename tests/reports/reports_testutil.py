"""Synthetic but realistic result folders, written the way the runner writes them (parquet, json, csv, toml)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

POLICIES = ("uncoded", "replication", "hedged", "coded")
EXPERTS = ("low", "high")
AXIS = "straggler_p"
SCENARIO_TOML = """name = "synthetic"
seed = 7
# a comment with <angle> & ampersand, which the report must escape

[stragglers]
probability = 0.1
slowdown = 12.0

[traffic]
kind = "poisson"
rate_per_ms = 0.08
"""


def _latencies(rng: np.random.Generator, policy: str, p: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Latency (ms) and how each query was answered, with a crude but policy-specific straggler model."""
    base = rng.lognormal(np.log(4.0), 0.25, size=(n, 2))
    slow = rng.random((n, 2)) < p
    t = np.where(slow, base * 12.0, base)
    how = np.full(n, "direct", dtype=object)
    if policy == "uncoded":
        lat = t[:, 0]
    elif policy == "replication":
        lat = t.min(axis=1)
        how[t[:, 1] < t[:, 0]] = "replica"
    elif policy == "hedged":
        hedge_at = 9.0
        lat = np.where(t[:, 0] > hedge_at + t[:, 1], hedge_at + t[:, 1], t[:, 0])
        how[lat < t[:, 0]] = "hedge"
    else:
        decode = t[:, 1] * 1.1 + 0.4
        lat = np.minimum(t[:, 0], decode)
        how[decode < t[:, 0]] = "decoded"
    return lat + rng.exponential(0.5, n), how


def _ci(x: np.ndarray, q: float) -> tuple[float, float, float]:
    v = float(np.percentile(x, q))
    half = 0.05 * v + 0.1
    return v, v - half, v + half


def _stats(frame: pd.DataFrame, load: float | None) -> dict:
    lat = frame.loc[~frame["warmup"], "latency_ms"].to_numpy()
    meas = frame[~frame["warmup"]]
    out: dict = {}
    for key, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99), ("p999_ms", 99.9)):
        out[key], out[f"{key}_lo"], out[f"{key}_hi"] = _ci(lat, q)
    m = float(lat.mean())
    out.update(mean_ms=m, mean_ms_lo=m * 0.97, mean_ms_hi=m * 1.03)
    out["accuracy"] = float(meas["correct"].mean()) if "correct" in meas else None
    out["decoded_fraction"] = float((meas["answered_by"] == "decoded").mean())
    out["extra_load_vs_uncoded"] = load
    out["n_queries"] = int(len(frame))
    return out


def write_result(root: Path, *, points: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1), n: int = 1500,
                 with_correct: bool = True, files: tuple[str, ...] = ("scenario.toml", "queries.parquet",
                                                                    "nda.csv", "sweep.parquet"),
                 seed: int = 0, scenario: str = "synthetic") -> tuple[Path, dict]:
    """Write a result folder under `root`; return (folder, summary dict as written)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    frames, sweep_rows, main = [], [], {}
    load = {"uncoded": 0.0, "replication": 1.0, "hedged": 0.07, "coded": 0.5}
    for point, p in enumerate(points):
        model = rng.integers(0, 2, n)
        arrival = np.cumsum(rng.exponential(12.0, n))
        sample = rng.integers(0, 1000, n)
        for policy in POLICIES:
            lat, how = _latencies(rng, policy, p, n)
            acc = np.where(how == "decoded", 0.90, 0.98)
            f = pd.DataFrame({
                "point": point, "policy": policy, "query_id": np.arange(n), "model": model,
                "model_name": np.array(EXPERTS)[model], "sample_id": sample, "arrival_ms": arrival,
                "finish_ms": arrival + lat, "latency_ms": lat, "answered_by": how,
                "servers_used": np.where(how == "direct", "0", "1,2"), "server_ms": lat * (1 + load[policy]),
                "warmup": np.arange(n) < n // 10,
            })
            if with_correct:
                f["correct"] = rng.random(n) < acc
            frames.append(f)
            st = _stats(f, load[policy])
            sweep_rows.append({"point": point, AXIS: p, "policy": policy, **st})
            if point == len(points) - 1:
                main[policy] = {**st, "utilization": 0.3 + 0.1 * POLICIES.index(policy), "p95_ms_lo": st["p95_ms_lo"]}
    queries = pd.concat(frames, ignore_index=True)
    sweep = pd.DataFrame(sweep_rows)
    if not with_correct:
        sweep["accuracy"] = None
    coding = {
        "coin": {"nda": {"low": 0.93, "high": 0.91}, "nda_avg": 0.92, "decoded_acc": {"low": 0.91, "high": 0.89},
                 "expert_acc": {"low": 0.98, "high": 0.978}, "encode_seconds": 1.25},
        "vanilla": {"nda": {"low": 0.41, "high": 0.37}, "nda_avg": 0.39, "decoded_acc": {"low": 0.40, "high": 0.36},
                    "expert_acc": {"low": 0.98, "high": 0.978}, "encode_seconds": 0.02},
    }
    summary = {
        "scenario": scenario, "seed": seed, "created": "2025-01-01T12:00:00+00:00",
        "versions": {"coinsim": "0.1.0", "torch": "2.3.0"}, "device": "cpu",
        "sweep_axis": AXIS if len(points) > 1 else None,
        "experts": [{"name": e, "partition": f"labels {i * 5}-{i * 5 + 4}", "accuracy": 0.98}
                    for i, e in enumerate(EXPERTS)],
        "coding": coding,
        "profile": {"low": {"mean_ms": 4.1, "p50_ms": 4.0, "p99_ms": 6.2, "batch_size": 1, "device": "cpu",
                            "n_samples": 200},
                    "coded": {"mean_ms": 4.3, "p50_ms": 4.2, "p99_ms": 6.6, "batch_size": 1, "device": "cpu",
                              "n_samples": 200}},
        "policies": main,
        "live_check": {"profiled_p50_ms": 4.0, "live_p50_ms": 4.2, "profiled_p99_ms": 31.0, "live_p99_ms": 33.5,
                       "n_queries": 400},
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if "scenario.toml" in files:
        (root / "scenario.toml").write_text(SCENARIO_TOML, encoding="utf-8")
    if "queries.parquet" in files:
        queries.to_parquet(root / "queries.parquet", index=False)
    if "sweep.parquet" in files:
        sweep.to_parquet(root / "sweep.parquet", index=False)
    if "nda.csv" in files:
        rows = [{"method": m, "expert": e, "nda": c["nda"][e], "decoded_acc": c["decoded_acc"][e],
                 "expert_acc": c["expert_acc"][e], "encode_seconds": c["encode_seconds"]}
                for m, c in coding.items() for e in EXPERTS]
        pd.DataFrame(rows).to_csv(root / "nda.csv", index=False)
    return root, summary
