"""Parity networks for a scenario's parity policies, and the judging of their decoded answers on them.

The simulator decides *which* queries a parity server decoded and from which group (`parity_others` in the
records); whether such an answer is right depends on the parity network's real output on that group's encoded
input, which no table made before the run holds. So after a point is simulated (in any worker, without torch),
the runner passes every decoded group's encoded input through its parity network here, decodes the
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

MIXED = -1  # the expert slot of a parity network for groups that mix experts' queries (dispatch = "any")


def parity_key(k: int, dispatch: str, model: int) -> tuple[int, int]:
    """The (k, expert) key of the parity network a group is encoded for: its expert's own (dispatch "expert"), or
    the one network for mixed groups (MIXED)."""
    return (k, model if dispatch == "expert" else MIXED)


def parity_needs(policies: list[PolicySpec], n_experts: int) -> list[tuple[int, int]]:
    """The parity networks the scenario's parity policies use, as sorted (k, expert | MIXED) keys."""
    keys: set[tuple[int, int]] = set()
    for p in policies:
        if p.kind == "parity" and p.k is not None:
            keys |= {parity_key(int(p.k), p.dispatch, i) for i in range(n_experts)}
    return sorted(keys)


def train_parity_networks(scenario: Scenario, zoo: Any, quiet: bool = False
                          ) -> tuple[dict[tuple[int, int], Any], list[dict[str, Any]]]:
    """The parity networks the scenario's parity policies use (`parity_needs`), each trained on its training pool
    with the scenario's encoder — an expert's own pool, or for mixed groups every expert's pool with each query's
    own expert's output as its target — and one row per network: its cost and its degraded-mode accuracy on the
    matching test set."""
    import copy

    import torch

    from coin.parity import degraded_accuracy, train_parity
    from models.progress import say

    networks: dict[tuple[int, int], Any] = {}
    rows: list[dict[str, Any]] = []
    spec = scenario.coding
    encoder = spec.parity_encoder

    def own_outputs(xs: list[Any]) -> Any:  # each expert's outputs on its own queries, in pool order
        with torch.no_grad():
            return torch.cat([torch.cat([e.model.eval()(c) for c in x.split(1024)])
                              for e, x in zip(zoo.experts, xs, strict=True)])

    for k, i in parity_needs(list(scenario.sim.policies), len(zoo.experts)):
        mixed = i == MIXED
        expert = zoo.experts[0 if mixed else i]
        name = "any" if mixed else expert.name
        say(f"training the k = {k} parity network of {name} ({spec.parity_epochs} epochs from {spec.parity_init}, "
            f"{encoder} encoder)", not quiet)
        init = copy.deepcopy(zoo.base) if spec.parity_init == "base" else None
        if mixed:
            train_x = torch.cat([e.train_x for e in zoo.experts])
            test_x = torch.cat([e.test_x for e in zoo.experts])
            test_y = torch.cat([e.test_y for e in zoo.experts])
            targets = own_outputs([e.train_x for e in zoo.experts])
            test_outs = own_outputs([e.test_x for e in zoo.experts])
        else:
            train_x, test_x, test_y, targets, test_outs = expert.train_x, expert.test_x, expert.test_y, None, None
        result = train_parity(expert.model, train_x, k, encoder, init=init, init_name=spec.parity_init,
                              epochs=spec.parity_epochs, seed=scenario.seed, targets=targets)
        scored = degraded_accuracy(result.model, expert.model, test_x, test_y, k, encoder, seed=scenario.seed,
                                   outputs=test_outs)
        networks[(k, i)] = result.model
        rows.append({"k": k, "expert": name, "encoder": encoder, "init": spec.parity_init,
                     "epochs": spec.parity_epochs, "train_samples": int(len(train_x)),
                     "train_s": result.seconds, "degraded_accuracy_pct": scored["degraded_accuracy_pct"],
                     "agreement_pct": scored["agreement_pct"],
                     "expert_accuracy_pct": scored["expert_accuracy_pct"]})
    return networks, rows


def decoded_outputs(parity: Any, encoder: str, members: Any, others_out: np.ndarray) -> np.ndarray:
    """Decoded outputs (G, C): each group's parity output on its members' inputs encoded (members: (G, k, ...)
    inputs, zeros in the empty places of a partial group) less its companions' own outputs summed (others_out:
    (G, C))."""
    import torch

    from coin.parity import ENCODERS

    device = next(parity.parameters()).device  # the network's device (CUDA when the run used it)
    with torch.no_grad():
        out = parity.eval()(ENCODERS[encoder](members.transpose(0, 1).to(device))).double().cpu().numpy()
    return out - others_out


def judge_decoded(records: pd.DataFrame, k: int, dispatch: str, encoder: str, answers: AnswerTables,
                  parity: dict[tuple[int, int], Any], test_inputs: list[Any]
                  ) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """One parity policy's records (query_id, model, sample_id, parity_others; groups of k gathered by `dispatch`):
    for each parity-decoded query, its decoded answer — its group's parity network on the members' inputs in k
    places, less the companions' own outputs (the answer tables', each from its own expert) — judged against the
    label and against the expert's own answer. Returns (index of those rows, correct, agrees)."""
    import torch

    decoded = records[records["parity_others"].fillna("").astype(str) != ""]
    correct = np.zeros(len(decoded), bool)
    agrees = np.zeros(len(decoded), bool)
    if not len(decoded):
        return decoded.index, correct, agrees
    sample_of = dict(zip(records["query_id"].to_numpy(), records["sample_id"].to_numpy(), strict=True))
    model_of = dict(zip(records["query_id"].to_numpy(), records["model"].to_numpy(), strict=True))
    where = pd.Series(np.arange(len(decoded)), index=decoded.index)
    keys = [parity_key(k, dispatch, int(m)) for m in decoded["model"]]
    for key in sorted(set(keys)):
        rows = decoded[[x == key for x in keys]]
        members = torch.zeros((len(rows), k, *test_inputs[0].shape[1:]), dtype=test_inputs[0].dtype)
        others_out = np.zeros((len(rows), answers.expert_outs.shape[-1]))
        for g, (qid, text) in enumerate(zip(rows["query_id"].to_numpy(), rows["parity_others"], strict=True)):
            # a group gathers its members in arrival order, which is query-id order: their places in the encoding
            group = sorted([int(qid), *(int(q) for q in str(text).split(","))])
            for place, q in enumerate(group):
                m, sample = int(model_of[q]), int(sample_of[q])
                members[g, place] = test_inputs[m][sample]
                if q != qid:
                    others_out[g] += answers.expert_outs[m, answers.offsets[m] + sample]
        out = decoded_outputs(parity[key], encoder, members, others_out)
        own = rows["model"].to_numpy().astype(np.int64)
        table_rows = answers.offsets[own] + rows["sample_id"].to_numpy().astype(np.int64)
        guess = out.argmax(-1)
        at = where[rows.index].to_numpy()
        correct[at] = guess == answers.labels[table_rows]
        agrees[at] = guess == answers.expert_outs[own, table_rows].argmax(-1)
    return decoded.index, correct, agrees


def judge_parity_answers(records: pd.DataFrame, summary: dict[str, Any], config: SimConfig, answers: AnswerTables,
                         parity: dict[tuple[int, int], Any], test_inputs: list[Any], encoder: str = "sum"
                         ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One point's records and summary with every parity-decoded answer judged on its parity network (see the
    module docstring; `encoder`: the scenario's coding.parity_encoder); points without such answers come back
    unchanged."""
    if "parity_others" not in records or "correct" not in records:
        return records, summary
    records = records.copy()
    summary = dict(summary)
    for spec in config.policies:
        if spec.kind != "parity":
            continue
        index, correct, agrees = judge_decoded(records[records["policy"] == spec.name], int(spec.k), spec.dispatch,
                                               encoder, answers, parity, test_inputs)
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
