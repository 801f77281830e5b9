"""Read and check a result folder, so the renderer works on plain, validated Python/pandas objects.

Only summary.json is required; every other file is optional (a sim-only run has no nda.csv, a coding-only
run has no queries or sweep). Problems become a one-line `ReportError` naming the file and the field, because
the usual cause is a hand-edited or half-written folder and the user needs to know which one.

Units and names are read from the folder's `schema_version`, never guessed from the size of a number:

- version 2 (current): accuracies, NDA and fractions in percent, named `*_pct`; every sweep point under
  `points`; `headline_point` says which point `policies` repeats; `n_queries` is the number of simulated
  queries and `n_measured` those left after warm-up.
- version 1 (no `schema_version`): accuracy and NDA in percent under their bare names (`accuracy`, `nda`,
  `nda_avg`, `decoded_acc`, `expert_acc`), fractions in [0, 1] (`decoded_fraction`, `frac_*`, `*_fraction`,
  `utilization`, `extra_load_vs_uncoded`), `n_queries` the measured count, only the last point in the
  summary (the others are rebuilt from sweep.parquet). Such folders are migrated to version 2 on load.

nda.csv (written by `coinsim run` and `coinsim code`) names its columns like summary.json's coding section:
`nda_pct`, `decoded_acc_pct`, `expert_acc_pct` (percent) and `encode_s` (seconds). Folders written before
that rename have `nda`, `decoded_acc`, `expert_acc` (also percent) and `encode_seconds`; those columns are
renamed on reading, by name. summary.json's `coding.<method>.encode_seconds` (before the rename) is read as
`encode_s` the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from resultschema import ANSWER_KINDS, COMPARE_KIND, NDA, QUERIES, SCENARIO, SCHEMA_VERSION, SUMMARY, SWEEP


class ReportError(ValueError):
    """A result folder that cannot be rendered; the message is one line meant for the user."""


PCT_KEYS = ("accuracy_pct", "utilization_pct", "extra_load_vs_uncoded_pct", "hedges_denied_pct",
            *(f"{k}_pct" for k in ANSWER_KINDS))

# version 1 name -> (version 2 name, factor to percent); applied by name to policies and sweep.parquet columns
_V1_POLICY_KEYS = {
    "accuracy": ("accuracy_pct", 1.0),
    "accuracy_lo": ("accuracy_pct_lo", 1.0),
    "accuracy_hi": ("accuracy_pct_hi", 1.0),
    "utilization": ("utilization_pct", 100.0),
    "extra_load_vs_uncoded": ("extra_load_vs_uncoded_pct", 100.0),
    **{f"{k}_fraction": (f"{k}_pct", 100.0) for k in ANSWER_KINDS},
    **{f"frac_{k}": (f"{k}_pct", 100.0) for k in ANSWER_KINDS},
}
_V1_CODING_KEYS = {"nda": "nda_pct", "nda_avg": "nda_avg_pct", "decoded_acc": "decoded_acc_pct",
                   "expert_acc": "expert_acc_pct"}
_V1_ROW_KEYS = {"accuracy": "accuracy_pct", "nda": "nda_pct", "decoded_acc": "decoded_acc_pct",
                "expert_acc": "expert_acc_pct"}
# nda.csv before issue 11's rename -> its current names (same units: percent and seconds)
_NDA_CSV_LEGACY = {"nda": "nda_pct", "decoded_acc": "decoded_acc_pct", "expert_acc": "expert_acc_pct",
                   "encode_seconds": "encode_s"}


@dataclass
class ResultData:
    """Everything the report needs, loaded from one result folder (always in the version-2 names and units)."""

    path: Path
    summary: dict[str, Any]
    scenario_toml: str | None = None
    queries: pd.DataFrame | None = None
    sweep: pd.DataFrame | None = None
    nda: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def policies(self) -> dict[str, dict[str, Any]]:
        """The headline point's policies (summary.json's top-level `policies`)."""
        return self.summary.get("policies") or {}

    @property
    def points(self) -> list[dict[str, Any]]:
        """Every sweep point: {"point": i, <axis column>: value, ..., "policies": {name: flat stats}}."""
        return self.summary.get("points") or []

    @property
    def headline_point(self) -> int | None:
        """Index of the point the headline numbers (`policies`) describe."""
        hp = self.summary.get("headline_point")
        return hp if isinstance(hp, int) and not isinstance(hp, bool) else None

    @property
    def policy_order(self) -> list[str]:
        """Policies in summary order, then any that appear only in the tables (so nothing is dropped)."""
        names = list(self.policies)
        for p in self.points:
            names += [n for n in p["policies"] if n not in names]
        for df in (self.sweep, self.queries):
            if df is not None and "policy" in df.columns:
                names += [str(p) for p in pd.unique(df["policy"].astype(str)) if str(p) not in names]
        return names

    @property
    def policy_kinds(self) -> dict[str, str | None]:
        """Simulator kind per policy (uncoded/replication/hedged/coded/backup) when the summary records it."""
        kinds: dict[str, str | None] = {}
        for policies in [self.policies, *(p["policies"] for p in self.points)]:
            for n, p in policies.items():
                if isinstance(p.get("kind"), str):
                    kinds.setdefault(n, p["kind"])
        return {n: kinds.get(n) for n in self.policy_order}

    @property
    def axes(self) -> list[str]:
        """Sweep columns (e.g. straggler_p, traffic_load) that vary between points, in scenario order."""
        listed = self.summary.get("sweep_axes") or ([self.summary["sweep_axis"]] if self.summary.get("sweep_axis")
                                                    else [])
        sw = self.sweep
        if sw is None:
            return [a for a in listed if len({p.get(a) for p in self.points}) > 1]
        return [a for a in listed if isinstance(a, str) and a in sw.columns and sw[a].nunique(dropna=False) > 1]

    @property
    def sweep_axis(self) -> str | None:
        """The sweep column to plot against (the first varying axis), "point" when the axes do not tell the points
        apart, or None when there is no sweep with more than one point."""
        sw = self.sweep
        if sw is None or "point" not in sw.columns or sw["point"].nunique() < 2:
            return None
        axes = self.axes
        if not axes or sw.groupby([*axes, "policy"], dropna=False).size().max() > 1:
            return "point"
        return axes[0]

    @property
    def facet_axes(self) -> list[str]:
        """The other varying axes: sweep figures draw one panel per combination of their values."""
        axis = self.sweep_axis
        return [a for a in self.axes if a != axis] if axis not in (None, "point") else []

    def point_label(self, point: int | None) -> str | None:
        """'straggler_p = 0.1, traffic_load = 0.5' for a point index (None without a sweep)."""
        if point is None:
            return None
        coords = next((p for p in self.points if p.get("point") == point), None)
        axes = self.axes or ([self.sweep_axis] if self.sweep_axis not in (None, "point") else [])
        if coords is not None and all(a in coords for a in axes) and axes:
            return ", ".join(f"{a} = {fmt_value(coords[a])}" for a in axes)
        sw = self.sweep
        if sw is not None and axes and "point" in sw.columns:
            rows = sw[sw["point"] == point]
            if len(rows):
                return ", ".join(f"{a} = {fmt_value(rows[a].iloc[0])}" for a in axes)
        return f"point {point}" if len(self.points) > 1 else None


def fmt_value(v: Any) -> str:
    """An axis value as a person writes it: 0.05, 2, 'poisson'."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _fail(where: str, msg: str) -> ReportError:
    return ReportError(f"reports: {where}: {msg}")


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _migrate_policy_v1(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in p.items():
        if k in _V1_POLICY_KEYS:
            new, factor = _V1_POLICY_KEYS[k]
            if new not in out:
                out[new] = v * factor if _is_number(v) and v is not None else v
        elif k in ("n_queries", "n_measured"):
            continue
        else:
            out[k] = v
    # version 1 wrote the measured count under both names (the runner overwrote the simulated count)
    n = p.get("n_measured", p.get("n_queries"))
    if n is not None:
        out["n_measured"] = n
    return out


def _flatten_policy(name: str, p: Any, where: str) -> dict[str, Any]:
    """Accept the flat contract (`p99_ms`) and the nested variant (`latency_ms.p99`) alike."""
    if not isinstance(p, dict):
        raise _fail(where, f"{name} must be an object (got {type(p).__name__})")
    out = {k: v for k, v in p.items() if k != "latency_ms"}
    nested = p.get("latency_ms")
    if isinstance(nested, dict):
        for k, v in nested.items():
            out.setdefault(f"{k}_ms", v)
    for k, v in out.items():
        if (k.endswith(("_ms", "_ms_lo", "_ms_hi", "_pct")) or k in ("n_queries", "n_measured")) \
                and not _is_number(v):
            raise _fail(where, f"{name}.{k} must be a number or null (got {v!r})")
    return out


def _schema_version(data: dict[str, Any], where: str) -> int:
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(where, f"'schema_version' must be a positive integer (got {version!r})")
    if version > SCHEMA_VERSION:
        raise _fail(where, f"schema_version {version} is newer than this coinsim reads ({SCHEMA_VERSION}); "
                           "render it with the coinsim that wrote it")
    return version


def _migrate_v1(out: dict[str, Any]) -> None:
    """Rename version-1 fields to version 2 in place (units by name: see the module docstring)."""
    out["policies"] = {n: _migrate_policy_v1(p) if isinstance(p, dict) else p
                       for n, p in (out.get("policies") or {}).items()}
    for method, c in (out.get("coding") or {}).items():
        if isinstance(c, dict):
            out["coding"][method] = {_V1_CODING_KEYS.get(k, k): v for k, v in c.items()}
    for key in ("experts", "multi_decode"):
        if isinstance(out.get(key), list):
            out[key] = [{_V1_ROW_KEYS.get(k, k): v for k, v in row.items()} if isinstance(row, dict) else row
                        for row in out[key]]
    out["schema_version"] = SCHEMA_VERSION
    out["migrated_from"] = 1


def check_summary(data: Any, where: str = "summary.json") -> dict[str, Any]:
    """Validate the parts of summary.json the report relies on; return it in version 2, policies flattened."""
    if not isinstance(data, dict):
        raise _fail(where, f"top level must be a JSON object (got {type(data).__name__})")
    if not isinstance(data.get("scenario"), str):
        raise _fail(where, "missing or non-string 'scenario'")
    out = dict(data)
    for key in ("policies", "coding", "profile", "versions"):
        if out.get(key) is not None and not isinstance(out[key], dict):
            raise _fail(where, f"'{key}' must be an object (got {type(out[key]).__name__})")
    if _schema_version(out, where) == 1:
        _migrate_v1(out)
    if isinstance(out.get("coding"), dict):  # encode time was `encode_seconds` before issue 11's rename
        out["coding"] = {m: {("encode_s" if k == "encode_seconds" else k): v for k, v in c.items()
                             if not (k == "encode_seconds" and "encode_s" in c)} if isinstance(c, dict) else c
                         for m, c in out["coding"].items()}
    out["policies"] = {str(k): _flatten_policy(f"policies.{k}", v, where)
                       for k, v in (out.get("policies") or {}).items()}
    points = out.get("points")
    if points is not None:
        if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
            raise _fail(where, "'points' must be a list of objects")
        checked = []
        for i, p in enumerate(points):
            pol = p.get("policies")
            if not isinstance(pol, dict):
                raise _fail(where, f"points[{i}].policies must be an object")
            index = p.get("point", i)
            if not isinstance(index, int) or isinstance(index, bool):
                raise _fail(where, f"points[{i}].point must be an integer (got {index!r})")
            checked.append({**p, "point": index,
                            "policies": {str(k): _flatten_policy(f"points[{i}].policies.{k}", v, where)
                                         for k, v in pol.items()}})
        out["points"] = checked
    hp = out.get("headline_point")
    if hp is not None and (not isinstance(hp, int) or isinstance(hp, bool)):
        raise _fail(where, f"'headline_point' must be a point index (got {hp!r})")
    if hp is not None and out.get("points") and hp not in {p["point"] for p in out["points"]}:
        raise _fail(where, f"'headline_point' {hp} is not one of the points")
    for method, c in (out.get("coding") or {}).items():
        if not isinstance(c, dict):
            raise _fail(where, f"coding.{method} must be an object (got {type(c).__name__})")
        for k in ("nda_pct", "decoded_acc_pct", "expert_acc_pct"):
            if c.get(k) is not None and not isinstance(c[k], dict):
                raise _fail(where, f"coding.{method}.{k} must be an object of expert -> number")
            if any(not _is_number(v) for v in (c.get(k) or {}).values()):
                raise _fail(where, f"coding.{method}.{k} must map experts to numbers")
        for k in ("nda_avg_pct", "encode_s"):
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


REPORT_QUERY_COLUMNS = ("point", "policy", "warmup", "model", "model_name", "arrival_ms", "finish_ms", "latency_ms",
                        "answered_by")  # what the report's figures read of queries.parquet


def report_query_columns(names: Iterable[str]) -> list[str]:
    """The columns of queries.parquet (given its column names) the report reads: `model` only where there is no
    `model_name` to label the traffic by."""
    names = set(names)
    return [c for c in REPORT_QUERY_COLUMNS if c in names and not (c == "model" and "model_name" in names)]


def _read_table(path: Path, required: tuple[str, ...], only: Callable[[Iterable[str]], list[str]] | None = None,
                point: int | None = None) -> pd.DataFrame | None:
    """A result table, checked for its required columns; `only`: read just the columns of a parquet file it
    picks from the file's own, and `point`: just that sweep point's rows, so that a run of many millions of
    queries is not read whole."""
    if not path.exists():
        return None
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path)
        elif only is None:
            df = pd.read_parquet(path)
        else:
            import pyarrow.parquet as pq

            names = set(pq.read_schema(path).names)
            rows = [("point", "==", point)] if point is not None and "point" in names else None
            table = pq.read_table(path, columns=only(names), filters=rows)
            if "point" in table.column_names:  # one point, or a few: int32 is room enough
                table = table.set_column(table.column_names.index("point"), "point",
                                         table.column("point").cast("int32"))
            df = table.to_pandas(self_destruct=True, split_blocks=True)  # arrow's buffers freed as converted
            del table
    except Exception as exc:  # pyarrow/pandas raise many types; the user needs the file name, not the type
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(str(path), f"cannot be read ({first})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _fail(str(path), f"missing column(s) {', '.join(missing)}")
    return df


def _migrate_sweep_v1(sweep: pd.DataFrame) -> pd.DataFrame:
    renames, scale = {}, {}
    for old, (new, factor) in _V1_POLICY_KEYS.items():
        if old in sweep.columns and new not in sweep.columns and new not in renames.values():
            renames[old] = new
            scale[new] = factor
    out = sweep.drop(columns=[c for c in _V1_POLICY_KEYS if c in sweep.columns and c not in renames])
    out = out.rename(columns=renames)
    for col, factor in scale.items():
        if factor != 1.0:
            out[col] = pd.to_numeric(out[col], errors="coerce") * factor
    if "n_queries" in out.columns:  # version 1: the measured count
        out = out.drop(columns=["n_queries"]) if "n_measured" in out.columns else \
            out.rename(columns={"n_queries": "n_measured"})
    return out


def _points_from_sweep(sweep: pd.DataFrame, axes: list[str]) -> list[dict[str, Any]]:
    """Version 1 kept only the last point in summary.json; sweep.parquet has them all."""
    points = []
    stat_cols = [c for c in sweep.columns if c not in {"point", "policy", *axes}]
    for index, rows in sweep.groupby("point", sort=True):
        first = rows.iloc[0]
        policies = {}
        for rec in rows.to_dict("records"):
            policies[str(rec["policy"])] = {k: _plain(rec[k]) for k in stat_cols}
        points.append({"point": int(index), **{a: _plain(first[a]) for a in axes if a in rows.columns},
                       "policies": policies})
    return points


def _plain(v: Any) -> Any:
    """numpy scalars and NaN from a table as the JSON-like values the summary holds."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def load_result(result_dir: Path | str) -> ResultData:
    """Load a result folder; raise ReportError (one line) if it cannot be rendered."""
    path = Path(result_dir)
    if not path.is_dir():
        raise ReportError(f"reports: {path}: not a result folder (no such directory)")
    spath = path / SUMMARY
    if not spath.is_file():
        raise ReportError(f"reports: {path}: no summary.json (is this a result folder?)")
    try:
        raw = json.loads(spath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _fail(str(spath), f"not valid JSON ({msg})") from exc
    except RecursionError:  # json recurses once per level of nesting
        raise _fail(str(spath), "not valid JSON (nested too deeply to read)") from None
    if isinstance(raw, dict) and raw.get("kind") == COMPARE_KIND:
        raise ReportError(f"reports: {path}: a comparison of two testbed runs (its tables: fidelity.csv, "
                          f"ranking.csv); render the runs themselves, {raw.get('reference')} and {raw.get('other')}")
    legacy = isinstance(raw, dict) and "schema_version" not in raw
    data = ResultData(path=path, summary=check_summary(raw, str(spath)))
    toml = path / SCENARIO
    if toml.is_file():
        data.scenario_toml = toml.read_text(encoding="utf-8", errors="replace")
    headline = raw.get("headline_point") if not legacy else None  # the figures drawn from queries show it alone
    data.queries = _read_table(path / QUERIES, ("policy", "latency_ms"), report_query_columns,
                               headline if isinstance(headline, int) and not isinstance(headline, bool) else None)
    data.sweep = _read_table(path / SWEEP, ("point", "policy"))
    data.nda = _read_table(path / NDA, ("method", "expert"))
    if data.nda is not None:
        data.nda = data.nda.rename(columns={k: v for k, v in _NDA_CSV_LEGACY.items() if v not in data.nda.columns})
        if "nda_pct" not in data.nda.columns:
            raise _fail(str(path / NDA), "missing column nda_pct (or nda, before the rename)")
    if data.queries is not None:
        q = data.queries
        if isinstance(q["policy"].dtype, pd.CategoricalDtype):  # names as str, without a string object per row
            q["policy"] = q["policy"].cat.rename_categories([str(c) for c in q["policy"].cat.categories])
        else:
            q["policy"] = q["policy"].astype(str)
        if "point" not in q.columns:
            q["point"] = 0
        if "warmup" in q.columns:
            q["warmup"] = q["warmup"].astype(bool)
    s = data.summary
    if data.sweep is not None:
        data.sweep["policy"] = data.sweep["policy"].astype(str)
        if legacy:
            data.sweep = _migrate_sweep_v1(data.sweep)
        if not s.get("points"):
            axes = [a for a in (s.get("sweep_axes") or [s.get("sweep_axis")]) if a in data.sweep.columns]
            s["points"] = _points_from_sweep(data.sweep, axes)
    if not s.get("points") and s.get("policies"):
        s["points"] = [{"point": 0, "policies": s["policies"]}]
    if legacy:
        dropped = _drop_negative_latency_bounds(data)
        data.notes.append("This folder was written by an older coinsim (summary.json without schema_version): "
                          "names and units were converted on reading, and its latency intervals come from the "
                          "old method" + (f"; {dropped} lower bound(s) below zero are not shown." if dropped
                                          else "."))
    if s.get("headline_point") is None and s.get("points"):
        s["headline_point"] = max(p["point"] for p in s["points"])  # version 1: the last point
    if s.get("allow_unstable"):
        data.notes.append("This run was allowed a load at or above the experts' capacity (allow_unstable = true): "
                          "queues grow for as long as the run lasts, so its latencies describe a transient of this "
                          "length, not a steady state.")
    return data


def _drop_negative_latency_bounds(data: ResultData) -> int:
    """Old folders' linear intervals could reach below zero, which no latency can; such a bound is unknown."""
    count = 0  # counted over the points (the headline repeats one of them)
    for policies, counted in [*((p["policies"], True) for p in data.points), (data.policies, False)]:
        for p in policies.values():
            for k in [k for k in p if k.endswith("_ms_lo")]:
                if finite(p[k]) and p[k] < 0:
                    p[k] = None
                    count += counted
    if data.sweep is not None:
        for k in [c for c in data.sweep.columns if c.endswith("_ms_lo")]:
            values = pd.to_numeric(data.sweep[k], errors="coerce")
            data.sweep[k] = values.where(~(values < 0))
    return count


def main_point(data: ResultData) -> int | None:
    """The point the headline numbers describe (summary.json's `headline_point`)."""
    if data.headline_point is not None:
        return data.headline_point
    for df in (data.sweep, data.queries):
        if df is not None and "point" in df.columns and len(df):
            return int(df["point"].max())
    return None


def finite(v: Any) -> bool:
    """True for a real, finite number (None, NaN, bools and strings are 'not available')."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def served_profile_text(source: Any) -> str | None:
    """Where a run's served-pass profile came from, in words (summary.json `latency_model.served_profile`; None
    when the summary does not say)."""
    if not isinstance(source, Mapping) or "source" not in source:
        return None
    kind = source["source"]
    if kind == "measured":
        why = source.get("why")
        text = "measured in this run"
        if why not in (None, "fresh", "none cached"):
            text += f" (the cached one was not taken: {why})"
        return text + ("" if source.get("cached", True) else "; not cached: other processes were busy meanwhile")
    if kind == "cached":
        changes = [float(v) for v in (source.get("probe_change_pct") or {}).values() if finite(v)]
        if not changes:
            return "taken from the cache, not probed"
        return (f"taken from the cache, confirmed by a probe (its networks' mean lone served pass "
                f"{min(changes):+.1f} to {max(changes):+.1f} % from the profile's)")
    if kind == "replayed":
        return f"replayed from {source.get('from', '?')}"
    if kind == "resumed":
        return "the interrupted run's, resumed"
    return str(kind)
