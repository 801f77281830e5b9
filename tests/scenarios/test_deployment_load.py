"""A scenario's load counts every instance of every expert, in bare compute and under the served model."""

from __future__ import annotations

import pytest

from scenarios.schema import scenario_from_dict, sim_config_for


def _scenario(instances) -> object:
    return scenario_from_dict({
        "name": "inst", "sim": {
            "n_experts": 2, "r": 1, "n_queries": 100, "traffic": {"load": 0.5},
            "service": {"experts": [{"kind": "exponential", "mean_ms": 2.0}, {"kind": "exponential", "mean_ms": 4.0}]},
            "deployment": {"instances": instances}}}, "inline")


def test_bare_load_is_a_fraction_of_every_instances_capacity():
    one, more = _scenario(1), _scenario([2, 3])
    assert sim_config_for(one, one.sim.table()).traffic.rate_per_ms == pytest.approx(0.5 * (1 / 2 + 1 / 4))
    assert sim_config_for(more, more.sim.table()).traffic.rate_per_ms == pytest.approx(0.5 * (2 / 2 + 3 / 4))
    assert more.n_servers == 6


def test_the_served_capacity_is_handed_the_instance_counts():
    seen = []

    def capacity(means, counts):
        seen.append((list(means), list(counts)))
        return 10.0

    more = _scenario([2, 3])
    assert sim_config_for(more, more.sim.table(), capacity=capacity).traffic.rate_per_ms == pytest.approx(5.0)
    assert seen == [([2.0, 4.0], [2, 3])]


def test_the_served_models_capacity_counts_instances_on_the_servers_side():
    from scenarios import served
    from tests import calibration_testutil as cu

    cal = cu.hand_calibration(machine=dict(cu.calibration_dict()["machine"], cpu_count=64))  # cores never bind
    capacity = served.routed_capacity(cal, "cpu", pass_ms=1.0, measured=True)
    assert capacity([2.0, 4.0], [2, 3]) == pytest.approx(2 / 2 + 3 / 4)
    assert capacity([2.0, 4.0]) == pytest.approx(1 / 2 + 1 / 4)


def test_code_groups_without_networks_partition_the_experts():
    plain = _scenario(1).sim.updated({"deployment": {"groups": [[0], [1]]}})
    assert plain.deployment.code_groups(2) == ((0,), (1,))


def test_servers_count_instances_and_r_per_code_group():
    deployment = {"instances": [1, 2, 1, 1], "groups": [[0, 1], [2, 3]]}
    s = scenario_from_dict({"name": "g", "sim": {"n_experts": 4, "r": 2, "traffic": {"rate_per_ms": 0.5},
                                                 "deployment": deployment}}, "inline")
    assert s.n_servers == 5 + 2 * 2


def test_summary_states_the_deployment():
    from scenarios.runner import deployment_facts
    from sim import parse_config

    cfg = parse_config({"n_experts": 4, "r": 2, "traffic": {"rate_per_ms": 0.5}, "n_queries": 10,
                        "deployment": {"instances": [1, 2, 1, 1], "groups": [[0, 1], [2, 3]], "balancer": "jsq"}})
    assert deployment_facts(cfg) == {"instances": [1, 2, 1, 1], "balancer": "jsq", "groups": [[0, 1], [2, 3]],
                                     "cells": 1, "extra_servers": 4, "servers": 9, "draws": "server"}
    assert deployment_facts(cfg.model_copy(update={"draws": "task"}))["draws"] == "task"


def test_fields_that_follow_the_sweep_axis_move_with_it_point_by_point():
    from scenarios.schema import ScenarioError, SimTable

    sim = {"n_experts": 2, "r": 1, "n_queries": 100, "traffic": {"rate_per_ms": 0.5}, "deployment": {"instances": 2}}
    s = scenario_from_dict({"name": "f", "sim": sim, "sweep": {"axis": "deployment.instances", "values": [2, 4, 8],
                                                              "follow": {"r": [1, 2, 4]}}}, "inline")
    points = s.sweep_points()
    assert [(v, t["r"], t["deployment"]["instances"]) for v, t in points] == [
        ({"deployment.instances": 2}, 1, 2), ({"deployment.instances": 4}, 2, 4), ({"deployment.instances": 8}, 4, 8)]
    assert [s.servers_at(SimTable.model_validate(t)) for _, t in points] == [5, 10, 20]  # one extra per four
    for sweep, needle in (
        ({"grid": {"r": [1, 2]}, "follow": {"n_queries": [10, 20]}}, "give it with axis \\+ values, not grid"),
        ({"axis": "r", "values": [1, 2], "follow": {"n_queries": [10]}}, "has 1 values for the axis' 2"),
        ({"axis": "r", "values": [1, 2], "follow": {"r": [1, 2]}}, "is the axis itself"),
    ):
        with pytest.raises(ScenarioError, match=needle):
            scenario_from_dict({"name": "f", "sim": sim, "sweep": sweep}, "inline")


def test_coded_groups_with_r_swept_are_refused(tmp_path):
    from scenarios.schema import ScenarioError
    from tests.conftest import tiny_zoo_table

    experts = [{"name": n, "dataset": "mnist5k", "labels": [k]} for k, n in enumerate("abcd")]
    table = {"name": "g", "models": tiny_zoo_table(tmp_path, experts=experts),
             "sim": {"r": 1, "deployment": {"groups": [[0, 1], [2, 3]]}},
             "sweep": {"axis": "stragglers.p", "values": [0.0, 0.1], "follow": {"r": [1, 2]}}}
    with pytest.raises(ScenarioError, match="r must be one value across the sweep"):
        scenario_from_dict(table, "inline")
