"""Read and check a result folder, so the renderer works on plain, validated Python/pandas objects.

Only summary.json is required; every other file is optional (a sim-only run has no nda.csv, a coding-only
run has no queries or sweep). Problems become a one-line `ReportError` naming the file and the field, because
the usual cause is a hand-edited or half-written folder and the user needs to know which one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class ReportError(ValueError):
    """A result folder that cannot be rendered; the message is one line meant for the user."""


LATENCY_KEYS = ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "p999_ms")
ANSWER_KINDS = ("direct", "replica", "hedge", "decoded")


@dataclass
class ResultData:
    """Everything the report needs, loaded from one result folder."""

    path: Path
    summary: dict[str, Any]
    scenario_toml: str | None = None
    queries: pd.DataFrame | None = None
    sweep: pd.DataFrame | None = None
    nda: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def policies(self) -> dict[str, dict[str, Any]]:
        return self.summary.get("policies") or {}

    @property
    def policy_order(self) -> list[str]:
        """Policies in summary order, then any that appear only in the tables (so nothing is dropped)."""
        names = list(self.policies)
        for df in (self.sweep, self.queries):
            if df is not None and "policy" in df.columns:
                names += [str(p) for p in pd.unique(df["policy"].astype(str)) if str(p) not in names]
        return names

    @property
    def policy_kinds(self) -> dict[str, str | None]:
        """Simulator kind per policy (uncoded/replication/hedged/coded) when the summary records it."""
        return {n: (p.get("kind") if isinstance(p.get("kind"), str) else None) for n, p in self.policies.items()}

    @property
    def sweep_axis(self) -> str | None:
        """The sweep column to plot against, or None when there is no sweep with more than one point."""
        sw = self.sweep
        if sw is None or "point" not in sw.columns or sw["point"].nunique() < 2:
            return None
        axis = self.summary.get("sweep_axis")
        if isinstance(axis, str) and axis in sw.columns:
            return axis
        return "point"


def _fail(where: str, msg: str) -> ReportError:
    return ReportError(f"reports: {where}: {msg}")


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _flatten_policy(name: str, p: Any, where: str) -> dict[str, Any]:
    """Accept the flat contract (`p99_ms`) and the nested variant (`latency_ms.p99`) alike."""
    if not isinstance(p, dict):
        raise _fail(where, f"policies.{name} must be an object (got {type(p).__name__})")
    out = {k: v for k, v in p.items() if k != "latency_ms"}
    nested = p.get("latency_ms")
    if isinstance(nested, dict):
        for k, v in nested.items():
            out.setdefault(f"{k}_ms", v)
    for k, v in out.items():
        if (k.endswith(("_ms", "_ms_lo", "_ms_hi")) or k in ("accuracy", "decoded_fraction", "utilization",
                                                              "extra_load_vs_uncoded")) and not _is_number(v):
            raise _fail(where, f"policies.{name}.{k} must be a number or null (got {v!r})")
    return out


def check_summary(data: Any, where: str = "summary.json") -> dict[str, Any]:
    """Validate the parts of summary.json the report relies on; return it with policies flattened."""
    if not isinstance(data, dict):
        raise _fail(where, f"top level must be a JSON object (got {type(data).__name__})")
    if not isinstance(data.get("scenario"), str):
        raise _fail(where, "missing or non-string 'scenario'")
    out = dict(data)
    for key in ("policies", "coding", "profile", "versions"):
        if out.get(key) is not None and not isinstance(out[key], dict):
            raise _fail(where, f"'{key}' must be an object (got {type(out[key]).__name__})")
    out["policies"] = {str(k): _flatten_policy(str(k), v, where) for k, v in (out.get("policies") or {}).items()}
    for method, c in (out.get("coding") or {}).items():
        if not isinstance(c, dict):
            raise _fail(where, f"coding.{method} must be an object (got {type(c).__name__})")
        for k in ("nda", "decoded_acc", "expert_acc"):
            if c.get(k) is not None and not isinstance(c[k], dict):
                raise _fail(where, f"coding.{method}.{k} must be an object of expert -> number")
            if any(not _is_number(v) for v in (c.get(k) or {}).values()):
                raise _fail(where, f"coding.{method}.{k} must map experts to numbers")
        for k in ("nda_avg", "encode_seconds"):
            if not _is_number(c.get(k)):
                raise _fail(where, f"coding.{method}.{k} must be a number (got {c.get(k)!r})")
    for name, p in (out.get("profile") or {}).items():
        if not isinstance(p, dict):
            raise _fail(where, f"profile.{name} must be an object (got {type(p).__name__})")
    experts = out.get("experts")
    if experts is not None and (not isinstance(experts, list) or not all(isinstance(e, dict) for e in experts)):
        raise _fail(where, "'experts' must be a list of objects")
    live = out.get("live_check")
    if live is not None and not isinstance(live, dict):
        raise _fail(where, "'live_check' must be an object")
    return out


def _read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pyarrow/pandas raise many types; the user needs the file name, not the type
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(str(path), f"cannot be read ({first})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _fail(str(path), f"missing column(s) {', '.join(missing)}")
    return df


def load_result(result_dir: Path | str) -> ResultData:
    """Load a result folder; raise ReportError (one line) if it cannot be rendered."""
    path = Path(result_dir)
    if not path.is_dir():
        raise ReportError(f"reports: {path}: not a result folder (no such directory)")
    spath = path / "summary.json"
    if not spath.is_file():
        raise ReportError(f"reports: {path}: no summary.json (is this a result folder?)")
    try:
        raw = json.loads(spath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _fail(str(spath), f"not valid JSON ({msg})") from exc
    data = ResultData(path=path, summary=check_summary(raw, str(spath)))
    toml = path / "scenario.toml"
    if toml.is_file():
        data.scenario_toml = toml.read_text(encoding="utf-8", errors="replace")
    data.queries = _read_table(path / "queries.parquet", ("policy", "latency_ms"))
    data.sweep = _read_table(path / "sweep.parquet", ("point", "policy"))
    data.nda = _read_table(path / "nda.csv", ("method", "expert", "nda"))
    if data.queries is not None:
        q = data.queries
        q["policy"] = q["policy"].astype(str)
        if "point" not in q.columns:
            q["point"] = 0
        if "warmup" in q.columns:
            q["warmup"] = q["warmup"].astype(bool)
    if data.sweep is not None:
        data.sweep["policy"] = data.sweep["policy"].astype(str)
    normalize_units(data)
    return data


def _max_abs(values) -> float:
    vals = [abs(float(v)) for v in values if finite(v)]
    return max(vals) if vals else 0.0


def normalize_units(data: ResultData) -> None:
    """Accuracies and NDA as fractions (0.98), whichever unit the writer used.

    The runner writes them in percent (98.1) while fractions such as decoded_fraction stay in [0, 1]; both
    shapes exist in old folders, so the unit is detected per family: an accuracy above 1, or an NDA above 2
    (a ratio can exceed 1 a little, never 2), can only be percent.
    """
    s = data.summary
    pol = s.get("policies") or {}
    coding = s.get("coding") or {}
    experts = s.get("experts") or []
    acc_vals = [p.get("accuracy") for p in pol.values()] + [e.get("accuracy") for e in experts]
    for c in coding.values():
        for k in ("decoded_acc", "expert_acc"):
            acc_vals += list((c.get(k) or {}).values())
    frames = [(df, c) for df, cols in ((data.sweep, ("accuracy",)), (data.nda, ("decoded_acc", "expert_acc")))
              if df is not None for c in cols if c in df.columns]
    for df, c in frames:
        acc_vals += pd.to_numeric(df[c], errors="coerce").tolist()
    if _max_abs(acc_vals) > 1.0 + 1e-9:
        for p in pol.values():
            if finite(p.get("accuracy")):
                p["accuracy"] = p["accuracy"] / 100.0
                for k in ("accuracy_lo", "accuracy_hi"):
                    if finite(p.get(k)):
                        p[k] = p[k] / 100.0
        for e in experts:
            if finite(e.get("accuracy")):
                e["accuracy"] = e["accuracy"] / 100.0
        for c in coding.values():
            for k in ("decoded_acc", "expert_acc"):
                if c.get(k):
                    c[k] = {n: (v / 100.0 if finite(v) else v) for n, v in c[k].items()}
        for df, col in frames:
            df[col] = pd.to_numeric(df[col], errors="coerce") / 100.0
            for k in (f"{col}_lo", f"{col}_hi"):
                if k in df.columns:
                    df[k] = pd.to_numeric(df[k], errors="coerce") / 100.0
    nda_vals = [c.get("nda_avg") for c in coding.values()]
    for c in coding.values():
        nda_vals += list((c.get("nda") or {}).values())
    if data.nda is not None:
        nda_vals += pd.to_numeric(data.nda["nda"], errors="coerce").tolist()
    if _max_abs(nda_vals) > 2.0:
        for c in coding.values():
            if finite(c.get("nda_avg")):
                c["nda_avg"] = c["nda_avg"] / 100.0
            if c.get("nda"):
                c["nda"] = {n: (v / 100.0 if finite(v) else v) for n, v in c["nda"].items()}
        if data.nda is not None:
            data.nda["nda"] = pd.to_numeric(data.nda["nda"], errors="coerce") / 100.0


def main_point(data: ResultData) -> int | None:
    """The point the headline numbers describe: the last sweep point (the contract), else the only one."""
    for df in (data.sweep, data.queries):
        if df is not None and "point" in df.columns and len(df):
            return int(df["point"].max())
    return None


def finite(v: Any) -> bool:
    """True for a real, finite number (None, NaN, bools and strings are 'not available')."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
