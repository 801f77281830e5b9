"""Reading a simulator config: its fields (sim.config), then, for a run without an explicit horizon, the
necessary stability conditions of every policy (sim.layout) — so that a default horizon always measures a
steady state."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from sim.config import SimConfig
from sim.errors import SimConfigError
from sim.layout import check_settings, check_stability
from sim.memory import fleet_problem


def parse_config(data: Mapping[str, Any] | SimConfig) -> SimConfig:
    """Build a SimConfig from a mapping (e.g. a TOML table); accepts a top-level [sim] table too.

    Without n_queries or horizon_ms every policy must be stable: an unstable load is refused (one line).
    """
    if isinstance(data, SimConfig):
        cfg = data
    elif not isinstance(data, Mapping):
        raise SimConfigError(f"sim config: expected a table, got {type(data).__name__}")
    else:
        if "sim" in data and isinstance(data["sim"], Mapping) and "n_experts" not in data:
            data = data["sim"]
        cfg = SimConfig(**dict(data))
    problem = fleet_problem(cfg) or check_settings(cfg)
    if problem:
        raise SimConfigError(f"sim config: {problem}")
    if cfg.default_horizon:
        problem = check_stability(cfg)
        if problem:
            raise SimConfigError(f"sim config: unstable load: {problem}; set n_queries or horizon_ms to simulate a "
                                 "transient")
    return cfg


def load_config(path: str) -> SimConfig:
    """Read a TOML file (a [sim] table or top-level keys) into a SimConfig."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SimConfigError(f"sim config: cannot read {path}: {e}") from None
    except RecursionError:
        raise SimConfigError(f"sim config: cannot read {path}: nested too deeply") from None
    return parse_config(data)
