"""Stability with servers sharing cores: their computing must fit on the cores (numbers worked out by hand)."""

from __future__ import annotations

import pytest

from sim import SimConfigError, parse_config
from sim.layout import check_stability


def _config(rate: float, cores: float | None, hold: str = "compute", p: float = 0.0, **extra) -> dict:
    return {"n_experts": 2, "r": 1, "policies": ["uncoded"], "n_queries": 10,
            "traffic": {"kind": "poisson", "rate_per_ms": rate},
            "service": {"expert": {"kind": "deterministic", "value_ms": 1.0}, "cores": cores},
            "stragglers": {"p": p, "slowdown": 10.0, "hold": hold}, **extra}


def test_work_beyond_the_shared_cores_is_refused() -> None:
    # two experts each 1 ms a pass, 1.2 queries/ms in all: 1.2 core-ms per ms on one core
    problem = check_stability(parse_config(_config(1.2, cores=1.0)))
    assert problem is not None and "service.cores = 1" in problem and "1.2 core-ms" in problem
    # each expert alone is at 0.6 of its own server: without shared cores it is stable
    assert check_stability(parse_config(_config(1.2, cores=None))) is None
    assert check_stability(parse_config(_config(0.9, cores=1.0))) is None
    assert check_stability(parse_config(_config(1.2, cores=1.25))) is None


def test_stalled_straggle_is_off_the_cores() -> None:
    # p = 0.5, x10: a compute straggle makes a task 5.5 ms of core work on average -> 0.15 * 5.5 = 0.825 < 1,
    # 0.2 * 5.5 = 1.1 > 1; held as a stall only the 1 ms pass counts (0.2 core-ms per ms)
    assert check_stability(parse_config(_config(0.15, cores=1.0, p=0.5))) is None
    problem = check_stability(parse_config(_config(0.2, cores=1.0, p=0.5)))
    assert problem is not None and "1.1 core-ms" in problem
    assert check_stability(parse_config(_config(0.2, cores=1.0, p=0.5, hold="stall"))) is None


def test_unstable_shared_cores_refused_without_horizon() -> None:
    table = _config(1.5, cores=1.0)
    del table["n_queries"]
    with pytest.raises(SimConfigError, match="unstable load"):
        parse_config(table)
