"""A run with the generalist-backup policy renders it as an answer kind of its own: the answer-mix figure has a
backup panel, the tables a backup column that matches the records, and runs without such a policy get no
column of zeros."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import reports
from reports.figures import answer_fractions
from scenarios.runner import run_scenario
from scenarios.schema import scenario_from_dict

SIM = {
    "n_experts": 2,
    "r": 1,
    "n_queries": 3000,
    "policies": ["uncoded", {"kind": "coded", "dispatch": "hedged", "delay_ms": "p90"},
                 {"kind": "backup", "dispatch": "hedged", "delay_ms": "p90"}],
    "service": {"expert": {"kind": "shifted_exponential", "shift_ms": 2.0, "mean_ms": 1.0}},
    "traffic": {"kind": "poisson", "load": 0.3},
    "stragglers": {"p": 0.05, "slowdown": 10.0},
}


def _run(tmp_path, sim: dict, name: str):
    raw = {"name": name, "seed": 2, "sim": sim, "sweep": {"axis": "stragglers.p", "values": [0.0, 0.1]}}
    return run_scenario(scenario_from_dict(raw), raw, tmp_path / "out", quiet=True, render=reports.render)


def test_backup_answers_render_as_their_own_kind(tmp_path):
    folder = _run(tmp_path, SIM, "with-backup")
    data = reports.load_result(folder)
    queries = pd.read_parquet(folder / "queries.parquet")
    fractions = answer_fractions(data.queries, data.sweep)
    mine = fractions[fractions["policy"] == "backup"].set_index("point")["backup_pct"]
    for point, rows in queries[(queries["policy"] == "backup") & ~queries["warmup"]].groupby("point"):
        assert mine[point] == pytest.approx((rows["answered_by"] == "backup").mean() * 100)
        assert mine[point] > 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["points"][1]["policies"]["backup"]["backup_pct"] == pytest.approx(mine[1])
    html = (folder / "report.html").read_text()
    assert html.count("<th>backup</th>") == 2  # headline table and the table of every point
    assert (folder / "figures" / "answer_mix.png").is_file()


def test_no_backup_column_without_a_backup_policy(tmp_path):
    folder = _run(tmp_path, dict(SIM, policies=SIM["policies"][:2]), "without-backup")
    html = (folder / "report.html").read_text()
    assert "<th>decoded</th>" in html and not re.search(r"<th>backup</th>", html)
