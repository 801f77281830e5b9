"""Cells (`deployment.cells`): the instances split into cells, each code group coded per cell by its own r coded
servers, queries served in cell qid mod cells — against closed forms, the reference engine, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from sim_testutil import check_stat, iid_mean_ci, measured

import sim
from sim.errors import SimConfigError

EXP1 = {"expert": {"kind": "exponential", "mean_ms": 1.0}}


def _cell_of_server(n_experts: int, instances: int, cells: int, r: int, groups: int = 1) -> dict[int, int]:
    """Written out from the layout rules, not from the code: servers 0..N-1 are first instances (cell 0), then each
    expert's further instances j = 1.. (cell j mod cells), expert by expert; then the extra servers, r per
    (group, cell), group by group and cell by cell within a group."""
    cell, s = {}, 0
    for _ in range(n_experts):
        cell[s] = 0
        s += 1
    for _ in range(n_experts):
        for j in range(1, instances):
            cell[s] = j % cells
            s += 1
    for _ in range(groups):
        for c in range(cells):
            for _ in range(r):
                cell[s] = c
                s += 1
    return cell


def test_one_instance_per_cell_makes_each_an_erlang_k_queue():
    # one expert on 3 instances in 3 cells: cell qid mod 3 has one server, so each sees every third Poisson arrival
    # (Erlang(3, lam) gaps) and serves Exp(1): E_3/M/1, mean sojourn 1 / (1 - s), s = (lam / (lam + 1 - s))^3
    k, lam = 3, 2.4
    s = brentq(lambda x: x - (lam / (lam + (1 - x))) ** k, 1e-9, 1 - 1e-9)
    cfg = {"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": lam}, "n_queries": 200_000, "policies": ["uncoded"],
           "service": EXP1, "deployment": {"instances": k, "cells": k, "balancer": "jsq"}}
    res = sim.simulate(cfg, seed=11)
    rec = res.records
    assert (rec["servers_used"].astype(int) == rec["query_id"] % k).all()  # JSQ stays inside the query's cell
    check_stat(measured(res, "uncoded"), 1.0 / (1.0 - s))


MIXED = {
    "n_experts": 4, "r": 1, "n_queries": 6000,
    "policies": ["uncoded", {"kind": "replication", "dispatch": "jsq"}, {"kind": "hedged", "delay_ms": 2.0},
                 {"kind": "coded", "dispatch": "hedged", "delay_ms": 2.0}, {"kind": "coded", "dispatch": "sed",
                                                                            "name": "coded-sed"},
                 {"kind": "backup", "delay_ms": 2.0}],
    "service": EXP1, "traffic": {"kind": "poisson", "rate_per_ms": 3.0, "ensemble_rate_per_ms": 0.3},
    "stragglers": {"p": 0.05, "slowdown": 8.0},
    "deployment": {"instances": 4, "cells": 2, "groups": [[0, 1], [2, 3]], "balancer": "jsq"},
}


def test_every_task_of_a_query_stays_in_its_cell_and_the_engines_agree_query_for_query():
    config = sim.parse_config(MIXED)
    assert config.n_servers == 16 + 1 * 2 * 2
    cell = _cell_of_server(4, 4, 2, 1, groups=2)
    fast = sim.simulate(MIXED, seed=5)
    ref = sim.simulate(MIXED, seed=5, engine="reference")
    for policy in fast.summary:
        a = fast.records[fast.records["policy"] == policy]
        b = ref.records[ref.records["policy"] == policy]
        assert np.allclose(a["finish_ms"].to_numpy(), b["finish_ms"].to_numpy()), policy
        assert (a["servers_used"].to_numpy() == b["servers_used"].to_numpy()).all(), policy
        for qid, used in zip(a["query_id"].to_numpy(), a["servers_used"].to_numpy(), strict=True):
            assert {cell[int(x)] for x in used.split(",")} == {qid % 2}, (policy, qid, used)
    coded = fast.records[fast.records["policy"] == "coded-hedged"]
    assert (coded["answered_by"] == "decoded").any() and (coded["kind"] == "ensemble").any()


def test_a_routed_query_is_decoded_from_its_own_cell_at_zero_load():
    # two experts, coded per cell, redundant dispatch at (nearly) zero load: a routed query is answered by
    # min(own pass, max(other expert's pass, coded pass)) with Exp(1) passes: mean 1 - 1/3 = 2/3
    cfg = {"n_experts": 2, "r": 1, "n_queries": 60_000, "policies": [{"kind": "coded", "dispatch": "redundant"}],
           "service": EXP1, "traffic": {"kind": "poisson", "rate_per_ms": 0.0005},
           "deployment": {"instances": 3, "cells": 3}}
    res = sim.simulate(cfg, seed=2)
    x = measured(res, "coded")
    mean, half = iid_mean_ci(x)
    assert abs(mean - 2 / 3) <= half and half < 0.01
    assert sorted(res.summary["coded"]["coded_servers"]) == [6, 7, 8]


@pytest.mark.parametrize("deployment,policies,expect", [
    ({"instances": 3, "cells": 2}, ["uncoded"], "multiple of 2"),
    ({"instances": (2, 4), "cells": 4}, ["uncoded"], "multiple of 4"),
    ({"instances": 2, "cells": 2}, ["uncoded", {"kind": "parity", "k": 2}], "parity"),
    ({"instances": 2, "cells": 2}, ["uncoded", {"kind": "replication", "dispatch": "pool"}], "across the cells"),
    ({"instances": 2, "cells": 0}, ["uncoded"], "cells"),
])
def test_bad_cells_are_refused_in_one_line(deployment, policies, expect):
    cfg = {"n_experts": 2, "r": 1, "n_queries": 100, "policies": policies, "service": EXP1,
           "traffic": {"kind": "poisson", "rate_per_ms": 0.1}, "deployment": deployment}
    with pytest.raises(SimConfigError) as err:
        sim.simulate(cfg)
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_replicas_spread_over_the_experts_cell_by_cell():
    # four experts, two groups, two cells, r = 1: four extra servers, blocks (group 0, cell 0), (0, 1), (1, 0),
    # (1, 1); counted cell by cell the replicas continue the spread: cell 0 holds experts 0 and 1, cell 1 experts 2
    # and 3 — every expert has a replica somewhere, and no cell holds two of one expert
    res = sim.simulate({**MIXED, "n_queries": 200}, seed=1)
    servers = res.servers[res.servers["policy"] == "hedged"].sort_values("server")
    extra = servers["hosts"].astype(str).tolist()[16:]
    assert extra == ["0", "2", "1", "3"]  # servers 16..19: blocks (0, 0), (0, 1), (1, 0), (1, 1)
    cells = {0: {extra[0], extra[2]}, 1: {extra[1], extra[3]}}
    assert cells == {0: {"0", "1"}, 1: {"2", "3"}}
