"""Synthetic but realistic result folders, written the way the runner writes them (parquet, json, csv, toml):
summary.json schema version 2, everything percent-valued in percent and named *_pct."""

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
    elif policy == "backup":  # a generalist on the extra server answers whichever expert is late
        backup = t[:, 1] + 0.2
        lat = np.minimum(t[:, 0], backup)
        how[backup < t[:, 0]] = "backup"
    else:
        decode = t[:, 1] * 1.1 + 0.4
        lat = np.minimum(t[:, 0], decode)
        how[decode < t[:, 0]] = "decoded"
    return lat + rng.exponential(0.5, n), how


def _ci(x: np.ndarray, q: float) -> tuple[float, float, float]:
    v = float(np.percentile(x, q))
    half = 0.05 * v + 0.1
    return v, v - half, v + half


def _stats(frame: pd.DataFrame, load_pct: float | None) -> dict:
    lat = frame.loc[~frame["warmup"], "latency_ms"].to_numpy()
    meas = frame[~frame["warmup"]]
    out: dict = {"kind": frame["policy"].iloc[0]}
    for key, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99), ("p999_ms", 99.9)):
        out[key], out[f"{key}_lo"], out[f"{key}_hi"] = _ci(lat, q)
    m = float(lat.mean())
    out.update(mean_ms=m, mean_ms_lo=m * 0.97, mean_ms_hi=m * 1.03)
    out["accuracy_pct"] = float(meas["correct"].mean() * 100) if "correct" in meas else None
    out["agreement_pct"] = float(meas["agrees_with_expert"].mean() * 100) if "agrees_with_expert" in meas else None
    for how in ("direct", "replica", "hedge", "decoded", "backup"):
        mine = meas[meas["answered_by"] == how]
        if how != "backup" or out["kind"] == "backup":  # other policies have no backup keys (keys may be absent)
            out[f"{how}_pct"] = float(len(mine) / len(meas) * 100)
        if how in ("decoded", "backup") and (how == "decoded" or out["kind"] == "backup"):
            for col, key in (("correct", "accuracy_pct"), ("agrees_with_expert", "agreement_pct")):
                out[f"{how}_{key}"] = float(mine[col].mean() * 100) if len(mine) and col in mine else None
    out["extra_load_vs_uncoded_pct"] = load_pct
    out["server_ms_per_query"] = float(meas["server_ms"].mean())
    out["n_queries"] = int(len(frame))
    out["n_measured"] = int(len(meas))
    return out


def write_result(root: Path, *, points: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1), n: int = 1500,
                 with_correct: bool = True, files: tuple[str, ...] = ("scenario.toml", "queries.parquet",
                                                                    "nda.csv", "sweep.parquet"),
                 seed: int = 0, scenario: str = "synthetic",
                 policies: tuple[str, ...] = POLICIES) -> tuple[Path, dict]:
    """Write a result folder under `root`; return (folder, summary dict as written). A "backup" policy
    answers late queries with a generalist (answered_by "backup"); only it has the backup_* keys."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    frames, sweep_rows, per_point = [], [], []
    load = {"uncoded": 0.0, "replication": 100.0, "hedged": 7.0, "coded": 50.0, "backup": 45.0}
    for point, p in enumerate(points):
        model = rng.integers(0, 2, n)
        arrival = np.cumsum(rng.exponential(12.0, n))
        sample = rng.integers(0, 1000, n)
        for policy in policies:
            lat, how = _latencies(rng, policy, p, n)
            acc = np.where(how == "decoded", 0.90, np.where(how == "backup", 0.94, 0.98))
            agree = np.where(how == "decoded", 0.93, np.where(how == "backup", 0.95, 1.0))
            f = pd.DataFrame({
                "point": point, "policy": policy, "query_id": np.arange(n), "model": model,
                "model_name": np.array(EXPERTS)[model], "sample_id": sample, "arrival_ms": arrival,
                "finish_ms": arrival + lat, "latency_ms": lat, "answered_by": how,
                "servers_used": np.where(how == "direct", "0", "1,2"), "server_ms": lat * (1 + load[policy] / 100),
                "warmup": np.arange(n) < n // 10,
            })
            if with_correct:
                f["correct"] = rng.random(n) < acc
                # its own stream, so the draws above (and every older test's numbers) stay as they were
                agree_rng = np.random.default_rng([seed, point, policies.index(policy)])
                f["agrees_with_expert"] = agree_rng.random(n) < agree
            frames.append(f)
            st = {**_stats(f, load[policy]), "utilization_pct": 30.0 + 10 * policies.index(policy)}
            sweep_rows.append({"point": point, AXIS: p, "policy": policy, **st})
            if policy == policies[0]:
                per_point.append({"point": point, AXIS: p, "policies": {}})
            per_point[-1]["policies"][policy] = st
    queries = pd.concat(frames, ignore_index=True)
    sweep = pd.DataFrame(sweep_rows)
    if not with_correct:
        sweep["accuracy_pct"] = None
    coding = {
        "coin": {"nda_pct": {"low": 93.0, "high": 91.0}, "nda_avg_pct": 92.0,
                 "decoded_acc_pct": {"low": 91.0, "high": 89.0}, "expert_acc_pct": {"low": 98.0, "high": 97.8},
                 "encode_s": 1.25},
        "vanilla": {"nda_pct": {"low": 41.0, "high": 37.0}, "nda_avg_pct": 39.0,
                    "decoded_acc_pct": {"low": 40.0, "high": 36.0}, "expert_acc_pct": {"low": 98.0, "high": 97.8},
                    "encode_s": 0.02},
    }
    summary = {
        "schema_version": 2,
        "scenario": scenario, "seed": seed, "created": "2025-01-01T12:00:00+00:00",
        "versions": {"coinsim": "0.1.0", "torch": "2.3.0"}, "device": "cpu",
        "sweep_axis": AXIS if len(points) > 1 else None,
        "sweep_axes": [AXIS] if len(points) > 1 else [],
        "experts": [{"name": e, "partition": f"labels {i * 5}-{i * 5 + 4}", "accuracy_pct": 98.0}
                    for i, e in enumerate(EXPERTS)],
        "coding": coding,
        "profile": {"low": {"mean_ms": 4.1, "p50_ms": 4.0, "p99_ms": 6.2, "batch_size": 1, "device": "cpu",
                            "n_samples": 200},
                    "coded": {"mean_ms": 4.3, "p50_ms": 4.2, "p99_ms": 6.6, "batch_size": 1, "device": "cpu",
                              "n_samples": 200}},
        "headline_point": len(points) - 1,
        "policies": per_point[-1]["policies"],
        "points": per_point if len(points) > 1 else [{"point": 0, "policies": per_point[0]["policies"]}],
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
        rows = [{"method": m, "expert": e, "nda_pct": c["nda_pct"][e], "decoded_acc_pct": c["decoded_acc_pct"][e],
                 "expert_acc_pct": c["expert_acc_pct"][e], "encode_s": c["encode_s"]}
                for m, c in coding.items() for e in EXPERTS]
        pd.DataFrame(rows).to_csv(root / "nda.csv", index=False)
    return root, summary
