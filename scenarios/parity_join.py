"""Parity networks for a scenario's parity policies, and the judging of their decoded answers on them.

The simulator decides *which* queries a parity server decoded and from which group (`parity_others` in the
records); whether such an answer is right depends on the parity network's real output on that group's encoded
input, which no table made before the run holds. So after a point is simulated (in any worker, without torch),
the runner passes every decoded group's summed input through its expert's parity network here, decodes the
missing output (parity output less the companions' own outputs) and judges it against the label and against what
the expert itself answers; the parity policies' accuracy in the point's summary is then computed again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scenarios.points import AnswerTables, _policy_summary, paired_accuracy_difference
from scenarios.schema import Scenario
from sim import SimConfig
from sim.config import PolicySpec


def parity_ks(policies: list[PolicySpec]) -> list[int]:
    """The group sizes the scenario's parity policies use (one parity network per expert for each)."""
    return sorted({int(p.k) for p in policies if p.kind == "parity" and p.k is not None})


def train_parity_networks(scenario: Scenario, zoo: Any, quiet: bool = False
                          ) -> tuple[dict[tuple[int, int], Any], list[dict[str, Any]]]:
    """A parity network per (k, expert) for the scenario's parity policies, trained on the expert's training pool
    (sum encoder), and one row per network: its cost and its degraded-mode accuracy on the expert's test set."""
    import copy

    from coin.parity import degraded_accuracy, train_parity
    from models.progress import say

    networks: dict[tuple[int, int], Any] = {}
    rows: list[dict[str, Any]] = []
    spec = scenario.coding
    for k in parity_ks(list(scenario.sim.policies)):
        for i, expert in enumerate(zoo.experts):
            say(f"training the k = {k} parity network of {expert.name} ({spec.parity_epochs} epochs from "
                f"{spec.parity_init})", not quiet)
            init = copy.deepcopy(zoo.base) if spec.parity_init == "base" else None
            result = train_parity(expert.model, expert.train_x, k, "sum", init=init, init_name=spec.parity_init,
                                  epochs=spec.parity_epochs, seed=scenario.seed)
            scored = degraded_accuracy(result.model, expert.model, expert.test_x, expert.test_y, k, "sum",
                                       seed=scenario.seed)
            networks[(k, i)] = result.model
            rows.append({"k": k, "expert": expert.name, "encoder": "sum", "init": spec.parity_init,
                         "epochs": spec.parity_epochs, "train_samples": int(len(expert.train_x)),
                         "train_s": result.seconds, "degraded_accuracy_pct": scored["degraded_accuracy_pct"],
                         "agreement_pct": scored["agreement_pct"],
                         "expert_accuracy_pct": scored["expert_accuracy_pct"]})
    return networks, rows


def decoded_outputs(parity: Any, inputs: Any, members: np.ndarray, others_out: np.ndarray) -> np.ndarray:
    """Decoded outputs (G, C): each group's parity output on the sum of its members' inputs (members: (G, m)
    indices into `inputs`, -1 for an empty place of a partial group) less its companions' own outputs summed
    (others_out: (G, C))."""
    import torch

    index = torch.as_tensor(members)
    x = inputs[index.clamp(min=0)] * (index >= 0).reshape(*index.shape, *([1] * (inputs.ndim - 1)))
    device = next(parity.parameters()).device  # the network's device (CUDA when the run used it)
    with torch.no_grad():
        out = parity.eval()(x.sum(1).to(device)).double().cpu().numpy()
    return out - others_out


def judge_decoded(records: pd.DataFrame, k: int, answers: AnswerTables, parity: dict[tuple[int, int], Any],
                  test_inputs: list[Any]) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """One parity policy's records (query_id, model, sample_id, parity_others): for each parity-decoded query, its
    decoded answer from the group's parity network and the companions' own outputs (the answer tables'), judged
    against the label and against the expert's own answer. Returns (index of those rows, correct, agrees)."""
    decoded = records[records["parity_others"].fillna("").astype(str) != ""]
    correct = np.zeros(len(decoded), bool)
    agrees = np.zeros(len(decoded), bool)
    if not len(decoded):
        return decoded.index, correct, agrees
    sample_of = dict(zip(records["query_id"].to_numpy(), records["sample_id"].to_numpy(), strict=True))
    where = pd.Series(np.arange(len(decoded)), index=decoded.index)
    for model, rows in decoded.groupby("model"):
        m = int(model)
        companions = [[int(q) for q in text.split(",")] for text in rows["parity_others"]]
        width = 1 + max(len(c) for c in companions)
        members = np.full((len(rows), width), -1, np.int64)  # sample ids in the expert's test set
        others_out = np.zeros((len(rows), answers.expert_outs.shape[-1]))
        for g, (own, comp) in enumerate(zip(rows["sample_id"].to_numpy(), companions, strict=True)):
            samples = [int(own), *(int(sample_of[q]) for q in comp)]
            members[g, :len(samples)] = samples
            others_out[g] = answers.expert_outs[m, answers.offsets[m] + np.asarray(samples[1:])].sum(0)
        out = decoded_outputs(parity[(k, m)], test_inputs[m], members, others_out)
        table_rows = answers.offsets[m] + rows["sample_id"].to_numpy().astype(np.int64)
        guess = out.argmax(-1)
        at = where[rows.index].to_numpy()
        correct[at] = guess == answers.labels[table_rows]
        agrees[at] = guess == answers.expert_outs[m, table_rows].argmax(-1)
    return decoded.index, correct, agrees


def judge_parity_answers(records: pd.DataFrame, summary: dict[str, Any], config: SimConfig, answers: AnswerTables,
                         parity: dict[tuple[int, int], Any], test_inputs: list[Any]
                         ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One point's records and summary with every parity-decoded answer judged on its parity network (see the
    module docstring); points without such answers come back unchanged."""
    if "parity_others" not in records or "correct" not in records:
        return records, summary
    records = records.copy()
    summary = dict(summary)
    for spec in config.policies:
        if spec.kind != "parity":
            continue
        index, correct, agrees = judge_decoded(records[records["policy"] == spec.name], int(spec.k), answers, parity,
                                               test_inputs)
        if not len(index):
            continue
        records.loc[index, "correct"] = correct
        records.loc[index, "agrees_with_expert"] = agrees
        summary[spec.name] = {**summary[spec.name], **_policy_summary(records[records["policy"] == spec.name],
                                                                      summary[spec.name])}
    baseline = next((p.name for p in config.policies if p.kind == "uncoded"), None)
    for name, diff in paired_accuracy_difference(records, baseline).items():
        if config.policy(name).kind == "parity":
            summary[name] = {**summary[name], **diff}
    return records, summary
