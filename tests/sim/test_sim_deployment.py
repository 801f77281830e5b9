"""Several instances per expert behind a balancer (`[sim] deployment`): each balancer against a closed form, the
fast engine against the idiomatic SimPy one query for query, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from sim_testutil import check_stat, measured

import sim
from sim.api import run_plan
from sim.config import parse_config
from sim.draws import draw
from sim.plan import make_plan


def _one_expert(k: int, lam: float, balancer: str, n: int, **extra) -> dict:
    return {"n_experts": 1, "r": 0, "traffic": {"rate_per_ms": lam}, "n_queries": n, "policies": ["uncoded"],
            "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
            "deployment": {"instances": k, "balancer": balancer, **extra}}


def test_round_robin_makes_each_instance_an_erlang_k_queue():
    # k instances in turn: each sees every k-th Poisson arrival, Erlang(k, lam) gaps, and serves Exp(1): an E_k/M/1
    # queue, whose mean sojourn is 1 / (mu (1 - s)) with s the root in (0, 1) of s = (lam / (lam + mu (1 - s)))^k
    k, lam = 3, 2.4
    s = brentq(lambda x: x - (lam / (lam + (1 - x))) ** k, 1e-9, 1 - 1e-9)
    res = sim.simulate(_one_expert(k, lam, "round_robin", 200_000), seed=11)
    assert sorted(res.records["servers_used"].unique()) == ["0", "1", "2"]
    check_stat(measured(res, "uncoded"), 1.0 / (1.0 - s))


def _mean_field_power_of_d(rho: float, d: int) -> float:
    """Mean sojourn of power-of-d choices as the number of Exp(1) servers grows (mean-field): the share of servers
    with at least i tasks is rho^((d^i - 1) / (d - 1)), so the mean is the sum over i >= 1 of
    rho^((d^i - d) / (d - 1))."""
    return sum(rho ** ((d**i - d) / (d - 1)) for i in range(1, 40))


def test_power_of_two_choices_approaches_its_mean_field_limit_as_instances_grow():
    rho, d = 0.8, 2
    limit = _mean_field_power_of_d(rho, d)
    errors = {}
    for k in (4, 60):
        res = sim.simulate(_one_expert(k, rho * k, "power_of_d", 120_000, d=d), seed=3)
        x = measured(res, "uncoded")
        errors[k] = abs(x.mean() / limit - 1)
    # few instances: far from the limit (and far better than random routing's 1 / (1 - rho) = 5 ms); many: close
    assert errors[4] > 0.1 and errors[60] < 0.03 and errors[60] < errors[4] / 4, errors


def test_jsq_beats_round_robin_beats_one_instance_at_the_same_load_per_server():
    means = {b: measured(sim.simulate(_one_expert(2, 1.6, b, 40_000), seed=4), "uncoded").mean()
             for b in ("jsq", "round_robin")}
    one = measured(sim.simulate(_one_expert(1, 0.8, "jsq", 40_000), seed=4), "uncoded").mean()  # M/M/1: 5 ms
    assert means["jsq"] < means["round_robin"] < one


@pytest.mark.parametrize("balancer", ["jsq", "round_robin", "power_of_d"])
@pytest.mark.parametrize("policy", [
    "uncoded",
    {"kind": "replication", "dispatch": "jsq"},
    {"kind": "hedged", "delay_ms": 1.5},
    {"kind": "coded", "dispatch": "hedged", "delay_ms": 1.5},
    {"kind": "coded", "dispatch": "sed"},
    {"kind": "coded", "dispatch": "redundant"},
    {"kind": "backup", "dispatch": "hedged", "delay_ms": 1.5},
])
def test_engines_agree_query_for_query_with_instances(balancer, policy):
    cfg = parse_config({
        "n_experts": 2, "r": 1, "n_queries": 3000, "policies": [policy],
        "traffic": {"rate_per_ms": 1.6, "ensemble_rate_per_ms": 0.1},
        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
        "stragglers": {"p": 0.05, "slowdown": 6.0},
        "deployment": {"instances": [2, 3], "balancer": balancer, "d": 2},
    })
    d = draw(cfg, seed=7)
    plan = make_plan(cfg, cfg.policies[0], d)
    assert plan.hosts[:5] == (0, 1, 0, 1, 1) and plan.base == 5
    a, b = run_plan(plan, d, "fast"), run_plan(plan, d, "reference")
    np.testing.assert_allclose(a.finish_ms, b.finish_ms, rtol=0, atol=1e-9)
    assert (a.how == b.how).all() and (a.mask == b.mask).all() and (a.n_tasks == b.n_tasks).all()
    used = {s for m in a.mask.tolist() for s in range(6) if (m >> s) & 1}
    assert {2, 3, 4} <= used  # the further instances serve too


def test_an_answer_from_a_further_instance_is_direct_and_from_a_replica_is_a_replica():
    cfg = {"n_experts": 1, "r": 1, "n_queries": 5000, "traffic": {"rate_per_ms": 1.8},
           "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
           "policies": [{"kind": "replication", "dispatch": "jsq"}], "deployment": {"instances": 2}}
    r = sim.simulate(cfg, seed=1).records
    by = r.groupby("servers_used")["answered_by"].unique()
    assert list(by["0"]) == ["direct"] and list(by["1"]) == ["direct"] and list(by["2"]) == ["replica"]


@pytest.mark.parametrize("deployment, needle", [
    ({"instances": 0}, "instances must be >= 1"),
    ({"instances": [1, 2, 3]}, "deployment.instances has 3 counts for 2 experts"),
    ({"instances": 40}, "80 expert instances + r = 1 makes 81 servers"),
    ({"balancer": "random"}, "deployment.balancer"),
    ({"d": 0}, "deployment.d"),
])
def test_bad_deployments_are_one_line(deployment, needle):
    with pytest.raises(sim.SimConfigError, match=needle.replace("+", r"\+").replace(".", r"\.")):
        sim.simulate({"n_experts": 2, "r": 1, "n_queries": 10, "traffic": {"rate_per_ms": 0.1},
                      "deployment": deployment}, seed=0)


def test_capacity_counts_every_instance():
    ok = _one_expert(3, 2.7, "jsq", None)  # 0.9 of three servers
    assert sim.simulate({**ok, "n_queries": 100}, seed=0).records["latency_ms"].notna().all()
    with pytest.raises(sim.SimConfigError, match="unstable load.*3 server"):
        sim.simulate({**ok, "traffic": {"rate_per_ms": 3.1}, "n_queries": None}, seed=0)
