"""One sweep point: simulate every policy and join each query with the correctness of its answer.

Kept free of torch (numpy, pandas and sim only) so that worker processes and Dask workers start fast; the
network outputs arrive as plain arrays in `AnswerTables`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import atomic
from policies.codes import HOW, mask_servers
from policies.rules import coded_rows as rules_coded_rows
from sim import SimConfig, compare_loads, simulate_each


def solve_missing(expert_outs: np.ndarray, coded_outs: np.ndarray, matrix: np.ndarray, missing: list[int],
                  coded_back: list[int]) -> np.ndarray:
    """Least-squares solve of B[C, M] f_M = f_C − B[C, A] f_A for the missing experts' outputs (|M|, S, K).

    A missing expert that none of the coded outputs back covers (weight 0 in each of their rows: it belongs to
    another code group) is not an unknown of this system; its rows of the result are NaN.
    The numpy twin of `coin.multicode.decode_missing`, here so workers need not import torch.
    """
    covered = [j for j in missing if np.any(matrix[coded_back, j] != 0)]
    if len(coded_back) < len(covered):
        raise ValueError(f"{len(covered)} missing outputs but only {len(coded_back)} coded outputs came back")
    present = [j for j in range(matrix.shape[1]) if j not in missing]
    rhs = coded_outs[coded_back] - np.einsum("cj,jsk->csk", matrix[np.ix_(coded_back, present)], expert_outs[present])
    c, s, k = rhs.shape
    out = np.full((len(missing), s, k), np.nan)
    if covered:
        solution, *_ = np.linalg.lstsq(matrix[np.ix_(coded_back, covered)], rhs.reshape(c, s * k), rcond=None)
        out[[missing.index(j) for j in covered]] = solution.reshape(len(covered), s, k)
    return out


@dataclass
class AnswerTables:
    """What every network answered on every test input a query may draw, as plain arrays.

    Rows are the union of the experts' test partitions (expert i's samples at offsets[i]:offsets[i+1]); a routed
    query for expert i with sample id s reads row offsets[i] + s, an ensemble query reads row s. Coded model k
    approximates Σⱼ matrix[k, j] fⱼ; any answer that was decoded is decoded here from exactly the outputs
    that came back, so its correctness is that of the real decoded output. Ensemble answers are the argmax of
    the summed softmax of the N outputs. `backup_outs` are the generalist network's own outputs (the network
    a backup server hosts), used undecoded: a backup answer to a query routed to expert i is their argmax over
    the classes of expert i's task (`task_classes[i]`; every class when None) — a routed query carries its task,
    as a multi-task model's head would use it — and to an ensemble query their argmax over every class.
    """

    labels: np.ndarray  # (S,)
    offsets: np.ndarray  # (N + 1,)
    expert_outs: np.ndarray  # (N, S, K)
    coded_outs: np.ndarray  # (r, S, K)
    matrix: np.ndarray  # (r, N)
    backup_outs: np.ndarray | None = None  # (S, K); None only where no backup policy is joined
    task_classes: np.ndarray | None = None  # (N, K) bool: the classes of each expert's task; None: every class

    def __post_init__(self) -> None:
        want = self.expert_outs.shape[1:]
        if self.backup_outs is not None and self.backup_outs.shape != want:
            raise ValueError(f"backup_outs has shape {self.backup_outs.shape}, expected {want} (rows, classes)")
        want = (self.expert_outs.shape[0], self.expert_outs.shape[2])
        if self.task_classes is not None and (self.task_classes.shape != want or not self.task_classes.any(1).all()):
            raise ValueError(f"task_classes must be a ({want[0]}, {want[1]}) mask with a class in every row")

    def backup_answers(self, model: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The generalist's answer on each row: argmax over the routed expert's task classes (model >= 0) or over
        every class (an ensemble query, model < 0)."""
        if self.backup_outs is None:
            raise ValueError("backup answers to join but the answer tables hold no generalist outputs (backup_outs)")
        return self.generalist_answers(self.backup_outs[rows], model)

    def generalist_answers(self, outs: np.ndarray, model: np.ndarray) -> np.ndarray:
        """A backup's answer from the generalist's outputs `outs` (queries, K) — the tabulated ones, or those a
        real backup server sent: argmax over the routed expert's task classes, or every class (model < 0)."""
        if self.task_classes is None:
            return outs.argmax(-1)
        allowed = np.where((model >= 0)[:, None], self.task_classes[np.maximum(model, 0)], True)
        return np.where(allowed, outs, -np.inf).argmax(-1)

    @property
    def pools(self) -> list[int]:
        return np.diff(self.offsets).astype(int).tolist()

    @property
    def n_experts(self) -> int:
        return int(self.expert_outs.shape[0])

    def decoded(self, missing: list[int], coded_back: list[int], rows: np.ndarray) -> np.ndarray:
        """Decoded outputs (|missing|, len(rows), K) of the missing experts on the given rows."""
        return solve_missing(self.expert_outs[:, rows], self.coded_outs[:, rows], self.matrix, missing, coded_back)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def coded_rows(config: SimConfig) -> list[int]:
    """The coded model (row of the coding matrix, r per code group) each coded server hosts, in server order (see
    `policies.rules.coded_rows`: with cells, every cell of a group repeats its r models)."""
    return rules_coded_rows(config.n_extra, len(config.code_groups), config.deployment.cells)


def join_answers(records: pd.DataFrame, answers: AnswerTables, n_experts: int,
                 hosts: list[str] | None = None, rows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated query: (was what the system answered right, does it agree with what the expert itself —
    or, for an ensemble query, every expert itself — would have answered).

    `hosts[s]` says what server s runs ('0'..'N-1' an expert or its replica, 'coded', 'spare', 'backup'); the k-th
    coded server runs coded model k. Only outputs of servers in a query's answer mask are used for decoding. A
    direct, replica or hedge answer is the expert's own output, so it agrees by construction; a decoded one may
    not, nor may a backup answer, which is the argmax of the generalist's own output on the query's input (for
    an ensemble query too: the generalist answers the whole query).
    """
    r = answers.matrix.shape[0]
    hosts = hosts or [str(i) for i in range(n_experts)] + ["coded"] * r
    coded = [s for s, h in enumerate(hosts) if h == "coded"]
    rows = list(range(len(coded))) if rows is None else rows  # `rows[k]`: the coded model the k-th coded server runs
    coded_rank = {s: rows[k] for k, s in enumerate(coded)}
    model = records["model"].to_numpy()
    sample = records["sample_id"].to_numpy().astype(np.int64)
    was_decoded = (records["answered_by"] == "decoded").to_numpy()
    masks = records["answer_mask"].to_numpy()  # int64, or Python ints beyond 63 servers
    rows = np.where(model >= 0, answers.offsets[np.maximum(model, 0)] + sample, sample)
    labels = answers.labels[rows]
    own = np.zeros(len(records), dtype=np.int64)  # what the expert(s) alone would have answered
    routed = model >= 0
    own[routed] = answers.expert_outs[model[routed], rows[routed]].argmax(-1)
    if (~routed).any():
        own[~routed] = _softmax(answers.expert_outs[:, rows[~routed]]).sum(0).argmax(-1)
    pred = own.copy()
    by_backup = (records["answered_by"] == "backup").to_numpy()
    if by_backup.any():
        pred[by_backup] = answers.backup_answers(model[by_backup], rows[by_backup])
    # decoded by a parity server: judged after the run on the parity network (scenarios.parity_join), wrong till then
    by_parity = (records["parity_others"].fillna("").astype(str) != "").to_numpy() if "parity_others" in records \
        else np.zeros(len(records), bool)
    pred[by_parity] = -1
    decoded_groups = pd.DataFrame({"model": model, "mask": masks})[(was_decoded | (model < 0)) & ~by_backup
                                                                    & ~by_parity]
    for (m, mask), group in decoded_groups.groupby(["model", "mask"]):
        index = group.index.to_numpy()
        back = mask_servers(mask)
        experts_back = {int(hosts[b]) for b in back if hosts[b].isdigit()}
        missing = [j for j in range(n_experts) if j not in experts_back]
        coded_back = [coded_rank[b] for b in back if b in coded_rank]
        if m >= 0:
            dec = answers.decoded(missing, coded_back, rows[index])
            pred[index] = dec[missing.index(m)].argmax(-1)
        else:
            outs = answers.expert_outs[:, rows[index]].copy()
            if missing:
                outs[missing] = answers.decoded(missing, coded_back, rows[index])
                if np.isnan(outs[missing]).any():
                    raise ValueError(f"an ensemble answer from servers {back} leaves an expert undecoded")
            pred[index] = _softmax(outs).sum(0).argmax(-1)
    return pred == labels, pred == own


def join_correctness(records: pd.DataFrame, answers: AnswerTables, n_experts: int,
                     hosts: list[str] | None = None, rows: list[int] | None = None) -> np.ndarray:
    """Per simulated query: was what the system answered right? (see `join_answers`)"""
    return join_answers(records, answers, n_experts, hosts, rows)[0]


ANSWER_KINDS = HOW  # direct, replica, hedge, decoded, backup: the simulator's own names
_OWN_ACCURACY = ("decoded", "backup")  # answers that are not the expert's own output get accuracy of their own


def _pct(mask: pd.Series) -> float | None:
    return float(mask.mean() * 100) if len(mask) else None


def _policy_summary(records: pd.DataFrame, sim_summary: dict[str, Any]) -> dict[str, Any]:
    """One policy at one point: the simulator's scalars (already in the result files' names and units: times in
    ms, fractions in percent named *_pct) plus accuracy.

    `n_queries` is the number of simulated queries (warm-up included, as configured), `n_measured` those the
    statistics use; `<how>_pct` is the share of measured queries answered direct / by a replica / by a hedge /
    by decoding / by a generalist backup; `accuracy_pct` the share of measured queries answered right;
    `agreement_pct` the share whose answer is the class the expert itself would have given;
    `decoded_accuracy_pct` / `decoded_agreement_pct` and `backup_accuracy_pct` / `backup_agreement_pct` the same
    over decoded answers alone and over backup answers alone (None when there were none).
    """
    measured = records[~records["warmup"].to_numpy()]
    out = {k: v for k, v in sim_summary.items() if isinstance(v, int | float | str | bool) or v is None}
    out["n_queries"] = int(len(records))
    out["n_measured"] = int(len(measured))
    if "correct" in measured:
        out["accuracy_pct"] = _pct(measured["correct"])
        for how in _OWN_ACCURACY:
            out[f"{how}_accuracy_pct"] = _pct(measured.loc[measured["answered_by"] == how, "correct"])
    if "agrees_with_expert" in measured:
        out["agreement_pct"] = _pct(measured["agrees_with_expert"])
        for how in _OWN_ACCURACY:
            out[f"{how}_agreement_pct"] = _pct(measured.loc[measured["answered_by"] == how, "agrees_with_expert"])
    return out


ROWS_PER_GROUP = 1 << 20  # records written to parquet this many rows at a time


def run_point(config: SimConfig, seed: int, answers: AnswerTables | None, out: Path | None = None
              ) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """Simulate every policy of one sweep point and join each query with the correctness of its answer.

    Returns (records, per-policy summary). With `out`, each policy's records are written to that parquet file
    (atomically, 2^20 rows at a time, without `answer_mask`) as soon as the policy has run and joined, and None is
    returned in their place: the point then holds one policy's records at a time, not every policy's.
    """
    cfg, _draws, runs = simulate_each(config, seed)
    parity = any(p.kind == "parity" for p in cfg.policies)
    rows = coded_rows(cfg)
    summary: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    correct_by: dict[str, np.ndarray] = {}
    frames: list[pd.DataFrame] = []

    def consume(keep: Callable[[pd.DataFrame], None]) -> None:
        for run in runs:
            rec, name = run.records, run.plan.name
            if parity and "parity_others" not in rec:  # one set of columns for every policy of the point
                rec["parity_others"] = pd.Series([None] * len(rec), dtype=object)
            if answers is not None:
                hosts = [str(h) for h in run.servers.sort_values("server")["hosts"]]
                correct, agrees = join_answers(rec, answers, cfg.n_experts, hosts, rows)
                rec["correct"] = correct
                rec["agrees_with_expert"] = agrees
                correct_by[name] = correct[~rec["warmup"].to_numpy()]
            summary[name] = _policy_summary(rec, run.summary)
            kinds[name] = run.plan.kind
            keep(rec)
            del run, rec  # not held while the next policy runs

    if out is None:
        consume(frames.append)
        records: pd.DataFrame | None = pd.concat(frames, ignore_index=True)
    else:
        atomic.write_with(out, lambda path: _write_streaming(path, consume, parity))
        records = None
    compare_loads(summary, kinds)
    if answers is not None:
        baseline = next((p.name for p in cfg.policies if p.kind == "uncoded"), None)
        for policy, diff in paired_differences(correct_by, baseline).items():
            summary[policy].update(diff)
    return records, summary


def _write_streaming(path: Path, consume: Callable[[Callable[[pd.DataFrame], None]], None], parity: bool) -> None:
    """Write every frame `consume` hands over to one parquet file as it comes (one schema: the first frame's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer: pq.ParquetWriter | None = None

    def write(frame: pd.DataFrame) -> None:
        nonlocal writer
        frame = frame.drop(columns=["answer_mask"], errors="ignore")
        for start in range(0, len(frame), ROWS_PER_GROUP):
            chunk = frame.iloc[start:start + ROWS_PER_GROUP]
            if writer is None:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
                if parity:  # a non-parity policy first would type the companions column as all-null
                    at = table.schema.get_field_index("parity_others")
                    table = table.cast(table.schema.set(at, pa.field("parity_others", pa.string())))
                writer = pq.ParquetWriter(path, table.schema)
            else:
                table = pa.Table.from_pandas(chunk, schema=writer.schema, preserve_index=False)
            writer.write_table(table)

    try:
        consume(write)
    finally:
        if writer is not None:
            writer.close()


def paired_differences(correct_by: dict[str, np.ndarray], baseline: str | None) -> dict[str, dict[str, float]]:
    """Per policy: its accuracy minus the baseline policy's on the same measured queries (percentage points,
    `accuracy_vs_uncoded_pct`) and the normal 95 % interval of that paired difference (`*_lo_pct`, `*_hi_pct`).

    `correct_by[policy]` is whether each measured query was answered right, in query order (every policy of a
    point serves the same queries: same arrivals, models and test samples), so the difference is taken query by
    query: only queries answered differently contribute, and its noise is far smaller than that of either
    accuracy alone. Empty without a baseline policy.
    """
    if baseline is None or baseline not in correct_by:
        return {}
    base = correct_by[baseline].astype(float)
    out = {}
    for policy, correct in correct_by.items():
        diff = correct.astype(float) - base
        mean = float(diff.mean())
        half = 1.959964 * float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        out[str(policy)] = {"accuracy_vs_uncoded_pct": mean * 100, "accuracy_vs_uncoded_lo_pct": (mean - half) * 100,
                            "accuracy_vs_uncoded_hi_pct": (mean + half) * 100}
    return out


def paired_accuracy_difference(records: pd.DataFrame, baseline: str | None) -> dict[str, dict[str, float]]:
    """`paired_differences` from a point's records (every policy's rows, with `correct`)."""
    if baseline is None or "correct" not in records:
        return {}
    measured = records[~records["warmup"].to_numpy()]
    wide = measured.pivot(index="query_id", columns="policy", values="correct")
    return paired_differences({str(p): wide[p].to_numpy(bool) for p in wide.columns}, baseline)
