"""The policy rules (policies/) on hand traces, through a bare view of the servers that only records what the
rules do — no engine, no clock — and a policy added in one class, served by both engines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import policies
import sim
from policies.codes import (
    CODED,
    HOW_BACKUP,
    HOW_DECODED,
    HOW_DIRECT,
    HOW_HEDGE,
    HOW_REPLICA,
    ROLE_BACKUP,
    ROLE_DIRECT,
    ROLE_GROUP,
    ROLE_HEDGE,
)
from policies.rules import Rules


def lindley(arrival: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Sojourn times of a FIFO single server, by Lindley's recursion."""
    out, free = np.empty(len(arrival)), 0.0
    for k, (a, s) in enumerate(zip(arrival, service, strict=True)):
        free = max(free, a) + s
        out[k] = free - a
    return out


class Q:
    def __init__(self, model: int) -> None:
        self.model, self.got, self.mask, self.cover, self.how = model, 0, 0, 0, HOW_DIRECT


class View:
    """Targets are names; servers are numbered in `names` order. Names starting with 'e' are the experts' own
    instances (they come first, as every system numbers them); the rest are extra servers."""

    def __init__(self, names: list[str], hosts: list[int], dispatch: str, loads: dict[str, int] | None = None,
                 delay_ms: tuple[float, ...] | None = None, fanout: int = 1, mean_ms: float = 1.0,
                 balancer: str = "jsq", balance: dict[int, list[float]] | None = None,
                 groups: list[list[int]] | None = None, delay_quantile: float | None = None,
                 delay_window: int = 1000, backups_per_group: bool = False) -> None:
        self.names, self.host_of = names, dict(zip(names, hosts, strict=True))
        self.delay_quantile, self.delay_window = delay_quantile, delay_window
        self.n_experts = len({h for h in hosts if h >= 0})
        self.n_base = sum(1 for n in names if n.startswith("e"))
        self.dispatch, self.fanout, self.delay_ms, self.mean = dispatch, fanout, delay_ms, mean_ms
        self.balancer, self.balance = balancer, balance or {}
        self.hosts = [[n for n in names if self.host_of[n] == i] for i in range(self.n_experts)]
        self.instances = [[n for n in h if n.startswith("e")] for h in self.hosts]
        self.replicas = [[n for n in h if not n.startswith("e")] for h in self.hosts]
        self.coded = [n for n in names if self.host_of[n] == CODED]
        self.backups = [n for n in names if self.host_of[n] == -3]
        # code groups, written out by hand: coded targets named c<group><k> ("c0", "c1" in group 0 by default)
        self.members = groups or [list(range(self.n_experts))]
        self.group_of = [next(g for g, m in enumerate(self.members) if i in m) for i in range(self.n_experts)]
        self.coded_in = [[n for n in self.coded if groups is None or int(n[1]) == g] for g in range(len(self.members))]
        # backups named b<group><k> likewise; per group, a copy stays among its query's group's backups
        self.backups_in = [[n for n in self.backups if groups is None or int(n[1]) == g]
                           for g in range(len(self.members))]
        self.backups_per_group = backups_per_group
        self.group_masks = [sum(1 << k for k, n in enumerate(names) if (n in self.coded_in[g]) or
                                (self.host_of[n] >= 0 and self.group_of[self.host_of[n]] == g))
                            for g in range(len(self.members))]
        self.stations = list(names)
        self.loads = dict.fromkeys(names, 0) | (loads or {})
        self.sent: list[tuple[str, int]] = []
        self.timers: list[float] = []
        self.answers: list[tuple[int, int]] = []

    def load(self, t: str) -> int:
        return self.loads[t]

    def expected_ms(self, t: str) -> float:
        return (self.loads[t] + 1) * self.mean

    def index(self, t: str) -> int:
        return self.names.index(t)

    def balance_u(self, q: Any) -> list[float]:
        return self.balance[id(q)]

    def send(self, q: Any, t: str, role: int) -> None:
        self.sent.append((t, role))

    def hedge_after(self, q: Any, delay_ms: float) -> None:
        self.timers.append(delay_ms)

    def answer(self, q: Any, how: int, mask: int) -> None:
        self.answers.append((how, mask))

    def back(self, rules: Rules, q: Q, t: str, role: int) -> None:
        """An output of target t comes back (the server index is its place in `names`)."""
        rules.output(q, role, self.names.index(t), self.host_of[t])


def rules(kind: str, view: View) -> Rules:
    return policies.rules_for(kind)(view)


def test_sed_sends_only_the_path_expected_sooner_and_picks_the_least_loaded_coded_server():
    names, hosts = ["e0", "e1", "c0", "c1"], [0, 1, CODED, CODED]
    # own server: 3 waiting -> 4 ms expected; the group: e1 (1 ms) and c1 (1 ms, fewer live tasks than c0)
    v = View(names, hosts, "sed", loads={"e0": 3, "c0": 1})
    rules("coded", v).routed(Q(0))
    assert v.sent == [("e1", ROLE_GROUP), ("c1", ROLE_GROUP)]
    v = View(names, hosts, "sed", loads={"c0": 1})  # both paths 1 ms: not sooner, so the expert itself
    rules("coded", v).routed(Q(0))
    assert v.sent == [("e0", ROLE_DIRECT)]
    v = View(names, hosts, "sed", loads={"e0": 3})  # coded servers tied: the lower index
    rules("coded", v).routed(Q(0))
    assert v.sent == [("e1", ROLE_GROUP), ("c0", ROLE_GROUP)]


def test_sed_ensemble_takes_the_n_targets_expected_soonest_ties_by_index():
    v = View(["e0", "e1", "e2", "c0"], [0, 1, 2, CODED], "sed", loads={"e1": 2, "e2": 1})
    rules("coded", v).ensemble(Q(-1))
    assert v.sent == [("e0", ROLE_GROUP), ("c0", ROLE_GROUP), ("e2", ROLE_GROUP)]


def test_coded_routed_answer_is_direct_or_decoded_from_n_group_outputs():
    v = View(["e0", "e1", "c0"], [0, 1, CODED], "redundant")
    r, q = rules("coded", v), Q(0)
    r.routed(q)
    assert v.sent == [("e0", ROLE_DIRECT), ("e1", ROLE_GROUP), ("c0", ROLE_GROUP)]
    v.back(r, q, "c0", ROLE_GROUP)
    assert v.answers == []  # one of the N = 2 outputs a decode needs
    v.back(r, q, "e1", ROLE_GROUP)
    assert v.answers == [(HOW_DECODED, 0b110)]
    q2 = Q(1)
    v.back(r, q2, "e1", ROLE_DIRECT)
    assert v.answers[-1] == (HOW_DIRECT, 0b010)


def test_coded_ensemble_is_decoded_when_a_coded_output_is_among_the_first_n():
    v = View(["e0", "e1", "c0"], [0, 1, CODED], "redundant")
    r, q = rules("coded", v), Q(-1)
    v.back(r, q, "e0", ROLE_GROUP)
    v.back(r, q, "c0", ROLE_GROUP)
    assert v.answers == [(HOW_DECODED, 0b101)]
    q = Q(-1)
    v.back(r, q, "e0", ROLE_GROUP)
    v.back(r, q, "e1", ROLE_GROUP)
    assert v.answers[-1] == (HOW_DIRECT, 0b011)


def test_hedged_ensemble_hedges_only_the_experts_still_missing_to_their_least_loaded_replica():
    names, hosts = ["e0", "e1", "r0", "r1a", "r1b"], [0, 1, 0, 1, 1]
    v = View(names, hosts, "hedged", loads={"r1a": 2}, delay_ms=(3.0, 5.0))
    r, q = rules("hedged", v), Q(-1)
    r.ensemble(q)
    assert v.sent == [("e0", ROLE_DIRECT), ("e1", ROLE_DIRECT)] and v.timers == [5.0]  # the larger delay
    v.back(r, q, "e0", ROLE_DIRECT)
    r.hedge(q)
    assert v.sent[2:] == [("r1b", ROLE_HEDGE)]
    v.back(r, q, "e0", ROLE_DIRECT)  # a second output of a covered expert counts for nothing
    assert v.answers == []
    v.back(r, q, "r1b", ROLE_HEDGE)
    assert v.answers == [(HOW_HEDGE, 0b10001)]


def test_routed_outputs_name_who_answered():
    v = View(["e0", "e1", "r0"], [0, 1, 0], "jsq", loads={"e0": 1})
    r = rules("replication", v)
    q = Q(0)
    r.routed(q)
    assert v.sent == [("r0", ROLE_DIRECT)]  # join the shorter queue ...
    v.loads["e0"] = 0
    r.routed(Q(0))
    assert v.sent[-1] == ("e0", ROLE_DIRECT)  # ... ties to the expert's own server
    v.back(r, q, "r0", ROLE_DIRECT)
    v.back(r, Q(0), "e0", ROLE_DIRECT)
    v.back(r, Q(0), "r0", ROLE_HEDGE)
    assert v.answers == [(HOW_REPLICA, 0b100), (HOW_DIRECT, 0b001), (HOW_HEDGE, 0b100)]


@pytest.mark.parametrize("dispatch", ["hedged", "redundant"])
def test_backup_sends_one_copy_to_the_least_loaded_backup_and_its_output_answers_alone(dispatch):
    names, hosts = ["e0", "e1", "b0", "b1"], [0, 1, -3, -3]
    v = View(names, hosts, dispatch, loads={"b0": 1}, delay_ms=(2.0, 7.0))
    r, q = rules("backup", v), Q(1)
    r.routed(q)
    if dispatch == "hedged":
        assert v.sent == [("e1", ROLE_DIRECT)] and v.timers == [7.0]
        r.hedge(q)
    assert v.sent == [("e1", ROLE_DIRECT), ("b1", ROLE_BACKUP)]
    ens = Q(-1)
    v.back(r, ens, "b1", ROLE_BACKUP)  # one generalist output answers an ensemble query too
    assert v.answers == [(HOW_BACKUP, 0b1000)]


def test_per_group_backups_keep_a_copy_in_its_querys_group_even_when_the_other_is_idle():
    # groups [0, 1] and [2, 3]; group 0's backup b00 is busier than group 1's b10
    names, hosts = ["e0", "e1", "e2", "e3", "b00", "b10"], [0, 1, 2, 3, -3, -3]
    for per_group, want in ((True, "b00"), (False, "b10")):
        v = View(names, hosts, "redundant", loads={"b00": 2}, groups=[[0, 1], [2, 3]], backups_per_group=per_group)
        rules("backup", v).routed(Q(1))
        assert v.sent == [("e1", ROLE_DIRECT), (want, ROLE_BACKUP)], per_group
    v = View(names, hosts, "redundant", loads={"b00": 2}, groups=[[0, 1], [2, 3]], backups_per_group=True)
    rules("backup", v).ensemble(Q(-1))  # (refused by the config; the rule falls back to every backup)
    assert v.sent[-1] == ("b10", ROLE_BACKUP)


def test_the_registry_states_each_kinds_facts():
    assert policies.KINDS == ("uncoded", "replication", "hedged", "coded", "backup", "parity")
    assert {k: c.delayed for k, c in policies.RULES.items() if c.delayed} == {
        "hedged": {"hedged"}, "coded": {"hedged"}, "backup": {"hedged"}}
    with pytest.raises(KeyError, match="unknown policy kind 'magic'.*uncoded"):
        policies.rules_for("magic")


class Mirror(Rules):
    """A policy made for this test: every routed query to its expert's last replica (never the expert)."""

    kind = "mirror"
    dispatches = ("direct",)

    def routed(self, q):
        self.s.send(q, self.s.hosts[q.model][-1], ROLE_DIRECT)

    def ensemble(self, q):
        for hosts in self.s.hosts:
            self.s.send(q, hosts[-1], ROLE_DIRECT)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_policy_added_in_one_class_is_simulated_by_both_engines(monkeypatch, engine):
    monkeypatch.setitem(policies.RULES, "mirror", Mirror)
    cfg = {"n_experts": 1, "r": 1, "traffic": {"rate_per_ms": 0.6}, "n_queries": 5000,
           "policies": ["uncoded", "mirror"]}
    res = sim.simulate(cfg, seed=5, engine=engine)
    d = res.draws
    svc = -np.log1p(-d.service_u[:, 1]) * d.task_factor[:, 1]  # the replica's (server 1's) own draws
    mirror = res.records[res.records["policy"] == "mirror"]
    np.testing.assert_allclose(mirror["latency_ms"].to_numpy(), lindley(d.arrival_ms, svc), rtol=0, atol=1e-9)
    assert set(mirror["answered_by"]) == {"replica"} and set(mirror["servers_used"]) == {"1"}
    uncoded = res.records[res.records["policy"] == "uncoded"]
    assert set(uncoded["servers_used"]) == {"0"}


def test_an_unregistered_kind_is_one_line():
    with pytest.raises(sim.SimConfigError, match="unknown policy kind 'mirror'"):
        sim.simulate({"n_experts": 1, "r": 1, "n_queries": 10, "traffic": {"rate_per_ms": 0.5}, "policies": ["mirror"]},
                     seed=0)


def test_balancers_pick_an_instance_of_the_expert():
    names, hosts = ["e0", "e1", "e0b", "e0c", "r0"], [0, 1, 0, 0, 0]
    # jsq: the fewest live tasks among the expert's own instances (never its replica), ties to the first
    v = View(names, hosts, "hedged", loads={"e0": 2, "e0b": 1, "e0c": 1, "r0": 0}, delay_ms=(1.0, 1.0))
    r = rules("hedged", v)
    r.routed(Q(0))
    assert v.sent == [("e0b", ROLE_DIRECT)] and v.timers == [1.0]
    # round robin: each expert's instances in turn, whatever their loads; another expert keeps its own turn
    v = View(names, hosts, "direct", loads={"e0": 9}, balancer="round_robin")
    r = rules("uncoded", v)
    for m in (0, 0, 1, 0, 0):
        r.routed(Q(m))
    assert [t for t, _ in v.sent] == ["e0", "e0b", "e1", "e0c", "e0"]
    # power of d: the instances the query's uniforms draw (without replacement), the least loaded of them
    q = Q(0)
    v = View(names, hosts, "direct", loads={"e0": 0, "e0b": 5, "e0c": 3}, balancer="power_of_d",
             balance={id(q): [0.5, 0.9]})
    rules("uncoded", v).routed(q)  # 0.5 of [e0, e0b, e0c] -> e0b; 0.9 of [e0, e0c] -> e0c; e0c has fewer
    assert v.sent == [("e0c", ROLE_DIRECT)]


def test_the_decode_group_takes_one_balanced_instance_of_each_other_expert():
    v = View(["e0", "e1", "e1b", "c0"], [0, 1, 1, CODED], "redundant", loads={"e1": 1})
    r, q = rules("coded", v), Q(0)
    r.routed(q)
    assert v.sent == [("e0", ROLE_DIRECT), ("e1b", ROLE_GROUP), ("c0", ROLE_GROUP)]
    v.back(r, q, "e1b", ROLE_GROUP)
    v.back(r, q, "c0", ROLE_GROUP)
    assert v.answers == [(HOW_DECODED, 0b1100)]
    # an output of a further instance of the expert is the expert's own answer, not a replica's
    v2 = View(["e0", "e0b", "r0"], [0, 0, 0], "jsq")
    v2.back(rules("replication", v2), Q(0), "e0b", ROLE_DIRECT)
    v2.back(rules("replication", v2), Q(0), "r0", ROLE_DIRECT)
    assert v2.answers == [(HOW_DIRECT, 0b010), (HOW_REPLICA, 0b100)]


def test_code_groups_decode_within_the_group():
    # experts 0, 2 coded by c0 (group 0) and 1, 3 by c1 (group 1)
    names, hosts = ["e0", "e1", "e2", "e3", "c0", "c1"], [0, 1, 2, 3, CODED, CODED]
    v = View(names, hosts, "redundant", groups=[[0, 2], [1, 3]])
    r, q = rules("coded", v), Q(2)
    r.routed(q)
    assert v.sent == [("e2", ROLE_DIRECT), ("e0", ROLE_GROUP), ("c0", ROLE_GROUP)]
    v.back(r, q, "e0", ROLE_GROUP)
    assert v.answers == []
    v.back(r, q, "c0", ROLE_GROUP)
    assert v.answers == [(HOW_DECODED, 0b010001)]  # two outputs: its group has two experts
    ens = Q(-1)
    for t in ("e0", "c0", "e1"):
        v.back(r, ens, t, ROLE_GROUP)
    assert len(v.answers) == 1  # three outputs, but group 1 has only one of the two it needs
    v.back(r, ens, "c1", ROLE_GROUP)
    assert v.answers[-1] == (HOW_DECODED, 0b110011)


@pytest.mark.parametrize("model", [0, 1])
def test_a_routed_hedge_is_one_copy_to_its_own_experts_least_loaded_replica(model):
    names, hosts = ["e0", "e1", "r0", "r1a", "r1b"], [0, 1, 0, 1, 1]
    v = View(names, hosts, "hedged", loads={"r1a": 1}, delay_ms=(3.0, 5.0))
    r, q = rules("hedged", v), Q(model)
    r.routed(q)
    assert v.timers == [(3.0, 5.0)[model]]
    r.hedge(q)
    assert v.sent[1:] == [(("r0", "r1b")[model], ROLE_HEDGE)]  # not the other expert's replicas


def test_an_ensemble_hedge_skips_exactly_the_covered_experts():
    names, hosts = ["e0", "e1", "r0", "r1"], [0, 1, 0, 1]
    v = View(names, hosts, "hedged", delay_ms=(1.0, 1.0))
    r, q = rules("hedged", v), Q(-1)
    v.back(r, q, "e1", ROLE_DIRECT)  # expert 1 in, expert 0 missing
    r.hedge(q)
    assert v.sent == [("r0", ROLE_HEDGE)]
