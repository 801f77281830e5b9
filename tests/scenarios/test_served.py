"""The served latency model: a hand-written calibration turned into what the simulator is given, checked against
numbers worked out on paper (tests/calibration_testutil.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from scenarios import served
from sim import parse_config, simulate
from sim.config import Dispatcher
from tests import calibration_testutil as cu

# the work beside the pass at an isolated pass of 1.5 ms: between the hand calibration's sizes 1 ms (0.6) and 4 ms
# (1.8), linear in log pass time
OV_15 = 0.6 + np.log(1.5) / np.log(4.0) * (1.8 - 0.6)

def _pure_sim(rates=(0.05, 0.05), means=(1.0, 1.0), **extra) -> dict:
    return {"n_experts": 2, "r": 1, "n_queries": 4000, "warmup_fraction": 0.0,
            "traffic": {"kind": "poisson", "rates_per_ms": list(rates)},
            "service": {"experts": [{"kind": "deterministic", "value_ms": m} for m in means]},
            "network": {"out": {"kind": "deterministic", "value_ms": 0.25},
                        "back": {"kind": "deterministic", "value_ms": 0.5}},
            "policies": ["uncoded", {"kind": "hedged", "delay_ms": "p50"},
                         {"kind": "backup", "dispatch": "hedged", "delay_ms": 3.0}], **extra}


def test_served_samples_follow_the_calibration_line() -> None:
    cal = cu.hand_calibration()
    assert served.served_samples(cal, np.array([0.1, 1.0, 2.0])) == pytest.approx([0.35, 1.7, 3.2])
    # less the per-task work the simulator adds beside every pass (service.overhead_ms)
    assert served.served_samples(cal, np.array([0.1, 1.0, 2.0]), 0.3) == pytest.approx([0.05, 1.4, 2.9])
    # the work beside the pass: a busy server's cycle (0.2 + 1.5 x pass) less its pass in service (1.1 x pass), at
    # the measured sizes 0.1 / 1 / 4 ms, linear in log pass between them and held beyond
    assert cal.work_beside_pass_ms(1.0) == pytest.approx(0.2 + 0.4 * 1.0)
    assert cal.work_beside_pass_ms(2.0) == pytest.approx(0.6 + 0.5 * (1.8 - 0.6))  # log 2 is half way to log 4
    assert cal.work_beside_pass_ms(0.01) == pytest.approx(0.2 + 0.4 * 0.1)


def test_percentile_delay_is_of_the_primary_served_response() -> None:
    # a query alone at its expert (rate low enough that a query very rarely waits) takes out + pass + back
    # (no wake-up costs in this config):
    # expert 0 0.25 + 1 + 0.5 = 1.75 ms, expert 1 0.25 + 3 + 0.5 = 3.75 ms; the median is exactly that
    config = parse_config(_pure_sim(rates=(0.001, 0.001), means=(1.0, 3.0)))
    resolved = served.resolve_served_delays(config, seed=0)
    assert resolved.policy("hedged").delay_ms == pytest.approx((1.75, 3.75))
    assert resolved.policy("backup").delay_ms == 3.0  # milliseconds stay as given
    assert resolved.policy("uncoded").delay_ms is None


def test_percentile_delay_counts_queueing_under_load() -> None:
    # under load the primary's p95 response includes waiting: above the bare 1.75 ms
    config = parse_config(_pure_sim(rates=(0.6, 0.6), **{"policies": ["uncoded", {"kind": "hedged",
                                                                                    "delay_ms": "p95"}]}))
    resolved = served.resolve_served_delays(config, seed=0)
    records = simulate(config.model_copy(update={"policies": config.policies[:1]}), 0).records
    for i, delay in enumerate(resolved.policy("hedged").delay_ms):
        mine = records.loc[records["model"] == i, "latency_ms"].to_numpy()
        assert delay == pytest.approx(np.percentile(mine, 95))
        assert delay > 1.75 + 0.5


def test_server_cores_leave_the_dispatcher_its_share() -> None:
    cal = cu.hand_calibration()
    config = parse_config(_pure_sim(rates=(0.5, 0.5), **{"traffic": {"kind": "poisson", "rates_per_ms": [0.5, 0.5],
                                                                      "ensemble_rate_per_ms": 0.1}}))
    # tasks per ms: 1.0 routed + 2 x 0.1 ensemble = 1.2 -> 1.2 * 0.05 ms = 0.06 cores, plus 0.1 base
    cores = served.server_cores(cal, config, "cpu")
    assert cores == pytest.approx(cal.machine.cpu_count - 0.16)
    with_cores = served.with_served_cores(config, cal, "cpu")
    assert with_cores.service.cores == pytest.approx(cores)
    assert served.server_cores(cal, config, "cuda:0") == 1.0
    # with the dispatcher's per-task work run on the cores (its own simulated load), only its steady part is
    # taken off them, and slicing stays on though every server could have a core of its own
    explicit = config.model_copy(update={"service": config.service.model_copy(update={
        "cores": 2.0, "quantum_ms": 4.0, "dispatcher": Dispatcher(send_ms=0.025, return_ms=0.025)})})
    assert served.server_cores(cal, explicit, "cpu") == pytest.approx(cal.machine.cpu_count - 0.1)
    sliced = served.with_served_cores(explicit, cal, "cpu").service
    assert sliced.quantum_ms == 4.0 and sliced.cores == pytest.approx(cal.machine.cpu_count - 0.1)


def test_physical_table_switches_on_serving() -> None:
    cal = cu.hand_calibration()
    table = served.physical_table(cal, "cpu", 1.0)
    # a pass of 1 ms costs a busy server 0.2 + 1.5 x 1 ms, of which 1.1 ms is its pass in service: 0.6 ms beside it
    assert table["service"] == {"cancel_in_service": "finish_pass", "quantum_ms": cu.QUANTUM_MS,
                                "overhead_ms": pytest.approx(0.6),
                                "cores": pytest.approx(cal.machine.cpu_count - cu.BASE_CORES),
                                "wake": {"idle_ms": list(cu.WAKE_IDLE_MS), "extra_ms": list(cu.WAKE_EXTRA_MS)},
                                # the calibration's 0.05 ms of dispatcher CPU per task, half each way; its
                                # frontend ran at real-time priority, so it wakes on its own last core
                                "dispatcher": {"send_ms": pytest.approx(0.025), "return_ms": pytest.approx(0.025),
                                               "placement": "own_core"}}
    assert table["stragglers"] == {"extra_of": "pass"}
    assert set(table["network"]["out"]["samples_ms"]) == {cu.OUT_MS}
    assert set(table["network"]["back"]["samples_ms"]) == {cu.BACK_MS}
    assert "quantum_ms" not in served.physical_table(cal, "cuda", 1.0)["service"]
    # a frontend at an ordinary priority goes to an idle core when it wakes
    nice = cal.model_copy(update={"dispatcher": cal.dispatcher.model_copy(update={"frontend_priority": "nice-10"})})
    assert served.physical_table(nice, "cpu", 1.0)["service"]["dispatcher"]["placement"] == "free_core"


def _networks_scenario(load: float, **profile):
    from scenarios.schema import scenario_from_dict
    from tests.scenarios.test_validation import networks_scenario

    table = networks_scenario()
    table["sim"] = dict(table["sim"], traffic={"kind": "poisson", "load": load}, n_queries=2000,
                        policies=["uncoded", {"kind": "hedged", "delay_ms": "p95"}])
    table["profile"] = {**table.get("profile", {}), **profile}
    return scenario_from_dict(table, "nets.toml")


def _facts(scenario, pass_ms=(1.0, 1.0)):
    from types import SimpleNamespace

    names = [e.name for e in scenario.models.experts]
    profile = {names[0]: np.full(50, pass_ms[0]), names[1]: np.full(50, pass_ms[1]), "coded": np.full(50, 1.0)}
    return SimpleNamespace(experts=[{"name": n} for n in names], profile_ms=profile, device="cpu",
                           answers=SimpleNamespace(pools=[50, 50]))


def test_load_is_a_fraction_of_the_served_capacity() -> None:
    from scenarios.runner import build_point_configs

    scenario = _networks_scenario(0.3)
    facts = _facts(scenario, (1.0, 2.0))
    machine = dict(cu.calibration_dict()["machine"], cpu_count=2)
    cal = cu.hand_calibration(machine=machine)
    (_, bare), = build_point_configs(scenario, facts)  # type: ignore[arg-type]
    (_, config), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    # bare: 0.3 * (1/1 + 1/2) = 0.45/ms. Served, passes cost 0.2 + 1.5 x {1, 2} = {1.7, 3.2} ms: the servers
    # sustain 1/1.7 + 1/3.2 = 0.80/ms, the cores (2 - 0.1 left by the dispatcher, which also takes 0.05 ms per
    # task) (2 - 0.1) / (mean(1.7, 3.2) + 0.05) = 0.76/ms: the cores bind
    assert bare.traffic.rate_per_ms == pytest.approx(0.45)
    assert config.traffic.rate_per_ms == pytest.approx(0.3 * 1.9 / 2.5)
    # of the 3.2 ms, the per-task work beside the pass (0.2 + 0.5 x 1.5 ms at the experts' median isolated pass)
    # is the overhead a straggle does not stretch; the rest is the drawn pass
    assert config.service.overhead_ms == pytest.approx(OV_15)
    assert config.service.expert_dist(1).mean() == pytest.approx(3.2 - OV_15)
    assert config.service.cancel_in_service == "finish_pass" and config.service.quantum_ms == cu.QUANTUM_MS
    # the dispatcher's per-task CPU runs on the cores as its own work (half at each send, half at each output
    # back); only its steady share is taken off them
    assert config.service.cores == pytest.approx(2 - cu.BASE_CORES)
    assert config.service.dispatcher.send_ms == config.service.dispatcher.return_ms == pytest.approx(
        cu.CPU_MS_PER_TASK / 2)
    assert config.network.out is not None and bare.network.out is None
    delays = config.policy("hedged").delay_ms
    assert isinstance(delays, tuple) and delays[1] > delays[0] > 1.7 + cu.OUT_MS + cu.BACK_MS - 1e-9
    assert isinstance(bare.policy("hedged").delay_ms, str)  # bare compute resolves 'p95' from the passes
    # on eight cores the servers bind instead
    cal8 = cu.hand_calibration(machine=dict(machine, cpu_count=8))
    (_, config8), = build_point_configs(scenario, facts, calibration=cal8)  # type: ignore[arg-type]
    assert config8.traffic.rate_per_ms == pytest.approx(0.3 * (1 / 1.7 + 1 / 3.2))


def _levels(*pairs: tuple[float, float]) -> dict:
    def delay(ms: float) -> dict:
        return {"median_ms": ms, "p99_ms": ms, "mean_ms": ms, "samples_ms": [ms] * 5}

    return {"n_tasks": 5, "out": delay(cu.OUT_MS), "back": delay(cu.BACK_MS),
            "under_load": [{"utilization": u, "rate_per_ms": 1.0, "servers": 3, "network": "mid", "n_tasks": 100,
                            "out": delay(ms), "back": delay(ms / 2)} for u, ms in pairs]}


def test_delays_follow_the_points_core_utilization() -> None:
    from scenarios.runner import build_point_configs

    machine = dict(cu.calibration_dict()["machine"], cpu_count=2)
    # out 1 ms at 10 % of the cores busy, 3 ms at 50 %; back half that
    cal = cu.hand_calibration(machine=machine, delays=_levels((0.1, 1.0), (0.5, 3.0)))
    for load, expected in ((0.05, 1.0), (0.3, 1.8965), (0.7, 3.0)):
        scenario = _networks_scenario(load)
        facts = _facts(scenario, (1.0, 2.0))
        (_, config), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
        # served costs {1.7, 3.2} ms, mean 2.45; the routed rate as in test_load_is_a_fraction_of_the_served_capacity
        # (load x 1.9 / 2.5 per ms); u = rate x 2.45 / 2 cores: 0.0466 (below the levels: held at 1 ms), 0.2793
        # (1 + 2 x (0.2793 - 0.1) / 0.4 = 1.8965 ms), 0.652 (above: held at 3 ms)
        assert config.network.out.samples_ms == pytest.approx([expected] * 200)
        assert config.network.back.mean() == pytest.approx(expected / 2)
    # a scenario's own delays win over the calibration's
    own = scenario.model_copy(update={"sim": scenario.sim.updated({"network": {"out": {
        "kind": "deterministic", "value_ms": 7.0}}})})
    (_, config), *_ = build_point_configs(own, facts, calibration=cal)  # type: ignore[arg-type]
    assert config.network.out.mean() == pytest.approx(7.0) and config.network.back is None


def test_served_capacity_refusal_names_it() -> None:
    from scenarios.runner import build_point_configs
    from scenarios.schema import ScenarioError

    # nine queries in ten for expert 1 at load 0.8: served, both experts cost 1.7 ms; the capacity is
    # min(2 / 1.7, 1.9 / 1.75) = 1.086/ms on two cores, so expert 1 gets 0.9 * 0.8 * 1.086 = 0.78/ms > 1 / 1.7
    scenario = _networks_scenario(0.8)
    table = scenario.sim.updated({"traffic": {"kind": "poisson", "load": 0.8, "weights": [0.1, 0.9]}})
    scenario = scenario.model_copy(update={"sim": table})
    facts = _facts(scenario)
    cal = cu.hand_calibration(machine=dict(cu.calibration_dict()["machine"], cpu_count=2))
    with pytest.raises(ScenarioError, match="unstable load.*model 1 gets.*served capacity"):
        build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]


def test_servers_slowing_each_other_lower_the_served_capacity() -> None:
    from scenarios.runner import build_point_configs

    machine = dict(cu.calibration_dict()["machine"], cpu_count=2)
    # a network of 0.5 ms does not slow its neighbour; one of 4.5 ms doubles it. The experts' passes (1 and 2 ms,
    # median 1.5) sit halfway between in log pass time: x1.5
    corun = [{"network": name, "isolated_median_ms": ms, "others": j, "n": 50, "median_ms": ms * f, "mean_ms": ms * f,
              "stretch_median": f, "stretch_mean": f}
             for name, ms, one in (("small", 0.5, 1.0), ("large", 4.5, 2.0)) for j, f in enumerate((1.0, one))]
    cal = cu.hand_calibration(machine=machine, corun=corun)
    assert served.physical_table(cal, "cpu", 1.5)["service"]["corun_slowdown"] == pytest.approx([1.5])
    assert "corun_slowdown" not in served.physical_table(cal, "cpu", 0.5)["service"]  # x1: nothing to slow
    assert served.physical_table(cal, "cpu", 9.0)["service"]["corun_slowdown"] == pytest.approx([2.0])
    assert "corun_slowdown" not in served.physical_table(cal, "cuda", 1.5)["service"]
    scenario = _networks_scenario(0.3)
    (_, config), = build_point_configs(scenario, _facts(scenario, (1.0, 2.0)), calibration=cal)  # type: ignore
    # as in test_load_is_a_fraction_of_the_served_capacity, but the 1.9 cores the dispatcher leaves do the work
    # of max(1, 1.9 / 1.5) = 1.267 when two servers compute at once: (1.9 / 1.5) / (mean(1.7, 3.2) + 0.05)
    assert config.traffic.rate_per_ms == pytest.approx(0.3 * (1.9 / 1.5) / 2.5)
    assert config.service.corun_slowdown == pytest.approx((1.5,))


def test_what_serving_adds_to_a_pass_shifts_every_served_sample_and_lowers_the_capacity() -> None:
    from calibration.file import PassLevel
    from scenarios.runner import build_point_configs

    machine = dict(cu.calibration_dict()["machine"], cpu_count=2)
    levels = [PassLevel(network=name, utilization=u, rate_per_ms=1.0, n_lone=100, lone_pass_mean_ms=1.0 + x,
                        busy_pass_mean_ms=1.0, extra_ms=x)
              for name in ("small", "mid", "large") for u, x in ((0.0, 0.5), (1.0, 0.5))]
    plain = cu.hand_calibration(machine=machine)
    cal = plain.model_copy(update={"passes_under_load": levels})
    scenario = _networks_scenario(0.3)
    facts = _facts(scenario, (1.0, 2.0))
    (_, before), = build_point_configs(scenario, facts, calibration=plain)  # type: ignore[arg-type]
    (_, after), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    # every served sample 0.5 ms longer, for experts and the coded model alike
    for dist_before, dist_after in ((before.service.experts[0], after.service.experts[0]),
                                    (before.service.experts[1], after.service.experts[1]),
                                    (before.service.coded, after.service.coded)):
        assert np.allclose(np.array(dist_after.samples_ms) - np.array(dist_before.samples_ms), 0.5)
    # the capacity counts it: served costs {1.7, 3.2} + 0.5; the cores (1.9 left) bind: 1.9 / (mean + 0.05)
    assert after.traffic.rate_per_ms == pytest.approx(0.3 * 1.9 / (np.mean([2.2, 3.7]) + 0.05))
    assert before.traffic.rate_per_ms == pytest.approx(0.3 * 1.9 / 2.5)
    # the idle-time wake-up curve gives way to it (it is part of what a pass under traffic measures)
    assert "wake" in served.physical_table(plain, "cpu", 1.0)["service"]
    assert "wake" not in served.physical_table(cal, "cpu", 1.0)["service"]


def test_measured_served_passes_replace_the_isolated_profile_at_the_points_utilization() -> None:
    from calibration.file import PassLevel
    from calibration.passes import ServedLevel, ServedPasses
    from scenarios.runner import build_point_configs

    machine = dict(cu.calibration_dict()["machine"], cpu_count=2)
    # a calibration-wide extra that must NOT be added on top of passes measured on the networks themselves
    extra = [PassLevel(network=name, utilization=u, rate_per_ms=1.0, n_lone=100, lone_pass_mean_ms=1.5,
                       busy_pass_mean_ms=1.0, extra_ms=0.5) for name in ("small", "mid", "large") for u in (0.0, 1.0)]
    cal = cu.hand_calibration(machine=machine).model_copy(update={"passes_under_load": extra})
    scenario = _networks_scenario(0.3)
    facts = _facts(scenario, (1.0, 2.0))
    names = [e["name"] for e in facts.experts]

    def passes(idle: float, busy: float, out: float = 0.5) -> ServedPasses:
        # every quantile alike: 'idle' at u = 0, 'busy' at u = 1; delays out 'out' then 'out' + 1, back half that
        return ServedPasses(levels=(
            ServedLevel(utilization=0.0, rate_per_ms=0.1, n_lone=50, samples_ms=(idle,) * 4, out_ms=(out,) * 4,
                        back_ms=(out / 2,) * 4),
            ServedLevel(utilization=1.0, rate_per_ms=1.0, n_lone=50, samples_ms=(busy,) * 4, out_ms=(out + 1,) * 4,
                        back_ms=((out + 1) / 2,) * 4)))

    facts.served_passes = {names[0]: passes(1.0, 2.0), names[1]: passes(2.0, 3.0, out=1.5),
                           "coded": passes(1.0, 2.0)}
    (_, config), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    # per task beside its pass, for every network: the calibration's work beside the pass at the experts' isolated
    # median (1.5 ms), OV_15. Capacity at the busiest level: costs 2 + OV_15 and 3 + OV_15 ms; the cores (1.9
    # left) bind: 1.9 / (2.5 + OV_15 + 0.05) per ms
    rate = 0.3 * 1.9 / (2.5 + OV_15 + 0.05)
    assert config.traffic.rate_per_ms == pytest.approx(rate)
    assert config.service.overhead_ms == pytest.approx(OV_15)
    # the point keeps u = rate x (2.5 + OV_15) / 2 cores of the machine busy; the passes there: idle + u x (busy -
    # idle)
    u = rate * (2.5 + OV_15) / 2
    assert config.service.experts[0].samples_ms == pytest.approx([1.0 + u] * 4)
    assert config.service.experts[1].samples_ms == pytest.approx([2.0 + u] * 4)
    assert config.service.coded.samples_ms == pytest.approx([1.0 + u] * 4)
    # the experts' own traffic's delays at u, their quantiles averaged: out (0.5 + u + 1.5 + u) / 2, back half that
    assert config.network.out.samples_ms == pytest.approx([1.0 + u] * 4)
    assert config.network.back.samples_ms == pytest.approx([(1.0 + u) / 2] * 4)
    # no delay tables by busy servers in these profiles: none in the config
    assert config.network.out_by_busy is None and config.network.back_by_busy is None
    # with them: the experts' tables averaged quantile by quantile, as many counts as both have
    by_busy = {"out_by_busy_ms": ((0.2,) * 4, (0.6,) * 4), "back_by_busy_ms": ((0.1,) * 4,)}
    facts.served_passes = {names[0]: passes(1.0, 2.0).model_copy(update=by_busy),
                           names[1]: passes(2.0, 3.0, out=1.5).model_copy(update={
                               "out_by_busy_ms": ((0.4,) * 4, (1.0,) * 4, (3.0,) * 4),
                               "back_by_busy_ms": ((0.3,) * 4,)}),
                           "coded": passes(1.0, 2.0)}
    (_, tabled), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    assert [d.samples_ms for d in tabled.network.out_by_busy] == [pytest.approx((0.3,) * 4), pytest.approx((0.8,) * 4)]
    assert [d.samples_ms for d in tabled.network.back_by_busy] == [pytest.approx((0.2,) * 4)]
    assert tabled.network.out.samples_ms == pytest.approx(config.network.out.samples_ms)  # the plain delay stays
    # the chance that a start holds a server off its core: the experts' shares averaged, into the time-sliced
    # cores' config; none when an expert has none
    assert config.service.joined_share is None
    facts.served_passes = {names[0]: passes(1.0, 2.0).model_copy(update={"joined_share": 0.3}),
                           names[1]: passes(2.0, 3.0, out=1.5).model_copy(update={"joined_share": 0.5}),
                           "coded": passes(1.0, 2.0)}
    (_, joined), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    assert joined.service.quantum_ms is not None and joined.service.joined_share == pytest.approx(0.4)
    facts.served_passes[names[1]] = passes(2.0, 3.0, out=1.5)
    (_, half), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    assert half.service.joined_share is None
    facts.served_passes = {names[0]: passes(1.0, 2.0), names[1]: passes(2.0, 3.0, out=1.5),
                           "coded": passes(1.0, 2.0)}
    # a scenario's own delays win over them
    own = scenario.model_copy(update={"sim": scenario.sim.updated({"network": {"out": {
        "kind": "deterministic", "value_ms": 7.0}}})})
    (_, mine), = build_point_configs(own, facts, calibration=cal)  # type: ignore[arg-type]
    assert mine.network.out.mean() == pytest.approx(7.0) and mine.network.back is None
    # without a measured profile the same calibration adds its extra to the isolated passes instead
    facts.served_passes = {}
    (_, plain), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    assert np.allclose(plain.service.experts[0].samples_ms, 1.7 - OV_15 + 0.5)
    assert plain.service.overhead_ms == pytest.approx(OV_15)


def _two_core_point() -> tuple[Any, Any, Any, list[str]]:
    """A hand calibration of a 2-core machine, the two-network scenario at load 0.3, its facts, the experts' names."""
    cal = cu.hand_calibration(machine=dict(cu.calibration_dict()["machine"], cpu_count=2))
    scenario = _networks_scenario(0.3)
    facts = _facts(scenario, (1.0, 2.0))
    return cal, scenario, facts, [e["name"] for e in facts.experts]


def test_the_experts_wake_curves_are_averaged_into_every_servers_wake() -> None:
    from calibration.passes import ServedLevel, ServedPasses
    from scenarios.runner import build_point_configs

    cal, scenario, facts, names = _two_core_point()
    level = ServedLevel(utilization=0.2, rate_per_ms=0.1, n_lone=50, samples_ms=(1.0,) * 4, out_ms=(0.5,) * 4,
                        back_ms=(0.5,) * 4)

    def passes(idle: tuple[float, ...] = (), extra: tuple[float, ...] = (), busy: tuple[float, ...] = (),
               busy_extra: tuple[float, ...] = ()) -> ServedPasses:
        return ServedPasses(levels=(level,), wake_idle_ms=idle, wake_idle_extra_ms=extra, wake_busy_ms=busy,
                            wake_busy_extra_ms=busy_extra)

    facts.served_passes = {names[0]: passes((2.0, 20.0), (0.0, 0.4), (5.0,), (0.1,)),
                           names[1]: passes((10.0,), (0.2,), (5.0,), (0.3,)), "coded": passes()}
    (_, config), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    wake = config.service.wake
    # at the union of the points, the mean of the two curves (each linear from (0, 0), held beyond its last point):
    # at 2: (0 + 0.04) / 2; at 10: ((10 - 2) / 18 x 0.4 + 0.2) / 2; at 20: (0.4 + 0.2) / 2; the others' part alike
    assert wake.idle_ms == (2.0, 10.0, 20.0)
    assert wake.extra_ms == pytest.approx((0.02, (8 / 18 * 0.4 + 0.2) / 2, 0.3))
    assert wake.extra(5.0) == pytest.approx(0.02 + 3 / 8 * (wake.extra_ms[1] - 0.02))
    assert wake.others_busy_ms == (5.0,) and wake.others_extra_ms == pytest.approx((0.2,))
    # an expert without a curve (an older profile): no wake from the profile at all, the calibration's own stays
    # (this hand calibration has no passes under load, so it is an older one whose idle curve is used)
    facts.served_passes[names[1]] = passes()
    (_, older), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    assert older.service.wake is not None and older.service.wake != wake and not older.service.wake.others_busy_ms
    assert list(older.service.wake.idle_ms) == cal.wake_table(1.5)["idle_ms"]


def test_load_is_read_at_the_passes_as_they_ran_wake_included() -> None:
    from calibration.passes import ServedLevel, ServedPasses
    from scenarios.runner import build_point_configs

    cal, scenario, facts, names = _two_core_point()

    def passes(warm: float, ran: float | None) -> ServedPasses:
        # the samples are the warm passes (wake taken off); `ran` is the busiest level's mean as it ran
        return ServedPasses(levels=(ServedLevel(utilization=0.0, rate_per_ms=0.1, n_lone=50, samples_ms=(warm,) * 4),
                                    ServedLevel(utilization=1.0, rate_per_ms=1.0, n_lone=50, samples_ms=(warm,) * 4,
                                                served_mean_ms=ran)))

    facts.served_passes = {names[0]: passes(2.0, 2.4), names[1]: passes(3.0, 3.4), "coded": passes(2.0, 2.4)}
    (_, config), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    # the cores bind as in the test above, at the passes as they ran: 1.9 / ((2.4 + 3.4) / 2 + OV_15 + 0.05)
    assert config.traffic.rate_per_ms == pytest.approx(0.3 * 1.9 / (2.9 + OV_15 + 0.05))
    assert config.service.experts[0].samples_ms == pytest.approx([2.0] * 4)  # the draws stay the warm passes
    # an older profile without the mean as it ran: the samples' mean, as before
    facts.served_passes = {names[0]: passes(2.0, None), names[1]: passes(3.0, None), "coded": passes(2.0, None)}
    (_, older), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    assert older.traffic.rate_per_ms == pytest.approx(0.3 * 1.9 / (2.5 + OV_15 + 0.05))


def test_the_work_beside_the_pass_measured_in_the_experts_traffic_replaces_the_calibrations() -> None:
    from calibration.passes import ServedLevel, ServedPasses
    from scenarios.runner import build_point_configs

    cal, scenario, facts, names = _two_core_point()

    def passes(before: float | None, after: float | None) -> ServedPasses:
        level = ServedLevel(utilization=1.0, rate_per_ms=1.0, n_lone=50, samples_ms=(2.0,) * 4, served_mean_ms=2.4)
        return ServedPasses(levels=(level,), before_output_ms=before, after_output_ms=after)

    facts.served_passes = {names[0]: passes(0.1, 0.3), names[1]: passes(0.2, 0.5), "coded": passes(None, None)}
    (_, config), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    # the experts' means: 0.15 before the output (in the answer), 0.4 after it (the server's next task waits)
    assert config.service.overhead_ms == pytest.approx(0.15)
    assert config.service.after_ms == pytest.approx(0.4)
    # both take the server: the cores bind at 1.9 / (2.4 + 0.15 + 0.4 + 0.05) per ms
    assert config.traffic.rate_per_ms == pytest.approx(0.3 * 1.9 / (2.4 + 0.55 + 0.05))
    # an expert without it: the calibration's busy-server cycle stands in, all of it before the output
    facts.served_passes[names[1]] = passes(None, None)
    (_, older), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    assert older.service.overhead_ms == pytest.approx(OV_15) and older.service.after_ms == 0.0
    assert older.traffic.rate_per_ms == pytest.approx(0.3 * 1.9 / (2.4 + OV_15 + 0.05))


@pytest.mark.parametrize("hold, p, expected", [("compute", 0.25, 0.5 * (2.0 * 3.25 + 0.5) / 2.0),
                                               ("stall", 0.25, 0.5 * 2.5 / 2.0),
                                               ("compute", 0.0, 0.5 * 2.5 / 2.0)])
def test_the_cores_busy_share_counts_a_straggler_held_by_computing(hold, p, expected) -> None:
    # 0.5 tasks/ms, served cost 2.5 ms of which 0.5 beside the pass (0.2 before the output, 0.3 after), 2 cores.
    # Stragglers x10 with p = 0.25: the mean factor 3.25 on the 2 ms pass when they hold by computing (more passes
    # on the cores); held as stalls they leave the cores, and without stragglers nothing is added
    cfg = parse_config({"n_experts": 1, "r": 0, "policies": ["uncoded"], "n_queries": 10,
                        "traffic": {"rate_per_ms": 0.5}, "stragglers": {"p": p, "slowdown": 10.0, "hold": hold},
                        "service": {"overhead_ms": 0.2, "after_ms": 0.3}})
    assert served.core_utilization(cfg, 2.5, 2.0) == pytest.approx(expected)


def test_the_experts_pass_correlation_goes_to_the_simulator_averaged() -> None:
    from calibration.passes import ServedLevel, ServedPasses
    from scenarios.runner import build_point_configs

    cal, scenario, facts, names = _two_core_point()

    def passes(rho: tuple[float, ...] | None) -> ServedPasses:
        level = ServedLevel(utilization=1.0, rate_per_ms=1.0, n_lone=50, samples_ms=(2.0,) * 4, served_mean_ms=2.4)
        if rho is None:
            return ServedPasses(levels=(level,))
        return ServedPasses(levels=(level,), pass_corr_idle_ms=(0.25, 2.0), pass_corr_rho=rho)

    facts.served_passes = {names[0]: passes((0.5, 0.1)), names[1]: passes((0.3, 0.0)), "coded": passes(None)}
    (_, config), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    corr = config.service.pass_correlation
    assert corr is not None and corr.idle_ms == (0.25, 2.0) and corr.rho == pytest.approx((0.4, 0.05))
    facts.served_passes[names[1]] = passes(None)  # an expert without it: independent draws, as before
    (_, older), = build_point_configs(scenario, facts, calibration=cal)  # type: ignore[arg-type]
    assert older.service.pass_correlation is None
