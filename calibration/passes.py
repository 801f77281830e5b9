"""A network's forward pass as serving shows it: the served-pass profile (no torch; measured by
`calibration.measure.measure_served_passes`).

An isolated profile times a network's pass back to back in one process, caches warm. A server under real traffic
runs the same pass after idling, after other servers or the dispatcher used its core, with its socket's I/O
thread beside it: the pass comes out longer and with a heavier tail, by an amount that depends on the network
(its weights' footprint against the caches, its layers), not on its isolated time alone. So the served profile
is measured per network: real server processes holding the scenario's own networks serve Poisson traffic at
a few core utilizations, and the passes that ran with no other server computing beside them (co-running and
time slicing are the simulator's own) are kept, per network and level, as an empirical sample.

`samples_at(u)` gives a network's served passes at core utilization u: quantile by quantile, linear between the
two measured levels around u, held at the ends.

The same traffic's one-way delays are kept beside the passes (out: tasks that reached an idle server; back:
every answered task): how late a frontend and servers that compete for the cores answer depends on what the
servers compute, so they are measured on the scenario's own networks too.

On disk (a result folder's ``served_profile.csv``): one row per (network, level, quantile) with the columns
model, utilization, rate_per_ms, n_lone, ms (the pass) and out_ms, back_ms (the delays).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

COLUMNS = ("model", "utilization", "rate_per_ms", "n_lone", "ms")
DELAY_COLUMNS = ("out_ms", "back_ms")


class ServedLevel(BaseModel):
    """One network's lone passes under traffic that kept `utilization` of the cores computing."""

    model_config = ConfigDict(frozen=True)

    utilization: float = Field(ge=0.0)
    rate_per_ms: float = Field(gt=0.0)
    n_lone: int = Field(ge=1)
    samples_ms: tuple[float, ...] = Field(min_length=1)  # quantiles at (k + ½)/n, increasing
    # one-way delays of the same traffic, as many quantiles (out: tasks that reached an idle server; back: every
    # answered task); empty when not measured
    out_ms: tuple[float, ...] = ()
    back_ms: tuple[float, ...] = ()

    @field_validator("samples_ms", "out_ms", "back_ms")
    @classmethod
    def _finite_positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        a = np.asarray(value, float)
        if not np.all(np.isfinite(a) & (a > 0)):
            raise ValueError("served passes and delays must be finite and > 0 ms")
        return tuple(np.sort(a).tolist())

    @model_validator(mode="after")
    def _delays_alike(self) -> ServedLevel:
        if len(self.out_ms) != len(self.back_ms) or (self.out_ms and len(self.out_ms) != len(self.samples_ms)):
            raise ValueError("a level's out and back delays hold as many quantiles as its passes, or none")
        return self


class ServedPasses(BaseModel):
    """A network's served-pass profile: its levels in increasing utilization."""

    model_config = ConfigDict(frozen=True)

    levels: tuple[ServedLevel, ...] = Field(min_length=1)

    @field_validator("levels")
    @classmethod
    def _ordered(cls, value: tuple[ServedLevel, ...]) -> tuple[ServedLevel, ...]:
        if len({len(level.samples_ms) for level in value}) != 1:
            raise ValueError("every level of a served profile holds the same number of quantiles")
        return tuple(sorted(value, key=lambda level: level.utilization))

    def samples_at(self, utilization: float) -> np.ndarray:
        """Served passes (ms) at this core utilization: the quantiles linear between the measured levels around it,
        the nearest level's outside them."""
        return self._at(utilization, "samples_ms")

    @property
    def has_delays(self) -> bool:
        return all(level.out_ms for level in self.levels)

    def delays_at(self, utilization: float) -> tuple[np.ndarray, np.ndarray]:
        """(out, back) one-way delays (ms) of this network's traffic at this core utilization, interpolated as
        `samples_at`; ValueError when they were not measured."""
        if not self.has_delays:
            raise ValueError("this served profile has no delays")
        return self._at(utilization, "out_ms"), self._at(utilization, "back_ms")

    def _at(self, utilization: float, field: str) -> np.ndarray:
        levels = self.levels
        us = [level.utilization for level in levels]
        if len(levels) == 1 or utilization <= us[0]:
            return np.asarray(getattr(levels[0], field), float)
        if utilization >= us[-1]:
            return np.asarray(getattr(levels[-1], field), float)
        k = int(np.searchsorted(us, utilization)) - 1
        w = (utilization - us[k]) / max(us[k + 1] - us[k], 1e-12)
        return (1 - w) * np.asarray(getattr(levels[k], field), float) + w * np.asarray(getattr(levels[k + 1], field),
                                                                                      float)


def to_frame(profile: dict[str, ServedPasses]) -> pd.DataFrame:
    """The served profile as ``served_profile.csv`` stores it."""
    frames = []
    for name, passes in profile.items():
        for level in passes.levels:
            frame = pd.DataFrame({"model": name, "utilization": level.utilization, "rate_per_ms": level.rate_per_ms,
                                  "n_lone": level.n_lone, "ms": level.samples_ms})
            if passes.has_delays:
                frame["out_ms"], frame["back_ms"] = level.out_ms, level.back_ms
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))


def from_frame(table: pd.DataFrame) -> dict[str, ServedPasses]:
    """The served profile from its table (ValueError naming what is wrong when it is not one)."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"needs the columns {', '.join(COLUMNS)} (missing {', '.join(missing)})")
    out: dict[str, ServedPasses] = {}
    for name, rows in table.groupby(table["model"].astype(str), sort=False):
        levels = []
        for (u, rate, n), level in rows.groupby(["utilization", "rate_per_ms", "n_lone"], sort=True):
            delays = {c: tuple(pd.to_numeric(level[c], errors="coerce").astype(float))
                      for c in DELAY_COLUMNS if c in level.columns}
            levels.append(ServedLevel(utilization=float(u), rate_per_ms=float(rate), n_lone=int(n),
                                      samples_ms=tuple(pd.to_numeric(level["ms"], errors="coerce").astype(float)),
                                      **delays))
        out[str(name)] = ServedPasses(levels=tuple(levels))
    return out


def read_served_profile(path: Path) -> dict[str, ServedPasses]:
    """``served_profile.csv`` (ValueError / OSError when it cannot be read or is not one)."""
    return from_frame(pd.read_csv(path))
