"""Several instances per expert behind a balancer (`[sim] deployment`): each balancer against a closed form, the
fast engine against the idiomatic SimPy one query for query, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from sim_testutil import check_stat, measured

import sim
from sim.api import run_plan
from sim.draws import draw
from sim.parse import parse_config
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


@pytest.mark.parametrize("policy", [{"kind": "coded", "dispatch": "hedged", "delay_ms": 1.5},
                                    {"kind": "backup", "dispatch": "hedged", "delay_ms": 1.5},
                                    {"kind": "replication", "dispatch": "jsq"}])
def test_more_than_63_servers_answer_with_wide_masks_in_both_engines(policy):
    # 2 experts x 34 instances + 2 extra servers = 70: answer masks no longer fit int64
    cfg = parse_config({
        "n_experts": 2, "r": 2, "n_queries": 3000, "policies": [policy],
        "traffic": {"rate_per_ms": 34.0, "ensemble_rate_per_ms": 1.0},
        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}},
        "stragglers": {"p": 0.05, "slowdown": 6.0},
        "deployment": {"instances": 34, "balancer": "jsq"},
    })
    d = draw(cfg, seed=5)
    plan = make_plan(cfg, cfg.policies[0], d)
    a, b = run_plan(plan, d, "fast"), run_plan(plan, d, "reference")
    np.testing.assert_allclose(a.finish_ms, b.finish_ms, rtol=0, atol=1e-9)
    assert (a.how == b.how).all() and (a.mask == b.mask).all() and (a.n_tasks == b.n_tasks).all()
    used = {s for m in a.mask.tolist() for s in range(70) if (m >> s) & 1}
    assert max(used) >= 68 and used <= set(range(70))  # the extra servers, past bit 63, answer
    records = sim.simulate(cfg, seed=5).records
    wide = records[records["answer_mask"].map(lambda m: m >> 63 > 0)]
    assert len(wide) and all(
        [int(x) for x in text.split(",")] == [s for s in range(70) if (m >> s) & 1]
        for text, m in zip(wide["servers_used"], wide["answer_mask"], strict=True))


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


def test_the_backup_capacity_check_counts_every_instance_of_an_expert():
    # 3 instances of one expert (3/ms of Exp(1) passes) take 2.7/ms themselves: nothing is left to the backup,
    # whose own capacity (1/ms) would not cover what one instance (1/ms) leaves behind
    cfg = {"n_experts": 1, "r": 1, "traffic": {"rate_per_ms": 2.7}, "policies": [{"kind": "backup"}],
           "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}}, "deployment": {"instances": 3}}
    assert sim.parse_config(cfg).n_servers == 4
    with pytest.raises(sim.SimConfigError, match="leave at least 1.8/ms of queries to the backup"):
        sim.parse_config(cfg | {"traffic": {"rate_per_ms": 4.8}})  # 4.8/ms on 3 instances leaves 1.8 for 1 backup


# ------------------------------------------------------------------------------------------------ code groups
def _grouped(groups, n_queries: int, policies, rate: float = 0.001, **extra) -> dict:
    return {"n_experts": 4, "r": 1, "n_queries": n_queries, "policies": policies,
            "traffic": {"rate_per_ms": rate, **extra},
            "service": {"expert": {"kind": "exponential", "mean_ms": 1.0},
                        "coded": {"kind": "exponential", "mean_ms": 1.0}},
            "deployment": {"groups": groups} if groups is not None else {}}


@pytest.mark.parametrize("groups, m", [([[0, 1], [2, 3]], 2), (None, 4)])
def test_code_groups_at_zero_load_follow_the_order_statistics(groups, m):
    # idle servers, Exp(1) tasks, coded-redundant: a routed query is answered by the first of its expert's task and
    # the whole decode group (the m - 1 other experts of its code group and the group's coded server), so its
    # latency is min(X0, max(X1..Xm)) with mean 1 - 1 / (m + 1) = m / (m + 1)
    from sim_testutil import iid_mean_ci

    res = sim.simulate(_grouped(groups, 60_000, [{"kind": "coded", "dispatch": "redundant"}]), seed=8)
    x = measured(res, "coded")
    mean, half = iid_mean_ci(x)
    assert abs(mean - m / (m + 1)) <= half and half < 0.01, (mean, half)
    decoded = res.records[res.records["answered_by"] == "decoded"]
    if groups is not None:  # a decode uses only its own group's servers: experts 0, 1 and coded server 4, or 2, 3, 5
        assert set(decoded["servers_used"]) <= {"0,1", "0,4", "1,4", "2,3", "2,5", "3,5"}
        assert res.servers["hosts"].tolist().count("coded") == 2  # r = 1 per group


def test_an_ensemble_query_waits_for_every_code_group():
    # two groups of 2 experts + 1 coded server each; an ensemble query (redundant: all 6 servers) is done once each
    # group has 2 of its 3 outputs: the larger of two independent 2nd order statistics of 3 Exp(1)
    from scipy.integrate import quad
    from sim_testutil import iid_mean_ci

    def f_second_of_three(t):
        f = 1 - np.exp(-t)
        return 3 * f**2 * (1 - f) + f**3

    truth = quad(lambda t: 1 - f_second_of_three(t) ** 2, 0, np.inf)[0]
    cfg = _grouped([[0, 1], [2, 3]], 60_000, [{"kind": "coded", "dispatch": "redundant"}], rate=0.0,
                   ensemble_rate_per_ms=0.001)
    x = measured(sim.simulate(cfg, seed=9), "coded")
    mean, half = iid_mean_ci(x)
    assert abs(mean - truth) <= half and half < 0.01, (mean, truth, half)


def test_every_policy_gets_r_extra_servers_per_group():
    res = sim.simulate(_grouped([[0, 1], [2, 3]], 200, ["uncoded", "replication", "coded"], rate=0.5), seed=1)
    hosts = res.servers.groupby("policy", sort=False)["hosts"].apply(list).to_dict()
    assert hosts == {"uncoded": ["0", "1", "2", "3", "spare", "spare"],
                     "replication": ["0", "1", "2", "3", "0", "1"],
                     "coded": ["0", "1", "2", "3", "coded", "coded"]}


@pytest.mark.parametrize("policy", [{"kind": "coded", "dispatch": d} for d in ("redundant", "hedged", "sed")]
                         + [{"kind": "backup", "dispatch": "hedged"}])
def test_engines_agree_query_for_query_with_code_groups(policy):
    cfg = parse_config({**_grouped([[0, 2], [1, 3]], 3000, [policy], rate=2.4, ensemble_rate_per_ms=0.05),
                        "stragglers": {"p": 0.05, "slowdown": 6.0},
                        "deployment": {"groups": [[0, 2], [1, 3]], "instances": [1, 2, 1, 1]}})
    d = draw(cfg, seed=4)
    plan = make_plan(cfg, cfg.policies[0], d)
    a, b = run_plan(plan, d, "fast"), run_plan(plan, d, "reference")
    np.testing.assert_allclose(a.finish_ms, b.finish_ms, rtol=0, atol=1e-9)
    assert (a.how == b.how).all() and (a.mask == b.mask).all() and (a.n_tasks == b.n_tasks).all()


@pytest.mark.parametrize("groups, needle", [
    ([[0, 1], [2]], "each expert in exactly one"),
    ([[0, 1], [1, 2, 3]], "each expert in exactly one"),
    ([[0, 1, 2, 3], []], "non-empty"),
])
def test_bad_code_groups_are_one_line(groups, needle):
    with pytest.raises(sim.SimConfigError, match=needle):
        sim.simulate(_grouped(groups, 10, ["uncoded"]), seed=0)


def test_zipf_popularity_splits_routed_traffic_by_rank():
    # shares 1 / (i + 1)^s, normalised: with s = 1 and 4 experts, 12/25, 6/25, 4/25, 3/25
    cfg = {"n_experts": 4, "r": 0, "n_queries": 100_000, "policies": ["uncoded"],
           "traffic": {"rate_per_ms": 0.5, "zipf": 1.0}, "deployment": {"instances": [4, 2, 2, 1]}}
    model = sim.simulate(cfg, seed=2).records["model"].to_numpy()
    shares = np.bincount(model, minlength=4) / len(model)
    expect = np.array([12, 6, 4, 3]) / 25
    assert np.all(np.abs(shares - expect) < 4 * np.sqrt(expect * (1 - expect) / len(model))), shares
    with pytest.raises(sim.SimConfigError, match="zipf is only for kind='poisson'"):
        sim.simulate({**cfg, "traffic": {"rate_per_ms": 0.5, "zipf": 1.0, "weights": [1, 1, 1, 1]}}, seed=0)


# ----------------------------------------------------------------------------------- per-group backups
def _backups(scope: str, **traffic) -> dict:
    return {"n_experts": 4, "r": 1, "n_queries": 3000,
            "traffic": {"rate_per_ms": 1.0, **traffic},
            "policies": [{"kind": "backup", "dispatch": "hedged", "delay_ms": 2.0}],
            "stragglers": {"p": 0.1, "slowdown": 10.0},
            "deployment": {"groups": [[0, 1], [2, 3]], "backups": scope}}


def test_per_group_backups_keep_each_copy_in_its_group_in_both_engines():
    # servers 0-3 the experts, 4 group 0's backup, 5 group 1's: a per-group copy never crosses groups, a pooled
    # one goes to whichever backup has fewer live tasks (both are used for both groups)
    per = sim.simulate(_backups("per_group"), seed=0).records
    used = per[per["answered_by"] == "backup"].groupby("model")["servers_used"].unique()
    assert {m: sorted(s) for m, s in used.items()} == {0: ["4"], 1: ["4"], 2: ["5"], 3: ["5"]}
    ref = sim.simulate(_backups("per_group"), seed=0, engine="reference").records
    np.testing.assert_allclose(ref["finish_ms"], per["finish_ms"], rtol=0, atol=1e-9)
    assert (ref["servers_used"] == per["servers_used"]).all()
    pooled = sim.simulate(_backups("pooled"), seed=0).records
    mixed = pooled[pooled["answered_by"] == "backup"].groupby("model")["servers_used"].nunique()
    assert (mixed == 2).all()


def test_per_group_backups_are_checked_group_by_group():
    # experts 0, 1 get 1.9/ms each (Exp(1) passes): they leave 0.9/ms each, 1.8/ms for group 0's one backup
    # (1/ms) — refused, although the two backups together (2/ms) would cover it, as pooled backups do
    cfg = _backups("per_group", rates_per_ms=[1.9, 1.9, 0.05, 0.05]) | {"n_queries": None}
    cfg["traffic"].pop("rate_per_ms")
    cfg["service"] = {"expert": {"kind": "exponential", "mean_ms": 1.0}}
    del cfg["stragglers"]  # (stragglers would lengthen every mean pass and cut every capacity)
    with pytest.raises(sim.SimConfigError, match="experts of code group 0 leave at least 1.8/ms"):
        sim.parse_config(cfg)
    pooled = dict(cfg, deployment={"groups": [[0, 1], [2, 3]], "backups": "pooled"})
    with pytest.raises(sim.SimConfigError, match="unstable"):  # 2/ms of backups against 1.8/ms: not refused by
        sim.parse_config(pooled | {"traffic": {"rates_per_ms": [2.1, 2.1, 0.05, 0.05]}})  # the pooled check ...
    assert sim.parse_config(pooled).deployment.backups == "pooled"  # ... until it exceeds both backups together


@pytest.mark.parametrize("change, needle", [
    ({"deployment": {"backups": "per_group"}}, "needs deployment.groups"),
    ({"traffic": {"rate_per_ms": 1.0, "ensemble_rate_per_ms": 0.1}}, "an ensemble query needs every expert"),
])
def test_bad_per_group_backups_are_one_line(change, needle):
    with pytest.raises(sim.SimConfigError) as err:
        sim.parse_config(_backups("per_group") | change)
    assert needle in str(err.value) and "\n" not in str(err.value)
