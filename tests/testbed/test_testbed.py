"""The real testbed: server processes over ZeroMQ, dispatch as the simulator's policies, cancellation, stragglers.

Known-answer traces are built so that one task straggles by a factor large enough (hundreds of forward passes)
that timing noise cannot change which path answers; the simulator on the same trace must agree query for query.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from models.networks import NetworkSpec, build_network
from testbed import LocalCluster, Policy, ServerSpec, Workload, serve

SPEC = NetworkSpec(arch="cnn", width=8)


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> tuple[list[Path], Path]:
    """Three random tiny CNNs (two 'experts', one 'coded') and 40 input rows."""
    root = tmp_path_factory.mktemp("testbed-nets")
    folders = []
    for k in range(3):
        torch.manual_seed(k)
        folder = root / f"net-{k}"
        folder.mkdir()
        (folder / "network.json").write_text(SPEC.model_dump_json())
        save_file(build_network(SPEC).state_dict(), str(folder / "weights.safetensors"))
        folders.append(folder)
    x = np.random.default_rng(0).standard_normal((40, 1, 28, 28)).astype(np.float32)
    np.save(root / "inputs.npy", x)
    return folders, root / "inputs.npy"


@pytest.fixture(scope="module")
def cluster(nets):
    folders, inputs = nets
    with LocalCluster([ServerSpec(tuple(folders))] * 3, inputs) as c:
        yield c


def _trace(arrivals, models, factors) -> Workload:
    n = len(arrivals)
    return Workload(np.asarray(arrivals, float), np.asarray(models, np.int64), np.arange(n) % 40,
                    np.asarray(factors, float))


def test_outputs_are_the_real_networks_outputs(cluster, nets):
    folders, inputs = nets
    work = _trace([0.0, 5.0, 10.0], [0, 1, 0], np.ones((3, 3)))
    policy = Policy("uncoded", "uncoded", "direct", (0, 1, -2), 2)
    result = serve(cluster.sockets, policy, work)
    x = torch.from_numpy(np.load(inputs))
    for q, server in enumerate([0, 1, 0]):
        model = build_network(SPEC)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(folders[server] / "weights.safetensors")))
        with torch.no_grad():
            want = model.eval()(x[q : q + 1])[0].numpy()
        np.testing.assert_allclose(result.outputs[q, server], want, rtol=1e-5, atol=1e-6)
    assert np.isnan(result.outputs[0, 1]).all()  # nothing from a server the query never used


def test_stall_holds_a_straggler_for_factor_times_its_compute(cluster):
    work = _trace([0.0, 50.0], [0, 0], [[300.0, 1, 1], [1, 1, 1]])
    result = serve(cluster.sockets, Policy("uncoded", "uncoded", "direct", (0, 1, -2), 2), work)
    task = result.tasks.iloc[0]
    assert task["status"] == "done" and task["passes"] == 1
    assert task["held_ms"] == pytest.approx(299 * task["compute_ms"], rel=0.05, abs=0.5)
    assert result.records["latency_ms"].iloc[0] >= task["compute_ms"] + task["held_ms"]


def test_compute_mode_keeps_computing(cluster):
    work = _trace([0.0], [0], [[50.0, 1, 1]])
    work.mode = "compute"
    result = serve(cluster.sockets, Policy("uncoded", "uncoded", "direct", (0, 1, -2), 2), work)
    task = result.tasks.iloc[0]
    assert task["passes"] >= 10  # (f − 1) × one pass spent on further passes, not idling
    assert task["held_ms"] >= 45 * task["compute_ms"] * 0.5


def _simulated(policy_table: dict, work: Workload, service_ms: float, n_experts: int = 2,
               deployment: dict | None = None) -> pd.DataFrame:
    """The simulator on exactly this trace and these straggler factors, deterministic service (3 servers)."""
    from policies.codes import HOW
    from sim import parse_config
    from sim.api import run_plan
    from sim.draws import Draws
    from sim.plan import make_plan

    base = sum((deployment or {}).get("instances", [1] * n_experts))
    cfg = parse_config({"n_experts": n_experts, "r": 3 - base, "policies": [policy_table],
                        "deployment": deployment or {},
                        "traffic": {"kind": "trace", "trace_times_ms": work.arrival_ms.tolist(),
                                    "trace_models": work.model.tolist()},
                        "service": {"expert": {"kind": "deterministic", "value_ms": service_ms}}})
    draws = Draws(0, work.arrival_ms, work.model, np.zeros(work.n, np.int64), np.full((work.n, 3), 0.5),
                  work.factor)
    out = run_plan(make_plan(cfg, cfg.policies[0], draws), draws)
    return pd.DataFrame({"answered_by": [HOW[h] for h in out.how],
                         "servers_used": [",".join(str(b) for b in range(3) if (int(m) >> b) & 1) for m in out.mask],
                         "finish_ms": out.finish_ms})


# query 0 (expert 0) straggles hard on server 0, and its decode group (servers 1 and 2) takes 5 passes, so that
# server 0 has started it before a decoded answer cancels it (with 1-pass decodes sent at once, a server 0 slow to
# wake was still queued when the cancel came: a race, seen once in CI); queries 1 and 2 are ordinary, but server 2
# is slow for them so that a direct answer beats decoding by far (no race between equally fast paths)
KNOWN = _trace([0.0, 1.0, 300.0], [0, 1, 0], [[2000.0, 5.0, 5.0], [1, 1, 20.0], [1, 1, 20.0]])


@pytest.mark.parametrize("policy, table, how, servers", [
    (Policy("hedged", "hedged", "jsq", (0, 1, 0), 2, delay_ms=(10.0, 10.0)),
     {"kind": "hedged", "delay_ms": 10.0, "replica_of": [0]}, "hedge", "2"),
    (Policy("coded", "coded", "hedged", (0, 1, -1), 2, delay_ms=(10.0, 10.0)),
     {"kind": "coded", "dispatch": "hedged", "delay_ms": 10.0}, "decoded", "1,2"),
    (Policy("coded-red", "coded", "redundant", (0, 1, -1), 2),
     {"kind": "coded", "dispatch": "redundant"}, "decoded", "1,2"),
])
def test_known_trace_answered_as_the_simulator_says(cluster, policy, table, how, servers):
    result = serve(cluster.sockets, policy, KNOWN)
    real = result.records
    sim = _simulated(table | {"name": policy.name}, KNOWN, float(result.tasks["compute_ms"].median()))
    assert real["answered_by"].iloc[0] == how == sim["answered_by"].iloc[0]
    mask = int(real["answer_mask"].iloc[0])
    assert ",".join(str(b) for b in range(3) if (mask >> b) & 1) == servers == sim["servers_used"].iloc[0]
    assert list(real["answered_by"].iloc[1:]) == list(sim["answered_by"].iloc[1:])
    straggler = result.tasks[(result.tasks["query_id"] == 0) & (result.tasks["server"] == 0)].iloc[0]
    assert straggler["status"] == "dropped_in_service"  # its stall was cut by the cancel ...
    assert straggler["held_ms"] < 0.5 * 1999 * straggler["compute_ms"]  # ... long before it would have ended
    assert real["latency_ms"].iloc[0] < 0.5 * 1999 * straggler["compute_ms"]


def test_the_frontend_spends_a_hedge_budget_as_the_simulator_does(cluster):
    """Budget 10 % with room for one hedge: query 0's straggler is hedged (the bucket empties), query 1's (0.1 of a
    hedge back) is not and waits for its own expert, as the simulator's rules say on the same trace."""
    options = (("hedge_budget_burst", 1), ("hedge_budget_pct", 10.0))
    policy = Policy("hedged-budget", "hedged", "hedged", (0, 1, 0), 2, delay_ms=(10.0, 10.0), options=options)
    work = _trace([0.0, 200.0], [0, 0], [[60.0, 1, 1], [60.0, 1, 1]])
    result = serve(cluster.sockets, policy, work)
    real = result.records
    sim = _simulated({"kind": "hedged", "delay_ms": 10.0, "replica_of": [0], "hedge_budget_pct": 10.0,
                      "hedge_budget_burst": 1, "name": policy.name}, work,
                     float(result.tasks["compute_ms"].median()))
    assert list(real["answered_by"]) == ["hedge", "direct"] == list(sim["answered_by"])
    assert sorted(result.tasks.loc[result.tasks["query_id"] == 1, "server"]) == [0]  # no copy to the replica
    assert list(real["hedge_denied"]) == [False, True]  # the records say which hedge the budget held back


def test_cancel_drops_a_queued_copy(cluster):
    # query 0 (expert 0) straggles on server 0 and on the coded server 2, so it holds both for a long time;
    # query 1 (expert 1) is answered directly by server 1, and its group copies, still queued behind query 0's
    # stragglers on servers 0 and 2, are dropped there
    work = _trace([0.0, 0.5], [0, 1], [[2000.0, 1, 2000.0], [1, 1, 1]])
    policy = Policy("coded", "coded", "redundant", (0, 1, -1), 2)
    result = serve(cluster.sockets, policy, work)
    tasks = result.tasks.set_index(["query_id", "server"])
    assert result.records["answered_by"].iloc[1] == "direct"
    assert tasks.loc[(1, 0), "status"] == "dropped_queued"
    assert tasks.loc[(1, 2), "status"] == "dropped_queued"
    sim = _simulated({"kind": "coded", "dispatch": "redundant"}, work, float(tasks["compute_ms"].median()))
    assert sim["answered_by"].iloc[1] == "direct" and sim["servers_used"].iloc[1] == "1"


def test_jsq_sends_the_second_query_to_the_replica(cluster):
    work = _trace([0.0, 0.1, 0.2], [0, 0, 1], [[500.0, 1, 1], [1, 1, 1], [1, 1, 1]])
    policy = Policy("replication", "replication", "jsq", (0, 1, 0), 2)
    result = serve(cluster.sockets, policy, work)
    assert list(result.tasks["server"]) == [0, 2, 1]
    assert list(result.records["answered_by"]) == ["direct", "replica", "direct"]
    assert result.records["latency_ms"].iloc[1] < result.records["latency_ms"].iloc[0]


def test_a_policy_added_in_one_class_is_served_for_real_as_simulated(cluster, monkeypatch):
    # the frontend dispatches through the policy registry: a policy registered only here (every query to its
    # expert's last replica) is served, and the simulator on the same trace answers each query the same way
    import policies
    from policies.codes import ROLE_DIRECT
    from policies.rules import Rules

    class Mirror(Rules):
        kind, dispatches = "mirror", ("direct",)

        def routed(self, q):
            self.s.send(q, self.s.hosts[q.model][-1], ROLE_DIRECT)

        def ensemble(self, q):
            for hosts in self.s.hosts:
                self.s.send(q, hosts[-1], ROLE_DIRECT)

    monkeypatch.setitem(policies.RULES, "mirror", Mirror)
    work = _trace([0.0, 0.1, 0.2], [0, 1, -1], [[1, 1, 1]] * 3)
    result = serve(cluster.sockets, Policy("mirror", "mirror", "direct", (0, 1, 0), 2), work)
    assert list(result.tasks["server"]) == [2, 1, 2, 1]
    sim = _simulated({"kind": "mirror", "replica_of": [0]}, work, float(result.tasks["compute_ms"].median()))
    assert list(result.records["answered_by"]) == list(sim["answered_by"]) == ["replica", "direct", "replica"]
    servers = [",".join(str(b) for b in range(3) if (int(m) >> b) & 1) for m in result.records["answer_mask"]]
    assert servers == list(sim["servers_used"]) == ["2", "1", "1,2"]


@pytest.mark.parametrize("balancer, arrivals, models, servers", [
    # round robin takes turns whatever the loads: the servers are known whatever the timing
    ("round_robin", [0.0, 0.1, 0.2, 5.0, 30.0], [0, 0, 1, 0, 0], [0, 2, 1, 0, 2]),
    # jsq: query 0 holds server 0 for 500 passes (25 ms at the least), so query 1, sent 0.1 ms later, finds it busy
    # and server 2 idle whatever the machine's load (later choices would depend on when tasks end: not asserted)
    ("jsq", [0.0, 0.1], [0, 0], [0, 2]),
])
def test_an_expert_with_two_instances_is_balanced_as_the_simulator_balances(cluster, balancer, arrivals, models,
                                                                           servers):
    # expert 0 on servers 0 and 2 (its second instance), expert 1 on server 1
    work = _trace(arrivals, models, [[500.0, 1, 1]] + [[1, 1, 1]] * (len(arrivals) - 1))
    policy = Policy("uncoded", "uncoded", "direct", (0, 1, 0), 2, n_base=3, balancer=balancer)
    result = serve(cluster.sockets, policy, work)
    assert list(result.tasks["server"]) == servers
    sim = _simulated({"kind": "uncoded"}, work, float(result.tasks["compute_ms"].median()),
                     deployment={"instances": [2, 1], "balancer": balancer})
    assert list(sim["servers_used"]) == [str(s) for s in servers]
    assert list(result.records["answered_by"]) == list(sim["answered_by"]) == ["direct"] * len(servers)


def test_ctrl_c_leaves_no_process(nets, tmp_path):
    folders, inputs = nets
    script = tmp_path / "serve_forever.py"
    script.write_text(textwrap.dedent(f"""
        import json, signal, numpy as np
        from pathlib import Path
        from testbed import LocalCluster, ServerSpec, Policy, Workload, serve
        # Ctrl-C as a terminal gives it, even when the suite itself was started in the background (where a
        # shell makes children ignore SIGINT, and Python then installs no handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        folders = {[str(f) for f in folders]!r}
        with LocalCluster([ServerSpec(tuple(Path(f) for f in folders))] * 3, Path({str(inputs)!r})) as c:
            print(json.dumps(c.pids), flush=True)
            n = 200000
            work = Workload(np.arange(n) * 1.0, np.zeros(n, np.int64), np.zeros(n, np.int64), np.ones((n, 3)))
            serve(c.sockets, Policy("u", "uncoded", "direct", (0, 1, -2), 2), work)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    pids = json.loads(proc.stdout.readline())
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    assert "KeyboardInterrupt" in proc.stderr.read()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_servers_exit_when_the_frontend_is_killed(nets, tmp_path):
    folders, inputs = nets
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(f"""
        import json, time
        from pathlib import Path
        from testbed import LocalCluster, ServerSpec
        with LocalCluster([ServerSpec(tuple(Path(f) for f in {[str(f) for f in folders]!r}))] * 2,
                          Path({str(inputs)!r})) as c:
            print(json.dumps(c.pids), flush=True)
            time.sleep(600)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    pids = json.loads(proc.stdout.readline())
    proc.kill()  # no chance to clean up: the servers notice their parent is gone
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_ensemble_query_decodes_around_a_straggler(cluster):
    # an ensemble query needs every expert's answer; coded redundant sends it to all three servers and answers
    # from the first two back — around server 0, which straggles hard — by decoding, as the simulator does
    work = _trace([0.0, 300.0], [-1, -1], [[2000.0, 1, 1], [1, 1, 20.0]])
    result = serve(cluster.sockets, Policy("coded-red", "coded", "redundant", (0, 1, -1), 2), work)
    sim = _simulated({"kind": "coded", "dispatch": "redundant"}, work, float(result.tasks["compute_ms"].median()))
    real = result.records
    assert real["answered_by"].iloc[0] == "decoded" == sim["answered_by"].iloc[0]
    assert int(real["answer_mask"].iloc[0]) == 0b110 and sim["servers_used"].iloc[0] == "1,2"
    assert real["answered_by"].iloc[1] == "direct" == sim["answered_by"].iloc[1]  # both experts beat the slow coded
    assert int(real["answer_mask"].iloc[1]) == 0b011 and sim["servers_used"].iloc[1] == "0,1"


def _forward(folder: Path, x: np.ndarray) -> np.ndarray:
    from safetensors.torch import load_file

    model = build_network(SPEC)
    model.load_state_dict(load_file(str(folder / "weights.safetensors")))
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def _servers(mask: int) -> str:
    return ",".join(str(b) for b in range(3) if (int(mask) >> b) & 1)


def _judged_as_the_simulator_joins(result, policy: Policy, nets, n_experts: int) -> np.ndarray:
    """Correctness of every answer from the outputs that came back, and the simulator-join's on the same answers,
    with labels set so that only the generalist's argmax over the routed expert's own classes is right: a backup
    answer judged on another network's output, or over every class, is wrong."""
    from scenarios.points import AnswerTables, join_correctness
    from scenarios.testbed_run import correct_from_outputs, host_names

    folders, inputs = nets
    x = np.load(inputs)
    experts = np.stack([_forward(folders[i], x) for i in range(n_experts)])
    generalist = _forward(folders[policy.backup_net], x)
    task = np.ones((n_experts, generalist.shape[1]), bool)
    task[:, np.unique(generalist[:3].argmax(-1))] = False  # the served rows' overall argmax: in no task
    labels = np.where(task[0], generalist, -np.inf).argmax(-1)
    routed = AnswerTables(labels, np.array([0, 40]), experts[:1], generalist[None], np.ones((1, 1)), generalist,
                          task[:1])
    answers = routed if n_experts == 1 else AnswerTables(labels, np.array([0, 20, 40]), experts, generalist[None],
                                                         np.ones((1, 2)), generalist, task)
    records = result.records.assign(sample_id=result.records["row"])
    measured = correct_from_outputs(records, result.outputs, answers, policy.hosts)
    joined = join_correctness(records, answers, n_experts, host_names(policy.hosts))
    np.testing.assert_array_equal(measured, joined)
    return measured


# one expert (server 0) and two backup servers (1, 2) hosting the generalist (network 2). Query 0 straggles hard
# on the expert: its backup copy goes to server 1 (both backups idle: the lower index). Query 1 straggles on the
# expert and, less, on backup server 1, so server 1 still holds it when query 2 (an ordinary query, queued behind
# query 1 at the expert) sends its copy: to server 2, the backup with fewer live tasks
CANCELLED = {"dropped_in_service", "dropped_queued"}  # a cancelled task; "done" means it was not cancelled
# (a straggle is (f - 1) x the pass as it ran, and a pass after idling can run several times slower than a busy
# one: the expert's factor is 20x the backup's, so query 1's backup answers first even then)
BACKUP_TRACE = _trace([0.0, 300.0, 312.0], [0, 0, 0], [[4000.0, 1, 1], [4000.0, 200.0, 1], [1, 1, 1]])


@pytest.mark.parametrize("dispatch", ["hedged", "redundant"])
def test_a_straggling_experts_query_is_answered_by_the_least_loaded_backup(cluster, nets, dispatch):
    policy = Policy("backup", "backup", dispatch, (0, -3, -3), 1, delay_ms=(10.0,), backup_net=2)
    result = serve(cluster.sockets, policy, BACKUP_TRACE)
    real, tasks = result.records, result.tasks.set_index(["query_id", "server"])
    c = float(result.tasks["compute_ms"].median())
    sim = _simulated({"kind": "backup", "dispatch": dispatch, "delay_ms": 10.0, "name": "backup"}, BACKUP_TRACE, c,
                     n_experts=1)
    assert list(real["answered_by"]) == ["backup"] * 3 == list(sim["answered_by"])
    assert [_servers(m) for m in real["answer_mask"]] == ["1", "1", "2"] == list(sim["servers_used"])
    # the expert's copies were cancelled: cut in its straggle (queries 0, 1) or dropped from its queue (query 2)
    statuses = [tasks.loc[(q, 0), "status"] for q in range(3)]
    if dispatch == "hedged":  # the copy goes 10 ms later: the expert is surely inside its straggle by then
        assert statuses == ["dropped_in_service", "dropped_in_service", "dropped_queued"]
    else:  # sent together: a loaded machine may deliver the cancel before the expert has read its task
        assert set(statuses[:2]) <= CANCELLED and statuses[2] == "dropped_queued"
    if statuses[0] == "dropped_in_service":  # its straggle was cut, not served to the end
        assert tasks.loc[(0, 0), "held_ms"] < 0.5 * 3999 * tasks.loc[(0, 0), "compute_ms"]
    else:  # dropped before it ran: it never held the server
        assert np.isnan(tasks.loc[(0, 0), "held_ms"])
    assert real["latency_ms"].iloc[0] < (12.0 if dispatch == "hedged" else 2.0) + 20 * c
    # the generalist's real output came back and nothing from the cancelled expert
    x = np.load(nets[1])
    for q, server in enumerate([1, 1, 2]):
        np.testing.assert_allclose(result.outputs[q, server], _forward(nets[0][2], x[q : q + 1])[0], rtol=1e-5,
                                   atol=1e-6)
        assert np.isnan(result.outputs[q, 0]).all()
    assert _judged_as_the_simulator_joins(result, policy, nets, 1).all()


@pytest.mark.parametrize("dispatch", ["hedged", "redundant"])
def test_the_backup_answers_a_whole_ensemble_query(cluster, nets, dispatch):
    # an ensemble query goes to both experts and one backup; expert 0 straggles, so the backup's single output
    # answers the whole query. The second is answered by both experts (its backup copy, if sent, is slow)
    # (a hedge after 30 ms: a loaded machine can take over 10 ms to answer query 1 with both experts)
    work = _trace([0.0, 300.0], [-1, -1], [[20000.0, 1, 1], [1, 1, 20.0]])
    policy = Policy("backup", "backup", dispatch, (0, 1, -3), 2, delay_ms=(30.0, 30.0), backup_net=2)
    result = serve(cluster.sockets, policy, work)
    real, tasks = result.records, result.tasks.set_index(["query_id", "server"])
    sim = _simulated({"kind": "backup", "dispatch": dispatch, "delay_ms": 30.0, "name": "backup"}, work,
                     float(result.tasks["compute_ms"].median()))
    assert list(real["answered_by"]) == ["backup", "direct"] == list(sim["answered_by"])
    assert [_servers(m) for m in real["answer_mask"]] == ["2", "0,1"] == list(sim["servers_used"])
    # cancelled, never served to the end: inside its pass or straggle, or — when the cancel overtakes the task on a
    # loaded machine (the copies are sent together in redundant mode) — still unread in the server's queue
    assert tasks.loc[(0, 0), "status"] in (CANCELLED if dispatch == "redundant" else {"dropped_in_service"})
    assert (1, 2) not in tasks.index if dispatch == "hedged" else tasks.loc[(1, 2), "status"] in CANCELLED
    _judged_as_the_simulator_joins(result, policy, nets, 2)


def test_a_running_hedge_delay_follows_the_direct_answers_served(cluster):
    """Ten ordinary queries for expert 0, 5 ms apart, then one that straggles x2000 on its expert's server. The
    delay starts at 5 s (fixed, the straggler would answer directly after its hold); running at the median of the
    last five answers, it is by the straggler's arrival what numpy makes of the real records (each answer its
    latency if direct, else inf, in the order answered), so the straggler is hedged to the replica, as the
    simulator hedges it. (An ordinary query slower than that median is hedged too, and may be answered by its
    copy: timing decides, so only the straggler's answer is asserted.)"""
    n = 11
    factors = [[1.0, 1.0, 1.0]] * (n - 1) + [[2000.0, 1.0, 1.0]]
    work = _trace([5.0 * k for k in range(n)], [0] * n, factors)
    policy = Policy("hedged", "hedged", "jsq", (0, 1, 0), 2, delay_ms=(5000.0, 5000.0), delay_quantile=50.0,
                    delay_window=5)
    result = serve(cluster.sockets, policy, work)
    rec, tasks = result.records, result.tasks
    assert rec["answered_by"].iloc[-1] == "hedge"
    before = rec[rec["finish_ms"] <= rec["arrival_ms"].iloc[-1]].sort_values("finish_ms")
    values = np.where(before["answered_by"] == "direct", before["latency_ms"], np.inf)[-5:]
    expected = float(np.percentile(values, 50, method="inverted_cdf"))
    if np.isinf(expected):
        expected = float(values[np.isfinite(values)].max())
    hedge = tasks[(tasks["query_id"] == n - 1) & (tasks["server"] == 2)].iloc[0]
    assert hedge["due_ms"] - rec["arrival_ms"].iloc[-1] == pytest.approx(expected, abs=1e-6)
    fixed = serve(cluster.sockets, Policy("hedged", "hedged", "jsq", (0, 1, 0), 2, delay_ms=(5000.0, 5000.0)), work)
    assert set(fixed.records["answered_by"]) == {"direct"}
    sim = _simulated({"kind": "hedged", "delay_ms": 5000.0, "replica_of": [0], "delay_update": "running",
                      "delay_quantile": 50.0, "delay_window": 5, "name": "hedged"}, work,
                     float(tasks["compute_ms"].median()))
    assert sim["answered_by"].iloc[-1] == "hedge"


def test_the_frontend_does_not_wake_for_the_timers_of_answered_queries(cluster):
    """Twenty queries for expert 0, 30 ms apart, each answered in a few ms, under uncoded and under hedging to its
    replica after 15 ms: the hedge timers of answered queries are dropped, so hedging wakes the frontend about as
    often as uncoded does (a timer kept per query would wake it twenty more times; a query that really is hedged
    adds a few)."""
    n = 20
    work = _trace([30.0 * k for k in range(n)], [0] * n, [[1.0, 1.0, 1.0]] * n)  # all for expert 0, hedged
    plain = serve(cluster.sockets, Policy("uncoded", "uncoded", "direct", (0, 1, -2), 2), work)
    hedged = serve(cluster.sockets, Policy("hedged", "hedged", "jsq", (0, 1, 0), 2, delay_ms=(15.0, 15.0)), work)
    hedges = int((hedged.records["n_tasks"] > 1).sum())
    assert plain.facts["loop_wakes"] >= n  # it waited for every arrival
    assert hedged.facts["loop_wakes"] <= plain.facts["loop_wakes"] + 3 * hedges + n // 2


# parity (coding over queries), three servers: experts 0 and 1, a parity server (2) running network 2 as every
# expert's parity network. Query 0 (expert 1) is answered at once; query 1 (expert 0) straggles 400x. They form a
# group in arrival order (k = 3, never filled): its timer — set on the group's own carrier when query 0 arrived —
# fires at 5 ms although query 0 is answered by then, and closes the group of two. Query 2 is alone in its group.
PARITY_TRACE = _trace([0.0, 1.0, 300.0], [1, 0, 0], [[1, 1, 1], [400.0, 1, 1], [1, 1, 1]])


@pytest.mark.parametrize("partial, how", [("send", ["direct", "decoded", "direct"]),
                                          ("drop", ["direct", "direct", "direct"])])
def test_a_parity_group_is_encoded_served_and_decoded_as_the_simulator_says(cluster, nets, partial, how):
    from policies.codes import PARITY, ROLE_PARITY
    from scenarios.testbed_run import parity_decoded_outputs

    options = {"k": 3, "group_timeout_ms": 5.0, "partial": partial}
    policy = Policy("parity", "parity", "any", (0, 1, PARITY), 2, options=tuple(sorted(options.items())),
                    parity_nets=(2, 2))
    result = serve(cluster.sockets, policy, PARITY_TRACE)
    real, tasks = result.records, result.tasks
    sim = _simulated({"kind": "parity", "dispatch": "any", "name": "parity", **options}, PARITY_TRACE,
                     float(tasks["compute_ms"].median()))
    assert list(real["answered_by"]) == how == list(sim["answered_by"])
    assert [_servers(m) for m in real["answer_mask"]] == list(sim["servers_used"])
    parity = tasks[tasks["role"] == ROLE_PARITY]
    if partial == "drop":
        assert parity.empty and list(real["parity_others"]) == ["", "", ""]
        return
    assert len(parity) == 1  # query 2's lone group sends nothing
    task = parity.iloc[0]
    assert (task["server"], task["net"], task["query_id"]) == (2, 2, 1)
    assert task["due_ms"] == pytest.approx(5.0) and task["sent_ms"] >= 5.0  # sent by the timer, not an arrival
    assert list(real["parity_others"]) == ["", "0", ""] and _servers(real["answer_mask"].iloc[1]) == "1,2"
    folders, inputs = nets
    x = np.load(inputs)
    rows = PARITY_TRACE.row
    encoded = _forward(folders[2], x[rows[0]:rows[0] + 1] + x[rows[1]:rows[1] + 1])[0]
    for member in (0, 1):  # the parity output, kept for each member of its group
        np.testing.assert_allclose(result.outputs[member, 2], encoded, rtol=1e-4, atol=1e-5)
    decoded = parity_decoded_outputs(real, result.outputs, policy.hosts, np.array([1]))[0]
    np.testing.assert_allclose(decoded, encoded - _forward(folders[1], x[rows[0]:rows[0] + 1])[0], rtol=1e-4,
                               atol=1e-5)
    straggler = tasks[(tasks["query_id"] == 1) & (tasks["server"] == 0)].iloc[0]
    assert straggler["status"] == "dropped_in_service"  # the decode cut its straggle


def test_cells_keep_every_query_in_its_cell_as_the_simulator_does(cluster):
    # one expert on two instances in two cells: query q goes to cell q mod 2, even when the other cell's instance
    # is idle — query 2 (at 30 ms, when query 1 is long done) waits behind query 0's straggle of 2,000 passes
    # (100 ms at the least) on server 0, where join-shortest-queue over both instances sends it to server 1
    from policies.codes import HOW
    from sim import parse_config
    from sim.api import run_plan
    from sim.draws import Draws
    from sim.plan import make_plan

    arrivals, models = [0.0, 0.1, 30.0, 40.0], [0, 0, 0, 0]
    work = Workload(np.asarray(arrivals), np.zeros(4, np.int64), np.arange(4) % 40,
                    np.asarray([[2000.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]))
    policy = Policy("uncoded", "uncoded", "direct", (0, 0), 1, n_base=2, balancer="jsq", cells=2)
    result = serve(cluster.sockets[:2], policy, work)
    assert list(result.tasks["server"]) == [0, 1, 0, 1]
    cfg = parse_config({"n_experts": 1, "r": 0, "policies": ["uncoded"], "deployment": {"instances": 2, "cells": 2},
                        "traffic": {"kind": "trace", "trace_times_ms": arrivals, "trace_models": models},
                        "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}}})
    draws = Draws(0, work.arrival_ms, work.model, np.zeros(4, np.int64), np.full((4, 2), 0.5), work.factor)
    out = run_plan(make_plan(cfg, cfg.policies[0], draws), draws)
    assert [int(m).bit_length() - 1 for m in out.mask] == [0, 1, 0, 1]
    assert [HOW[h] for h in out.how] == list(result.records["answered_by"]) == ["direct"] * 4


def test_a_coded_server_runs_its_group_s_model_in_every_cell():
    # four experts in two groups, one instance each per cell, two cells, r = 1: servers 8, 9 are group 0's coded
    # servers in cells 0, 1 and run its model (network N + 0), servers 10, 11 group 1's (N + 1)
    from scenarios.testbed_run import policy_of
    from sim import parse_config
    from sim.draws import draw
    from sim.plan import make_plan

    cfg = parse_config({"n_experts": 4, "r": 1, "n_queries": 10, "traffic": {"rate_per_ms": 0.1},
                        "policies": [{"kind": "coded", "dispatch": "hedged", "delay_ms": 5.0}],
                        "deployment": {"instances": 2, "cells": 2, "groups": [[0, 1], [2, 3]]}})
    policy = policy_of(make_plan(cfg, cfg.policies[0], draw(cfg, 0)))
    assert policy.hosts[8:] == (-1, -1, -1, -1) and policy.cells == 2
    assert [policy.network_of(s) for s in range(12)] == [0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 5, 5]
