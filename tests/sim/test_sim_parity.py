"""The parity policy (coding over queries): hand traces worked out on paper, the fast engine against the SimPy
reference query for query, its capacity condition, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import sim
from sim.api import run_plan
from sim.draws import draw
from sim.parse import parse_config
from sim.plan import make_plan

EXP = {"expert": {"kind": "exponential", "mean_ms": 1.0}, "coded": {"kind": "exponential", "mean_ms": 1.0}}


def _trace(times: list[float], models: list[int], policy: dict, slow_ms: float = 10.0, **extra) -> dict:
    """Expert 0 always takes `slow_ms`, expert 1 1 ms, a parity pass 1 ms (deterministic)."""
    return {"n_experts": 2, "r": 1, "policies": [policy],
            "traffic": {"kind": "trace", "trace_times_ms": times, "trace_models": models},
            "service": {"experts": [{"kind": "deterministic", "value_ms": slow_ms},
                                    {"kind": "deterministic", "value_ms": 1.0}],
                        "coded": {"kind": "deterministic", "value_ms": 1.0}}, **extra}


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_the_slow_member_of_a_pair_is_decoded_once_parity_and_partner_are_back(engine):
    # q0 (expert 0, 10 ms) at 0, q1 (expert 1, 1 ms) at 0.1: the pair closes at 0.1, its parity is back at 1.1 as
    # is q1's own output, so q0 is decoded at 1.1 from servers 1 (q1's expert) and 2 (the parity server)
    rec = sim.simulate(_trace([0.0, 0.1], [0, 1], {"kind": "parity", "k": 2}), seed=0, engine=engine).records
    assert rec["latency_ms"].round(9).tolist() == [1.1, 1.0]
    assert rec["answered_by"].tolist() == ["decoded", "direct"]
    assert rec["servers_used"].tolist() == ["1,2", "1"]
    assert rec["n_tasks"].tolist() == [1, 2]  # the parity task counts for the query that closed the group


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("partial, q0_ms", [("send", 1.5), ("drop", 10.0)])
def test_a_group_closed_by_its_timeout_is_sent_or_dropped(engine, partial, q0_ms):
    # k = 3 but only two queries come: the timer (0.5 ms after q0) closes the pair; sent, its parity is back at
    # 1.5, after q1's own output (1.1), so q0 is decoded at 1.5; dropped, q0 waits for its own 10 ms pass
    policy = {"kind": "parity", "k": 3, "group_timeout_ms": 0.5, "partial": partial}
    rec = sim.simulate(_trace([0.0, 0.1], [0, 1], policy), seed=0, engine=engine).records
    assert rec["latency_ms"].round(9).tolist() == [q0_ms, 1.0]
    assert rec["answered_by"].tolist() == ["decoded" if partial == "send" else "direct", "direct"]


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_lone_query_is_left_to_its_expert_and_groups_per_expert_do_not_mix(engine):
    # per-expert groups: q0 and q1 are in different groups, each alone when its timer fires: no parity at all
    policy = {"kind": "parity", "dispatch": "expert", "k": 2, "group_timeout_ms": 0.5}
    rec = sim.simulate(_trace([0.0, 0.1], [0, 1], policy), seed=0, engine=engine).records
    assert rec["latency_ms"].round(9).tolist() == [10.0, 1.0] and rec["n_tasks"].tolist() == [1, 1]
    # two queries of expert 0 form a pair: q1 queues behind q0 (own output at 20 ms), but the pair's parity is back
    # at 1.1 and q0's own output at 10, so q1 is decoded at 10 (9.9 ms after it came)
    rec = sim.simulate(_trace([0.0, 0.1, 0.2], [0, 0, 1], policy), seed=0, engine=engine).records
    assert rec["answered_by"].tolist() == ["direct", "decoded", "direct"]
    assert rec["latency_ms"].round(9).tolist() == [10.0, 9.9, 1.0] and rec["n_tasks"].tolist() == [1, 2, 1]


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_answering_the_members_does_not_cancel_the_parity_task(engine):
    # both members fast (expert 0 at 0.5 ms): answered directly at 0.5 and 1.1, the parity pass still runs to its
    # end and its server's busy time shows the whole 1 ms
    cfg = _trace([0.0, 0.1], [0, 1], {"kind": "parity", "k": 2}, slow_ms=0.5)
    res = sim.simulate(cfg, seed=0, engine=engine)
    assert res.records["answered_by"].tolist() == ["direct", "direct"]
    assert res.servers.set_index("server").loc[2, "busy_ms"] == pytest.approx(1.0)
    assert res.servers.set_index("server").loc[2, "hosts"] == "parity"


@pytest.mark.parametrize("policy", [
    {"kind": "parity", "k": 2},
    {"kind": "parity", "k": 3, "group_timeout_ms": 1.0},
    {"kind": "parity", "k": 2, "group_timeout_ms": 0.7, "partial": "drop", "dispatch": "expert"},
    {"kind": "parity", "k": 2, "cancel": False},
])
def test_engines_agree_query_for_query(policy):
    cfg = parse_config({
        "n_experts": 3, "r": 2, "n_queries": 4000, "policies": [policy],
        "traffic": {"rate_per_ms": 1.2},
        "service": EXP,
        "stragglers": {"p": 0.05, "slowdown": 8.0},
        "deployment": {"instances": [1, 2, 1]},
    })
    d = draw(cfg, seed=3)
    plan = make_plan(cfg, cfg.policies[0], d)
    a, b = run_plan(plan, d, "fast"), run_plan(plan, d, "reference")
    np.testing.assert_allclose(a.finish_ms, b.finish_ms, rtol=0, atol=1e-9)
    assert (a.how == b.how).all() and (a.mask == b.mask).all() and (a.n_tasks == b.n_tasks).all()
    np.testing.assert_allclose(a.busy_ms, b.busy_ms, rtol=1e-9)
    decoded = a.how == sim.api.HOW.index("decoded")
    assert 0.01 < decoded.mean() < 0.5  # the parity servers decode a share of the queries, not none, not most


def test_decoding_never_uses_more_than_one_missing_output_per_group():
    # every decoded answer used exactly k outputs: k - 1 members' own and the parity server's
    cfg = {"n_experts": 2, "r": 1, "n_queries": 5000, "traffic": {"rate_per_ms": 0.8},
           "service": EXP, "stragglers": {"p": 0.1, "slowdown": 10.0}, "policies": [{"kind": "parity", "k": 3}]}
    rec = sim.simulate(cfg, seed=2).records
    dec = rec[rec["answered_by"] == "decoded"]
    assert len(dec) > 50
    assert dec["servers_used"].map(lambda s: len(s.split(","))).le(3).all()  # servers, so members may share one
    assert dec["servers_used"].str.split(",").map(lambda s: "2" in s).all()  # the parity server always


def test_the_parity_servers_capacity_is_checked():
    base = {"n_experts": 2, "r": 1, "traffic": {"rate_per_ms": 1.5},
            "service": {**EXP, "coded": {"kind": "exponential", "mean_ms": 1.5}}}
    assert sim.parse_config({**base, "policies": [{"kind": "parity", "k": 3}]})  # 0.5/ms x 1.5 ms < 1
    with pytest.raises(sim.SimConfigError, match=r"groups of 2 send 0\.75 parity queries/ms .* at most 0\.6667/ms"):
        sim.parse_config({**base, "policies": [{"kind": "parity", "k": 2}]})


@pytest.mark.parametrize("change, needle", [
    ({"policies": [{"kind": "parity", "k": 1}]}, "greater than or equal to 2"),
    ({"policies": [{"kind": "coded", "k": 2}]}, "k belong to the parity policy"),
    ({"policies": [{"kind": "hedged", "partial": "drop"}]}, "partial belong to the parity policy"),
    ({"policies": [{"kind": "parity", "group_timeout_ms": 0}]}, "group_timeout_ms"),
    ({"policies": [{"kind": "parity", "partial": "keep"}]}, "partial"),
    ({"policies": [{"kind": "parity", "dispatch": "random"}]}, "unknown dispatch 'random'"),
    ({"policies": ["parity"], "traffic": {"rate_per_ms": 0.5, "ensemble_rate_per_ms": 0.1}}, "no rule for ensemble"),
    ({"policies": ["parity"], "traffic": {"kind": "trace", "trace_times_ms": [0, 1], "trace_models": [0, -1]}},
     "ensemble queries"),
    ({"policies": ["parity"], "r": 0}, "needs r >= 1"),
    # 0.5/ms x 0.02 ms = 0.01 further queries expected: 3 more (k = 4) come with probability 1.7e-7 (Poisson,
    # e^-0.01 x 0.01^3 / 3! to leading order)
    ({"policies": [{"kind": "parity", "k": 4, "group_timeout_ms": 0.02}]}, "with probability 1.7e-07"),
    # per expert: the busier expert gets 0.25/ms: one more query within 0.002 ms with probability 1 - e^-0.0005
    ({"policies": [{"kind": "parity", "dispatch": "expert", "k": 2, "group_timeout_ms": 0.002}]},
     "with probability 0.0005"),
])
def test_bad_parity_input_is_one_line(change, needle):
    cfg = {"n_experts": 2, "r": 1, "n_queries": 10, "traffic": {"rate_per_ms": 0.5}, **change}
    with pytest.raises(sim.SimConfigError) as err:
        sim.simulate(cfg, seed=0)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_testbed_parity_policy_without_its_parity_networks_or_encoder_is_refused():
    from testbed.frontend import Policy, serve

    policy = Policy(name="parity", kind="parity", dispatch="any", hosts=(0, 1, -4), n_experts=2)
    with pytest.raises(ValueError, match="needs a parity network per expert"):
        serve([], policy, None)  # type: ignore[arg-type]  # refused before it looks at sockets or work
    with pytest.raises(ValueError, match="an encoder of"):
        serve([], Policy(name="parity", kind="parity", dispatch="any", hosts=(0, 1, -4), n_experts=2,
                         parity_nets=(2, 2), encoder="zip"), None)  # type: ignore[arg-type]
