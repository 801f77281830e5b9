"""`coinsim testbed --compare FOLDER OTHER`: how closely the machine reproduces itself.

A served run is judged by limits on the error of the simulator (`testbed_run.LIMITS_PCT`), but the measured side
moves too: the same scenario served twice on a shared machine gives latencies that differ between the runs. Here
a second real run of the same points and policies (OTHER) takes the simulator's place and is judged against a
first (FOLDER) exactly as the simulator is — the same pooled values, bootstrap intervals, verdicts and p99
ranking. What OTHER scores is the best any model of the machine can expect to score when its prediction is made
at another time than the run it is judged on; FOLDER's own `predicted` variant is shown beside it.

Nothing is served or simulated: the two folders' `testbed.parquet` are read, points matched by their sweep
coordinates, and FOLDER/compared-<timestamp>/ gets `fidelity.csv` (service "other run"), `ranking.csv` and
`summary.json` (both runs' arrival rates per point, whether they replayed the same draws).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import atomic
from resultschema import COMPARE_KIND, COMPARED_PREFIX, OTHER_RUN, SUMMARY
from scenarios.schema import ScenarioError
from scenarios.testbed_run import (
    METRICS,
    VERDICTS,
    fidelity_rows,
    fidelity_summary,
    ranking_frame,
    ranking_summary,
)

RECORDS = "testbed.parquet"
NEEDED_COLUMNS = ("point", "repeat", "policy", "query_id", "model", "arrival_ms", "latency_ms", "warmup")


def read_run(folder: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A finished testbed run's per-query records and its summary.json (empty when it has none). ScenarioError,
    one line, when FOLDER holds no readable records."""
    path = folder / RECORDS
    if not path.is_file():
        raise ScenarioError(f"{folder}: not a served testbed run (no {RECORDS})")
    try:
        records = pd.read_parquet(path)
        summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).is_file() else {}
    except (OSError, ValueError) as error:
        raise ScenarioError(f"{folder}: cannot read it ({str(error).strip().splitlines()[0]})") from None
    if missing := [c for c in NEEDED_COLUMNS if c not in records.columns]:
        raise ScenarioError(f"{folder}/{RECORDS}: no column {', '.join(missing)} (not a testbed run's records)")
    if records.empty:
        raise ScenarioError(f"{folder}/{RECORDS}: no queries")
    return records, summary


def coordinate_columns(records: pd.DataFrame) -> list[str]:
    """The sweep coordinates of a run's points: the records' columns between `point` and `repeat`."""
    columns = list(records.columns)
    return columns[columns.index("point") + 1:columns.index("repeat")]


def point_coordinates(records: pd.DataFrame, columns: list[str]) -> dict[int, tuple[Any, ...]]:
    """Each point's sweep coordinates (as plain Python values)."""
    first = records.drop_duplicates("point")
    return {int(row["point"]): tuple(np.asarray(row[columns]).tolist()) for _, row in first.iterrows()}


def first_run(records: pd.DataFrame) -> pd.DataFrame:
    """A point's first served run: its first policy's first repeat (every run of a point replays the same draws)."""
    return records[(records["policy"] == records["policy"].iloc[0]) & (records["repeat"] == records["repeat"].min())]


def arrival_rate_per_ms(records: pd.DataFrame) -> float:
    """The arrival rate a point was served at (queries per ms): over its first run's queries, warm-up included,
    (n − 1) / (last arrival − first)."""
    arrival = np.sort(first_run(records)["arrival_ms"].to_numpy(float))
    span = float(arrival[-1] - arrival[0]) if len(arrival) > 1 else 0.0
    return (len(arrival) - 1) / span if span > 0 else float("nan")


def same_draws(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two runs of a point replayed the same draws: their first runs asked the same models in the same
    order (the arrival times scale with the served rate, which each run sets from its own profile)."""
    def models(records: pd.DataFrame) -> np.ndarray:
        return first_run(records).sort_values("query_id")["model"].to_numpy()

    return bool(np.array_equal(models(a), models(b)))


def match_points(folder: Path, reference: pd.DataFrame, other_folder: Path, other: pd.DataFrame) -> dict[int, int]:
    """FOLDER's point index -> OTHER's point with the same sweep coordinates; ScenarioError naming the first
    point or policy of FOLDER that OTHER did not serve."""
    columns = coordinate_columns(reference)
    if coordinate_columns(other) != columns:
        raise ScenarioError(f"{other_folder} sweeps {coordinate_columns(other) or 'nothing'}, {folder} "
                            f"{columns or 'nothing'}: not runs of the same points")
    theirs = {coords: k for k, coords in point_coordinates(other, columns).items()}
    matched = {}
    for k, coords in point_coordinates(reference, columns).items():
        named = ", ".join(f"{c}={v}" for c, v in zip(columns, coords, strict=True)) or f"point {k}"
        if coords not in theirs:
            raise ScenarioError(f"{other_folder} did not serve {named} (served in {folder})")
        j = theirs[coords]
        mine = set(reference.loc[reference["point"] == k, "policy"])
        if lacking := sorted(mine - set(other.loc[other["point"] == j, "policy"])):
            raise ScenarioError(f"{other_folder} did not serve {', '.join(lacking)} at {named}")
        matched[k] = j
    return matched


def compare_runs(folder: Path, other_folder: Path) -> Path:
    """Judge run OTHER's measured latencies as a prediction of run FOLDER's (module docstring); returns the
    folder written, FOLDER/compared-<timestamp>/. ScenarioError, before anything is written, when the two are not
    runs of the same points and policies (OTHER may hold more) or are the same run."""
    if folder.resolve() == other_folder.resolve():
        raise ScenarioError(f"{folder}: compare a run with another run, not with itself")
    reference, summary = read_run(folder)
    other, other_summary = read_run(other_folder)
    matched = match_points(folder, reference, other_folder, other)
    columns = coordinate_columns(reference)
    coordinates = point_coordinates(reference, columns)
    seed = int(summary.get("seed", 0))
    rows: list[dict[str, Any]] = []
    points = []
    for k, j in matched.items():
        mine, theirs = reference[reference["point"] == k], other[other["point"] == j]
        coords = dict(zip(columns, coordinates[k], strict=True))
        rows += fidelity_rows(k, coords, OTHER_RUN, theirs, mine, seed=seed)
        rate, other_rate = arrival_rate_per_ms(mine), arrival_rate_per_ms(theirs)
        points.append({"point": k, **coords, "other_point": j, "rate_per_ms": rate, "other_rate_per_ms": other_rate,
                       "rate_diff_pct": 100.0 * (other_rate - rate) / rate, "same_draws": same_draws(mine, theirs)})
    table = pd.DataFrame(rows)
    ranking = ranking_frame(table)
    out = {"kind": COMPARE_KIND, "reference": str(folder), "other": str(other_folder),
           "reference_scenario": summary.get("scenario"), "other_scenario": other_summary.get("scenario"),
           "points": points, "fidelity_summary": fidelity_summary(table), "ranking": ranking_summary(ranking),
           "reference_headline": headline_beside(folder, summary)}

    def write(tmp: Path) -> None:
        table.to_csv(tmp / "fidelity.csv", index=False, float_format="%.6g")
        ranking.to_csv(tmp / "ranking.csv", index=False, float_format="%.6g")
        atomic.write_text(tmp / SUMMARY, json.dumps(out, indent=1, default=float) + "\n")

    return atomic.publish_folder(folder / (COMPARED_PREFIX + datetime.now().strftime("%Y%m%d-%H%M%S-%f")), write)


def headline_beside(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """FOLDER's own headline variant's verdict counts and ranking (from its summary.json), to set beside the other
    run's; empty when the folder has none."""
    head = summary.get("headline_service")
    verdicts = (summary.get("fidelity_summary") or {}).get(head or "", {}).get("verdicts")
    if not head or not verdicts:
        return {}
    return {"service": head, "verdicts": verdicts, "ranking": (summary.get("ranking") or {}).get(head, {})}


def not_off_text(verdicts: dict[str, dict[str, int]], ranking: dict[str, Any]) -> str:
    """'24 / 23 / 24 / 23 / 22 of 25, ranking 20 of 26': cells not off per metric (METRICS order) and the
    p99 ranking's agreements."""
    counts = [sum(v[name] for name in VERDICTS[:2]) for m, v in verdicts.items() if m in METRICS]
    cells = sum(verdicts[next(iter(verdicts))].values()) if verdicts else 0
    text = " / ".join(str(c) for c in counts) + f" of {cells}"
    if ranking:
        text += f", ranking {ranking['agree']} of {ranking['distinguishable']}"
    return text


def comparison_text(compared: Path) -> str:
    """The lines the CLI prints after the table: the two runs' rates, and the other run's score beside the
    reference's own headline variant."""
    summary = json.loads((compared / SUMMARY).read_text())
    lines = []
    for p in summary["points"]:
        lines.append(f"point {p['point']}: served at {p['rate_per_ms']:.4g} queries/ms, the other run at "
                     f"{p['other_rate_per_ms']:.4g} ({p['rate_diff_pct']:+.1f} %)"
                     + ("" if p["same_draws"] else "; other draws (another seed)"))
    metrics = " / ".join(METRICS)
    got = summary["fidelity_summary"].get(OTHER_RUN, {}).get("verdicts", {})
    lines.append(f"cells not off ({metrics}): the other run {not_off_text(got, summary['ranking'].get(OTHER_RUN, {}))}")
    if head := summary.get("reference_headline"):
        lines.append(f"  this run's {head['service']} variant {not_off_text(head['verdicts'], head['ranking'])} "
                     "(every point and policy it served)")
    lines.append(f"(`coinsim report {compared.parent}` sets it beside that run's headline in its report)")
    return "\n".join(lines)
