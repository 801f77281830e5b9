"""The generalist-backup policy: closed forms at vanishing load, hand traces through both engines, the capacity
check, and the promise that adding it leaves every other policy's numbers as they were."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_testutil import iid_mean_ci, measured

import sim
from policies.backup import backup_demand
from sim import SimConfigError
from sim.layout import check_stability


def _zero_load(cfg: dict, n: int = 40_000, model: int = 0, gap_ms: float = 200.0) -> sim.SimResult:
    """Queries so far apart that none ever waits: latency is the race between the expert and the backup."""
    tr = {"kind": "trace", "trace_times_ms": (np.arange(n) * gap_ms).tolist(), "trace_models": [model] * n}
    return sim.simulate(cfg | {"traffic": tr, "warmup_fraction": 0.0}, seed=5)


def _close(x: float, truth: float, half: float, what: str) -> None:
    assert half < 0.03 * abs(truth), f"{what}: interval too wide to test ({half:.3g})"
    assert abs(x - truth) <= half, f"{what}: simulated {x:.5f} +- {half:.4f}, closed form {truth:.5f}"


def _share_half(p: float, n: int) -> float:
    """Half-width (4 sigma) of a binomial share estimated from n queries."""
    return 4 * math.sqrt(p * (1 - p) / n)


EXPERT_MU, BACKUP_MU = 1.0, 2.0  # the generalist is faster here, so it wins often enough to be measured
SERVICE = {"expert": {"kind": "exponential", "mean_ms": 1 / EXPERT_MU},
           "backup": {"kind": "exponential", "mean_ms": 1 / BACKUP_MU}}


@pytest.mark.parametrize("model", [0, -1])
def test_redundant_zero_load_is_the_min_of_two_exponentials(model):
    """Expert (and, for an ensemble query with N = 1, the only expert) and backup start together: T = min(S1, S2)
    ~ Exp(mu1 + mu2), mean 1 / (mu1 + mu2); the backup answers with probability mu2 / (mu1 + mu2)."""
    res = _zero_load({"n_experts": 1, "r": 1, "service": SERVICE,
                      "policies": [{"kind": "backup", "dispatch": "redundant"}]}, model=model)
    x = measured(res, "backup-redundant")
    mean, half = iid_mean_ci(x)
    _close(mean, 1 / (EXPERT_MU + BACKUP_MU), half, "mean latency")
    p = BACKUP_MU / (EXPERT_MU + BACKUP_MU)
    share = res.summary["backup-redundant"]["backup_pct"] / 100
    _close(share, p, _share_half(p, len(x)), "backup share")
    assert res.summary["backup-redundant"]["direct_pct"] == pytest.approx(100 - share * 100)


def test_hedged_zero_load_closed_form():
    """T = min(S1, d + S2): E[T] = (1 - e^{-mu1 d}) / mu1 + e^{-mu1 d} / (mu1 + mu2) (memoryless S1 past d);
    the backup answers iff S1 > d + S2, with probability e^{-mu1 d} mu2 / (mu1 + mu2)."""
    d = 0.5
    res = _zero_load({"n_experts": 2, "r": 1, "service": SERVICE,
                      "policies": [{"kind": "backup", "dispatch": "hedged", "delay_ms": d}]}, model=1)
    x = measured(res, "backup")
    tail = math.exp(-EXPERT_MU * d)
    mean, half = iid_mean_ci(x)
    _close(mean, (1 - tail) / EXPERT_MU + tail / (EXPERT_MU + BACKUP_MU), half, "mean latency")
    p = tail * BACKUP_MU / (EXPERT_MU + BACKUP_MU)
    _close(res.summary["backup"]["backup_pct"] / 100, p, _share_half(p, len(x)), "backup share")


# ------------------------------------------------------------------------------------------- hand traces
def _trace(times: list[float], models: list[int], policy: dict, r: int = 1, **extra) -> dict:
    """Two experts taking 1 ms a task (expert 0 straggles x10 on every task), backups taking 2 ms."""
    return {
        "n_experts": 2, "r": r, "warmup_fraction": 0.0,
        "traffic": {"kind": "trace", "trace_times_ms": times, "trace_models": models},
        "service": {"expert": {"kind": "deterministic", "value_ms": 1.0},
                    "backup": {"kind": "deterministic", "value_ms": 2.0}},
        "stragglers": {"p": 1.0, "slowdown": 10.0, "servers": [0]},
        "policies": [policy],
    } | extra


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_hand_trace_a_straggler_is_answered_by_the_backup_at_delay_plus_pass(engine):
    """Query 0 (expert 0, straggling: 10 ms) is copied to the backup at the 3 ms hedge and answered there at
    3 + 2 = 5 ms; expert 0's task is cancelled at 5 ms (5 ms of its work thrown away). Query 1 (expert 1, 1 ms)
    is answered by its expert before any hedge; an ensemble query waits for the straggler until the hedge at
    3 ms, and the backup's one output answers it at 5 ms."""
    cfg = _trace([0.0, 100.0, 200.0], [0, 1, -1], {"kind": "backup", "delay_ms": 3.0})
    res = sim.simulate(cfg, seed=0, engine=engine)
    rec = res.records
    assert rec["latency_ms"].tolist() == pytest.approx([5.0, 1.0, 5.0])
    assert rec["answered_by"].astype(str).tolist() == ["backup", "direct", "backup"]
    assert rec["servers_used"].tolist() == ["2", "1", "2"]
    assert rec["n_tasks"].tolist() == [2, 1, 3]
    # query 0: 5 ms of expert 0 (cancelled) + 2 ms of the backup; the ensemble: 5 + 1 (expert 1 done) + 2
    assert rec["server_ms"].tolist() == pytest.approx([7.0, 1.0, 8.0])
    servers = res.servers.set_index("server")
    assert servers.loc[0, "cancelled_ms"] == pytest.approx(10.0)  # both of expert 0's tasks cut at 5 ms
    assert servers.loc[2, "hosts"] == "backup" and servers.loc[2, "busy_ms"] == pytest.approx(4.0)
    s = res.summary["backup"]
    assert s["backup_pct"] == pytest.approx(200 / 3) and s["direct_pct"] == pytest.approx(100 / 3)
    assert s["backup_servers"] == [2] and s["coded_servers"] == []


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_hand_trace_redundant_dispatch_and_the_least_loaded_backup(engine):
    """Redundant: both copies at once. Three queries for the straggling expert 0 at 0, 0.5 and 1 ms with two
    backup servers: the first goes to backup server 2 (tie: lowest index), the second to server 3 (2 holds one
    live task), the third to server 2 again (tie), where it waits until 2 ms. Each is answered by its backup at
    2, 2.5 and 4 ms; expert 0 serves query 0 from 0 to 2 ms (cut), query 1 from 2 to 2.5 (cut), and query 2
    from 2.5 to 4 ms (cut)."""
    cfg = _trace([0.0, 0.5, 1.0], [0, 0, 0], {"kind": "backup", "dispatch": "redundant"}, r=2)
    res = sim.simulate(cfg, seed=0, engine=engine)
    rec = res.records
    assert rec["servers_used"].tolist() == ["2", "3", "2"]
    assert rec["finish_ms"].tolist() == pytest.approx([2.0, 2.5, 4.0])
    assert rec["answered_by"].astype(str).tolist() == ["backup"] * 3
    servers = res.servers.set_index("server")
    assert servers.loc[0, "cancelled_ms"] == pytest.approx(4.0)
    assert servers.loc[[2, 3], "busy_ms"].tolist() == pytest.approx([4.0, 2.0])


def test_without_cancel_the_expert_task_runs_to_its_end():
    cfg = _trace([0.0], [0], {"kind": "backup", "delay_ms": 3.0, "cancel": False})
    res = sim.simulate(cfg, seed=0)
    assert res.records["latency_ms"].item() == pytest.approx(5.0)
    assert res.records["server_ms"].item() == pytest.approx(12.0)  # 10 ms of expert 0 + 2 ms of the backup
    assert res.servers["cancelled_ms"].sum() == 0


def test_finish_pass_lets_the_cancelled_pass_end_and_network_delays_add_up():
    """With finish_pass the cancelled straggler holds expert 0 only for its 1 ms pass; it was cut at 5 ms, past
    its pass, so it stops at once. With 0.25 ms out and back delays: hedge sent at 3, arrives at 3.25, done at
    5.25, back at 5.5."""
    cfg = _trace([0.0], [0], {"kind": "backup", "delay_ms": 3.0},
                 network={"out": {"kind": "deterministic", "value_ms": 0.25},
                          "back": {"kind": "deterministic", "value_ms": 0.25}},
                 service={"expert": {"kind": "deterministic", "value_ms": 1.0},
                          "backup": {"kind": "deterministic", "value_ms": 2.0},
                          "cancel_in_service": "finish_pass"})
    res = sim.simulate(cfg, seed=0)
    assert res.records["latency_ms"].item() == pytest.approx(5.5)
    assert res.records["answered_by"].astype(str).item() == "backup"
    # the cancel leaves the dispatcher at 5.5 and reaches expert 0 at 5.75 (it started at 0.25)
    assert res.servers.set_index("server").loc[0, "cancelled_ms"] == pytest.approx(5.5)


# -------------------------------------------------------------------------------------------- capacity
def test_backup_demand_closed_form_with_ensemble_queries():
    """lam = [0.5, 0.5] routed, 0.6 ensemble, experts serve 1/ms each: with a share y of ensemble queries on the
    backup, g(y) = 2 max(0, 0.5 + 0.6 (1 - y) - 1) + 0.6 y, smallest at y = 1/6: g = 0.1."""
    assert backup_demand(np.array([0.5, 0.5]), 0.6, [1.0, 1.0]) == pytest.approx(0.1)
    assert backup_demand(np.array([0.5, 0.3]), 0.0, [1.0, 1.0]) == 0.0
    assert backup_demand(np.array([1.5, 0.3]), 0.0, [1.0, 1.0]) == pytest.approx(0.5)
    # experts with room for every ensemble query: nothing is left to the backups (the minimum at y = 0)
    assert backup_demand(np.array([0.5, 0.5]), 0.3, [2.0, 2.0]) == 0.0
    # both experts overloaded even without ensemble queries: the backups take every ensemble query (y = 1) and
    # the excess, 2 x 0.5 + 0.3 (no y beyond 1 is a choice)
    assert backup_demand(np.array([1.5, 1.5]), 0.3, [1.0, 1.0]) == pytest.approx(1.3)


def _capacity_cfg(rate: float, backup_mean: float, ensemble: float = 0.0) -> dict:
    return {"n_experts": 2, "r": 1, "n_queries": 10,
            "traffic": {"rate_per_ms": rate, "weights": [3, 1], "ensemble_rate_per_ms": ensemble},
            "service": {"expert": {"kind": "exponential", "mean_ms": 1.0},
                        "backup": {"kind": "exponential", "mean_ms": backup_mean}},
            "policies": [{"kind": "backup"}]}


def test_stability_counts_what_the_backup_must_take():
    """Expert 0 gets 3/4 of 1.6/ms = 1.2/ms but serves 1/ms: the 0.2/ms left over fits a backup serving
    1/ms, not one serving 0.1/ms; expert 1's spare capacity cannot help (it hosts the other model)."""
    assert check_stability(sim.parse_config(_capacity_cfg(1.6, 1.0))) is None
    problem = check_stability(sim.parse_config(_capacity_cfg(1.6, 10.0)))
    assert problem is not None and "'backup'" in problem and "0.2/ms" in problem and "0.1/ms" in problem
    # the same loads under uncoded: refused whatever the backup, which uncoded does not have
    uncoded = _capacity_cfg(1.6, 1.0) | {"policies": ["uncoded"]}
    assert check_stability(sim.parse_config(uncoded)) is not None
    # ensemble queries count on both experts or once on the backup (0.5/ms each + 0.6/ms: 0.1/ms left over)
    ens = _capacity_cfg(1.0, 1.0, ensemble=0.6) | {"traffic": {"rate_per_ms": 1.0, "ensemble_rate_per_ms": 0.6}}
    assert check_stability(sim.parse_config(ens)) is None
    ens["service"]["backup"]["mean_ms"] = 12.5  # serves 0.08/ms < 0.1/ms
    assert "backup" in (check_stability(sim.parse_config(ens)) or "")


def test_unstable_backup_load_is_refused_without_a_horizon():
    cfg = _capacity_cfg(1.6, 10.0)
    del cfg["n_queries"]
    with pytest.raises(SimConfigError, match="unstable load: policy 'backup'"):
        sim.parse_config(cfg)


# -------------------------------------------------------------------------------------- config, naming
@pytest.mark.parametrize("patch, needle", [
    ({"policies": [{"kind": "backup", "dispatch": "sed"}]}, "unknown dispatch 'sed' (choose from hedged, redundant)"),
    ({"policies": [{"kind": "backup", "delay_ms": "soon"}]}, "delay_ms"),
    ({"r": 0, "policies": [{"kind": "backup"}]}, "needs r >= 1"),
    ({"service": {"backup": {"kind": "exponential", "mean_ms": -1}}}, "service.backup"),
])
def test_bad_backup_input_is_one_line(patch, needle):
    base = {"n_experts": 2, "r": 1, "traffic": {"rate_per_ms": 1.0}, "n_queries": 100}
    with pytest.raises(SimConfigError) as err:
        sim.simulate(base | patch, seed=0)
    assert "\n" not in str(err.value) and needle in str(err.value)


def test_names_and_defaults():
    cfg = sim.parse_config({"n_experts": 2, "r": 1, "traffic": {"rate_per_ms": 1.0}, "n_queries": 10,
                            "service": {"coded": {"kind": "deterministic", "value_ms": 0.7}},
                            "policies": [{"kind": "backup"}, {"kind": "backup", "dispatch": "redundant"}]})
    hedged, redundant = cfg.policies
    assert (hedged.name, hedged.dispatch, hedged.delay_ms) == ("backup", "hedged", "p95")
    assert (redundant.name, redundant.delay_ms) == ("backup-redundant", None)
    assert cfg.service.backup_dist().mean() == 0.7  # the generalist is the coded network unless told otherwise


def test_adding_a_backup_policy_changes_no_other_policy():
    """Common random numbers: every other policy's records are identical with and without a backup policy in
    the same config (the backup draws nothing of its own: its servers use the extra servers' streams)."""
    base = {"n_experts": 3, "r": 2, "n_queries": 6_000,
            "traffic": {"kind": "markov_hot", "rate_per_ms": 1.2, "strength": 0.5, "ensemble_rate_per_ms": 0.1},
            "stragglers": {"p": 0.05, "slowdown": 8.0},
            "policies": ["uncoded", {"kind": "replication"}, {"kind": "hedged", "delay_ms": "p90"},
                         {"kind": "coded", "dispatch": "hedged", "delay_ms": "p90"}]}
    without = sim.simulate(base, seed=9)
    with_backup = sim.simulate(base | {"policies": [*base["policies"], {"kind": "backup", "delay_ms": "p90"}]},
                               seed=9)
    cols = ["arrival_ms", "finish_ms", "latency_ms", "answer_mask", "n_tasks", "server_ms"]
    for policy in without.summary:
        a = without.records[without.records["policy"] == policy][cols].reset_index(drop=True)
        b = with_backup.records[with_backup.records["policy"] == policy][cols].reset_index(drop=True)
        assert a.equals(b), policy
        assert without.summary[policy]["p99_ms"] == with_backup.summary[policy]["p99_ms"]
    s = with_backup.summary["backup"]
    assert 0 < s["backup_pct"] < 100 and s["decoded_pct"] == s["replica_pct"] == s["hedge_pct"] == 0
    assert sum(s[f"{h}_pct"] for h in ("direct", "replica", "hedge", "decoded", "backup")) == pytest.approx(100)
