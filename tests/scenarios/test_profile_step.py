"""The runner's profile step times all served networks in one interleaved profile."""

from __future__ import annotations

from typing import Any

import numpy as np

import models.profile
from scenarios.runner import prepare_networks
from scenarios.schema import scenario_from_dict
from tests.conftest import tiny_zoo_table


def test_served_networks_are_profiled_together(tiny_cache, monkeypatch):
    calls: list[dict[str, Any]] = []
    real = models.profile.profile_interleaved

    def spy(nets, *args, **kwargs):
        calls.append({"names": list(nets), "args": args, "kwargs": kwargs})
        return real(nets, *args, **kwargs)

    def one_at_a_time(*args, **kwargs):
        raise AssertionError("served networks must not be profiled one after another")

    monkeypatch.setattr(models.profile, "profile_interleaved", spy)
    monkeypatch.setattr(models.profile, "profile_latency", one_at_a_time)
    scenario = scenario_from_dict({
        "name": "profilestep",
        "seed": 4,
        "device": "cpu",
        "models": tiny_zoo_table(tiny_cache),
        "coding": {"method": "vanilla", "samples": 20},
        "profile": {"warmup": 2, "samples": 25, "preempted_retries": 1},
        "sim": {"r": 1, "n_queries": 200, "policies": ["uncoded", "coded"],
                "traffic": {"kind": "poisson", "load": 0.3, "ensemble_rate_per_ms": 0.0}},
    })
    facts = prepare_networks(scenario, quiet=True)

    assert len(calls) == 1
    assert calls[0]["names"] == ["low", "high", "coded"]
    assert calls[0]["kwargs"]["seed"] == 4 and calls[0]["kwargs"]["progress"] is False
    assert calls[0]["kwargs"]["preempted_retries"] == 1
    assert list(facts.profile_ms) == ["low", "high", "coded"]
    assert all(len(t) == 25 and np.all(t > 0) for t in facts.profile_ms.values())
