"""Servers that compute side by side on different cores slow each other (service.corun_slowdown), checked by hand
traces written out step by step, the capacity it leaves, and what the calibration hands the simulator:
- processor sharing and time slicing: a lone server runs at full speed, two at once each at 1 / s₁;
- past the cores, only ceil(C) − 1 others are ever beside a server: the factor stops growing;
- the stability check refuses work the slowed cores cannot do, though the nominal cores could;
- the calibration's median stretch with j others becomes entry j (never below 1).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_sim_slicing import _own_server_work, _trace

from sim import SimConfigError, parse_config
from sim.config import Service
from sim.layout import check_stability


def _table(cores: float, corun, quantum=None, servers: int = 2) -> dict:
    return {"n_experts": servers, "r": 0, "policies": ["uncoded"],
            "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "cores": cores,
                        "quantum_ms": quantum, "corun_slowdown": corun}}


@pytest.mark.parametrize("quantum", [None, 1.0])
def test_two_servers_side_by_side_hand_trace(quantum):
    # C = 2, s₁ = 1.5. A (server 0) arrives at 0 with 3 ms of work, B (server 1) at 1 with 3 ms.
    #   0 - 1  A alone at speed 1: 2 ms left
    #   1      B starts: both at 1 / 1.5 = 2/3
    #   4      A's 2 ms done (3 ms x 2/3); B has done 2 ms, 1 left, alone again at speed 1
    #   5      B done
    # No run queue with two servers on two cores, so slicing gives the same schedule.
    models = [0, 1]
    out = _trace(_table(2.0, [1.5], quantum), [0.0, 1.0], models, _own_server_work(models, [3.0, 3.0], 2))
    np.testing.assert_allclose(out.finish_ms, [4.0, 5.0], atol=1e-9)
    plain = _trace(_table(2.0, None, quantum), [0.0, 1.0], models, _own_server_work(models, [3.0, 3.0], 2))
    np.testing.assert_allclose(plain.finish_ms, [3.0, 4.0], atol=1e-9)


def test_past_the_cores_the_slowdown_stops_growing():
    # C = 2 with processor sharing, s = (1.5, 4.0): three busy servers share 2 cores (2/3 each) and at any instant
    # only one other computes beside each, so the factor is s₁ = 1.5, not s₂: speed 2/3 / 1.5 = 4/9.
    # A, B, C arrive together with 2 ms each: all three end at 2 / (4/9) = 4.5 ms.
    models = [0, 1, 2]
    table = _table(2.0, [1.5, 4.0], servers=3)
    out = _trace(table, [0.0, 0.0, 0.0], models, _own_server_work(models, [2.0, 2.0, 2.0], 3))
    np.testing.assert_allclose(out.finish_ms, [4.5, 4.5, 4.5], atol=1e-9)
    # with three cores the second entry applies: 2 / (1 / 4) = 8 ms
    out = _trace(_table(3.0, [1.5, 4.0], servers=3), [0.0, 0.0, 0.0], models,
                 _own_server_work(models, [2.0, 2.0, 2.0], 3))
    np.testing.assert_allclose(out.finish_ms, [8.0, 8.0, 8.0], atol=1e-9)


def test_three_servers_on_two_cores_sliced_hand_trace():
    # C = 2, quantum 1, s₁ = 2: two slot holders each at 1/2; a lone holder at 1.
    # A (server 0) at 0 with 1 ms, B (1) at 0 with 1 ms, C (2) at 0 with 0.25 ms.
    #   0    A and B take the slots (speed 1/2); C waits
    #   1    A's quantum ends (0.5 left) -> queue [A], C takes the slot; B's ends too (0.5 left) -> queue [A, B],
    #        A takes it. C and A at 1/2: C's 0.25 ends at 1.5
    #   1.5  C done; B takes the slot: A (0.25 left) and B (0.5 left) at 1/2; A ends at 2.0
    #   2.0  A done; B alone at speed 1 with 0.25 left: ends at 2.25
    models = [0, 1, 2]
    table = _table(2.0, [2.0], quantum=1.0, servers=3)
    out = _trace(table, [0.0, 0.0, 0.0], models, _own_server_work(models, [1.0, 1.0, 0.25], 3))
    np.testing.assert_allclose(out.finish_ms, [2.0, 2.25, 1.5], atol=1e-9)


@pytest.mark.parametrize("cores, corun, effective", [
    (2.0, None, 2.0),
    (2.0, (1.38,), 2.0 / 1.38),
    (1.93, (1.38,), 1.93 / 1.38),
    (2.0, (2.5,), 1.0),  # slower together than one alone: one server's worth
    (4.0, (1.1, 1.2, 2.0), 3.0 / 1.2),  # the best k is 3 of 4 (2 / 1.1, 3 / 1.2, 4 / 2)
])
def test_effective_cores(cores, corun, effective):
    assert Service(cores=cores, corun_slowdown=corun).effective_cores() == pytest.approx(effective)


def test_stability_counts_the_slowed_cores():
    # two experts of 1 ms on 2 cores at 1.6 queries/ms: 1.6 core-ms per ms fits 2 cores, not 2 / 1.5 = 1.33
    table = _table(2.0, None) | {"n_queries": 100, "traffic": {"kind": "poisson", "rate_per_ms": 1.6}}
    assert check_stability(parse_config(table)) is None
    problem = check_stability(parse_config(table | {"service": table["service"] | {"corun_slowdown": [1.5]}}))
    assert problem is not None and "1.6 core-ms per ms" in problem and "worth 1.33 cores" in problem


@pytest.mark.parametrize("bad, word", [({"corun_slowdown": [0.9]}, "greater than or equal to 1"),
                                       ({"corun_slowdown": [1.2], "cores": None}, "needs cores")])
def test_bad_corun_is_one_config_error_line(bad, word):
    table = _table(2.0, None) | {"n_queries": 10, "traffic": {"kind": "poisson", "rate_per_ms": 0.1}}
    with pytest.raises(SimConfigError, match=word):
        parse_config(table | {"service": table["service"] | bad})


def test_the_calibration_hands_the_stretch_of_the_networks_size_never_below_one():
    import math

    from calibration import Calibration, machine_key
    from tests import calibration_testutil as cu

    # two sizes, isolated passes 0.1 and 1.0 ms: with j others the small one stretches (1.0, 0.9, 1.1), the
    # large one (1.4, 2.0, 2.6) — a pass between them reads the line in log pass time
    stretch = {0.1: (1.0, 1.0, 0.9, 1.1), 1.0: (1.0, 1.4, 2.0, 2.6)}
    rows = [{"network": f"n{ms}", "isolated_median_ms": ms, "others": j, "n": 100, "median_ms": ms * f,
             "mean_ms": ms * f, "stretch_median": f, "stretch_mean": f}
            for ms, factors in stretch.items() for j, f in enumerate(factors)]

    def calibration(cpus: int, device: str = "cpu", table: list | None = None) -> Calibration:
        data = cu.calibration_dict(machine=dict(machine_key("cpu"), cpu_count=cpus, device=device))
        data["corun"] = rows if table is None else table
        return Calibration.model_validate(data)

    assert calibration(2).corun_slowdown(1.0) == [1.4]
    assert calibration(2).corun_slowdown(50.0) == [1.4] and calibration(2).corun_slowdown(0.01) == [1.0]  # held
    mid = math.sqrt(0.1 * 1.0)  # halfway in log pass time
    assert calibration(4).corun_slowdown(mid) == pytest.approx([1.2, 1.45, 1.85])
    assert calibration(4).corun_slowdown(0.1) == pytest.approx([1.0, 1.0, 1.1])  # 0.9 is noise: never below 1
    assert calibration(8).corun_slowdown(1.0) == pytest.approx([1.4, 2.0, 2.6, 2.6, 2.6, 2.6, 2.6])  # j = 3 holds
    only_one = [r for r in rows if r["others"] <= 1]
    assert calibration(4, table=only_one).corun_slowdown(1.0) == [1.4, 1.4, 1.4]
    assert calibration(1).corun_slowdown(1.0) == []
    assert calibration(2, "cuda").corun_slowdown(1.0) == []
    assert calibration(2, table=[]).corun_slowdown(1.0) == []  # not measured: nothing to hand on
