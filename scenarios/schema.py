"""One typed scenario: which experts, how they are coded, how they are served, what is swept.

A scenario file is TOML. `[models]` is a zoo (see models.config); `[coding]`, `[profile]` and `[sweep]` are
defined here; `[sim]` is the simulator's own table (see sim.SimConfig) minus what the runner fills in from the
real networks: the number of experts, their names, the sample pools and — unless given — the service-time
distributions (from the measured latency profile) and the arrival rate (from `traffic.load`).

A scenario without `[models]` is a pure simulation: service must then be given as distributions.
Everything is validated up front, sweep points included, so a bad file never starts any work.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.config import ConfigError, ZooConfig, read_zoo_file, validation_problems
from models.given_config import GivenZooConfig
from models.tables import zoo_config_from_dict
from sim import SimConfig, SimConfigError, parse_config
from sim.config import Deployment, PolicySpec


class ScenarioError(ValueError):
    """A scenario that cannot run; one line for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CodingSpec(_Strict):
    """The coded model that the parity server hosts, plus the methods to compare in the NDA table."""

    method: str = "coin"
    compare: list[str] = Field(default_factory=list)
    backup: str | None = Field(None, description="coding method of the generalist a backup server hosts (policy "
                                                 "kind 'backup'); default: the coded model itself (`method`)")
    backup_classes: Literal["task", "all"] = Field(
        "task", description="a backup answer to a query routed to expert i: the generalist's argmax over the classes "
                            "of expert i's task ('task'; a routed query carries its task) or over every class ('all')")
    beta: list[float] | None = None
    betas: list[list[float]] | None = Field(None, description="r coding-weight vectors, one per coded model")
    samples: int = Field(200, ge=1, description="P, the inputs the coding method may look at")
    parity_epochs: int = Field(20, ge=1, description="training epochs of each parity network (policy 'parity')")
    parity_init: Literal["base", "scratch"] = Field("base", description="a parity network starts from the base "
                                                                        "model or from fresh weights")
    parity_encoder: Literal["sum", "concat"] = Field("sum", description="how a parity group's k inputs become one: "
                                                     "their sum, or each shrunk to a tile of one image (concat)")


class ProfileSpec(_Strict):
    """Latency profile of each served network on the device: warm-up passes, then timed passes."""

    mode: Literal["profiled", "live"] = "profiled"
    batch_size: int = Field(1, ge=1)
    warmup: int = Field(10, ge=0)
    samples: int = Field(200, ge=5)
    live_check_queries: int = Field(0, ge=0, description="also replay this many queries with live forward passes")
    threads: int = Field(1, ge=1, description="CPU threads per served network while timing (one core per server)")
    preempted_retries: int = Field(10, ge=0, description="re-time a round of passes up to this many times when "
                                   "another process took the core during it (0: keep preempted passes)")
    replay: Path | None = Field(None, description="reuse profile.csv of an earlier result folder instead of timing")
    latency_model: Literal["served", "compute"] = Field(
        "served", description="served: predict what serving the networks on this machine shows (isolated profile "
                              "+ the machine's serving calibration); compute: bare forward passes only")
    calibration: Path | None = Field(None, description="serving calibration file (default: this machine's, "
                                                       "measured first when there is none)")
    served_passes: Literal["measured", "calibration"] = Field(
        default_factory=lambda: "calibration" if os.environ.get("COINSIM_SERVED_PASSES") == "calibration"
        else "measured",
        description="served latency only — measured: the scenario's own networks served by real server processes "
                    "under traffic for a few seconds, their passes kept per core utilization (cached per networks "
                    "and calibration); calibration: the isolated profile plus the calibration's mean extra for a "
                    "network of that pass time (no servers started; default when $COINSIM_SERVED_PASSES=calibration)")
    served_drift_pct: float = Field(
        5.0, ge=0, le=100,
        description="a cached served profile is used while every network's isolated median pass is within this "
                    "many percent of the one measured with it; beyond, the machine has changed and the served "
                    "profile is measured again")
    served_probe: bool = Field(
        True, description="before a cached served profile is used, serve its networks' lowest level again for a "
                          "few seconds and compare (served passes moved 20-30 % here while isolated ones held)")
    served_probe_pct: float = Field(
        15.0, ge=0, le=100,
        description="the probe confirms a cached served profile while every network's mean lone served pass is "
                    "within this many percent of the profile's (beyond the two means' own noise); the default "
                    "spans how much served passes move within minutes here (back-to-back probes: -13 to +5 %)")

    @model_validator(mode="after")
    def _replayable(self) -> ProfileSpec:
        if self.replay is not None and not (Path(self.replay).expanduser() / "profile.csv").is_file():
            raise ValueError(f"profile.replay: {self.replay} has no profile.csv")
        if self.replay is not None and self.mode == "live":
            raise ValueError("profile.replay and mode = 'live' exclude each other")
        return self


class TestbedSpec(_Strict):
    """How `coinsim testbed` serves the scenario for real (one server process per server, ZeroMQ transport)."""

    repeats: int = Field(3, ge=1, description="identical repeats of every point and policy (run-to-run spread)")
    straggle: Literal["stall", "compute"] | None = Field(
        None, description="a straggling task is held idle (stall: network/I-O) or keeps computing (compute); "
                          "default: the scenario's sim.stragglers.hold, which the simulation then uses too")
    addresses: list[str] | None = Field(None, description="N + r running servers (tcp://host:port); default: "
                                                          "start them on this host")
    pin: bool = Field(False, description="pin server s to CPU core s mod cores where the OS allows")
    threads: int = Field(1, ge=1, description="torch threads per server process")
    lead_ms: float = Field(200.0, gt=0, le=60_000, description="pause between runs before the first arrival")


AXIS_COLUMNS = {"stragglers.p": "straggler_p", "traffic.load": "load", "traffic.strength": "traffic_strength"}


def scheduler_address(address: str) -> tuple[str, int]:
    """(host, port) of a Dask scheduler address such as tcp://10.0.0.5:8786 or host:8786; ValueError if the
    address cannot be one."""
    text = address.strip()
    parts = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"scheduler address {address!r} is not of the form tcp://host:port")
    return parts.hostname, port


def axis_column(axis: str) -> str:
    """Column name of a sweep axis in result tables: 'stragglers.p' → 'straggler_p'."""
    return AXIS_COLUMNS.get(axis, axis.replace(".", "_"))


class SweepSpec(_Strict):
    """A grid over fields of the [sim] table: `axis` + `values` for one axis, or `grid` for several
    (every combination is a point). `follow` moves other fields with the one axis: point i sets each of them to
    its i-th value (e.g. the extra servers r growing with the instances, to keep their share)."""

    axis: str | None = None
    values: list[Any] | None = None
    grid: dict[str, list[Any]] | None = None
    follow: dict[str, list[Any]] | None = Field(None, description="fields set to their i-th value at the axis' "
                                                                  "i-th point")
    executor: Literal["local", "dask"] = "local"
    workers: int = Field(1, ge=1)
    scheduler: str | None = Field(None, description="address of a running Dask scheduler, tcp://host:port "
                                                    "(else a local cluster); only with executor = 'dask'")

    @model_validator(mode="after")
    def _one_form(self) -> SweepSpec:
        if self.scheduler is not None:
            scheduler_address(self.scheduler)
            if self.executor != "dask":
                raise ValueError("sweep.scheduler is only used with executor = 'dask'")
        if (self.axis is None) != (self.values is None):
            raise ValueError("sweep: give axis and values together")
        if self.axis is not None and self.grid is not None:
            raise ValueError("sweep: give either axis + values or grid, not both")
        if self.axis is None and not self.grid:
            raise ValueError("sweep: needs axis + values or a grid")
        if any(not v for v in self.axes().values()):
            raise ValueError("sweep: every axis needs at least one value")
        if self.follow is not None:
            if self.axis is None:
                raise ValueError("sweep.follow moves fields with one axis: give it with axis + values, not grid")
            for key, values in self.follow.items():
                if len(values) != len(self.values or []):
                    raise ValueError(f"sweep.follow.{key} has {len(values)} values for the axis' "
                                     f"{len(self.values or [])}")
                if key == self.axis:
                    raise ValueError(f"sweep.follow.{key} is the axis itself")
        return self

    def axes(self) -> dict[str, list[Any]]:
        return {self.axis: list(self.values or [])} if self.axis is not None else dict(self.grid or {})

    @property
    def columns(self) -> list[str]:
        return [axis_column(a) for a in self.axes()]


class TrafficTable(BaseModel):
    """[sim.traffic]: the simulator's traffic table (sim.config checks every other key at each point, before any
    work) and the scenario's own loads, which become rates once the pass times are known."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    load: float | None = Field(None, description="routed queries as a fraction of the N experts' capacity")
    ensemble_load: float | None = Field(None, description="ensemble queries as a fraction of the slowest expert's")


class SimTable(BaseModel):
    """[sim]: the simulator's table as a scenario gives it. The fields the scenario layer reads are typed here;
    the rest is the simulator's own config (sim.SimConfig), checked whole at every sweep point before any work,
    once the runner has filled in the experts and their measured service."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    n_experts: int | None = Field(None, ge=1, description="N, for a scenario without [models]")
    r: int = Field(1, ge=0, description="extra servers: replicas, coded servers, backups or spares")
    policies: list[PolicySpec] = Field(default_factory=lambda: [PolicySpec(kind="uncoded"), PolicySpec(kind="coded")])
    traffic: TrafficTable = Field(default_factory=TrafficTable)
    deployment: Deployment = Field(default_factory=Deployment)

    _validate_policies = field_validator("policies", mode="before")(
        classmethod(lambda cls, v: [v] if isinstance(v, str | dict) else v))

    def table(self) -> dict[str, Any]:
        """The table as given (keys the scenario set, nothing filled in), for a point to change and the simulator
        to read."""
        return self.model_dump(exclude_unset=True, exclude_none=False)

    def updated(self, changes: dict[str, Any]) -> SimTable:
        """This table with top-level keys replaced by `changes`, validated again."""
        return SimTable.model_validate(self.table() | changes)


class Scenario(_Strict):
    name: str = "scenario"
    description: str = ""
    seed: int = Field(0, ge=0)
    allow_unstable: bool = Field(
        False,
        description="simulate loads the servers cannot keep up with (sim.traffic.load >= 1, or outside a policy's "
                    "capacity region); refused otherwise. Queues then grow for the whole run, so the latencies "
                    "describe that run's transient, not a steady state, and depend on n_queries / horizon_ms",
    )
    device: str = "auto"
    models: ZooConfig | GivenZooConfig | None = None  # GivenZooConfig: a user's own checkpoints
    coding: CodingSpec = CodingSpec()
    profile: ProfileSpec = ProfileSpec()
    testbed: TestbedSpec = TestbedSpec()
    sim: SimTable
    sweep: SweepSpec | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # the results folder is `--out / name`: a name is one folder name, never a path out of `--out`
        if not re.fullmatch(r"\w[\w .+-]{0,99}", value) or ".." in value or value != value.strip():
            raise ValueError(f"name {value!r} must be a plain folder name (letters, digits, spaces, '.', '_', '+', "
                             "'-'; at most 100 characters; no '/', '\\' or '..'): results are written under --out")
        return value

    def _check_parity_encoder(self) -> None:
        """The concat encoder tiles k images into one: the zoo's image side must split into the grid's rows and
        columns for every parity k (a given network's inputs are checked when its parity networks are trained)."""
        from coin.parity import grid

        if self.coding.parity_encoder != "concat" or not isinstance(self.models, ZooConfig):
            return
        side = self.models.network.image_size
        for p in self.sim.policies:
            if p.kind == "parity" and p.k is not None:
                rows, cols = grid(int(p.k))
                if side % rows or side % cols:
                    raise ValueError(f"coding.parity_encoder = 'concat' cannot tile {p.k} images of {side}×{side} "
                                     f"pixels in a {rows}×{cols} grid (the side must divide evenly)")

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.models is not None:
            n = len(self.models.experts)
            if self.coding.beta is not None and len(self.coding.beta) != n:
                raise ValueError(f"coding.beta has {len(self.coding.beta)} weights for {n} experts")
            self._check_parity_encoder()
            if self.sim.deployment.backups == "per_group" and self.coding.backup not in (None, self.coding.method):
                raise ValueError("sim.deployment.backups = 'per_group' hosts each code group's own coded model on its "
                                 f"backups; coding.backup = {self.coding.backup!r} cannot name another network then")
            groups = self.sim.deployment.groups
            moving = set(self.sweep.axes()) | set(self.sweep.follow or {}) if self.sweep is not None else set()
            if groups is not None and "r" in moving:
                raise ValueError("sim.deployment.groups with r swept: each group's coded servers are numbered by r, so "
                                 "r must be one value across the sweep when groups are coded with [models]")
            if groups is not None:
                if any(len(g) < 2 for g in groups):
                    raise ValueError("sim.deployment.groups: with [models] every code group needs at least 2 experts "
                                     f"(a coded model merges its group's experts; got {[list(g) for g in groups]})")
                if self.coding.betas is not None:
                    raise ValueError("coding.betas gives one code over all experts; with sim.deployment.groups give "
                                     "coding.beta (each group's coded model uses its experts' weights) or neither")
            r = max(1, self.sim.r)
            if self.coding.betas is not None and (len(self.coding.betas) != r or
                                                  any(len(b) != n for b in self.coding.betas)):
                raise ValueError(f"coding.betas must hold r = {r} vectors of {n} weights")
        else:
            if self.sim.n_experts is None:
                raise ValueError("a scenario without [models] needs sim.n_experts and sim.service")
        return self

    @property
    def n_experts(self) -> int:
        return len(self.models.experts) if self.models is not None else int(self.sim.n_experts or 0)

    @property
    def n_servers(self) -> int:
        """Servers every policy runs on: each expert's instances and the r extra servers."""
        return self.servers_at(self.sim)

    def servers_at(self, sim: SimTable) -> int:
        """Servers every policy runs on at a point whose [sim] table is `sim`."""
        dep = sim.deployment
        return sum(dep.counts(self.n_experts)) + sim.r * len(dep.code_groups(self.n_experts))

    @property
    def backup_method(self) -> str:
        """The coding method whose network the generalist-backup servers host."""
        return self.coding.backup or self.coding.method

    @property
    def backup_is_coded(self) -> bool:
        """True when the generalist is the coded model itself (one network, profiled once, as 'coded'). With code
        groups, pooled backups host a generalist coded over every expert (no coded model is); per-group backups
        host their own group's coded model."""
        dep = self.sim.deployment
        return self.backup_method == self.coding.method and (not dep.groups or dep.backups == "per_group")

    def served_names(self) -> list[str]:
        """Names of the networks the latency profile times: the experts, 'coded' and, when it is another
        network, 'backup'."""
        assert self.models is not None
        return [e.name for e in self.models.experts] + ["coded"] + ([] if self.backup_is_coded else ["backup"])

    def sweep_points(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """({axis: value}, sim table) for every grid point; one point with no values when not sweeping."""
        if self.sweep is None:
            return [({}, self.sim.table())]
        axes = self.sweep.axes()
        follow = self.sweep.follow or {}
        points = []
        for i, combo in enumerate(itertools.product(*axes.values())):
            table = self.sim.table()
            for axis, value in zip(axes, combo, strict=True):
                set_path(table, axis, value)
            for key, values in follow.items():  # one axis only: its i-th point
                set_path(table, key, values[i])
            points.append((dict(zip(axes, combo, strict=True)), table))
        return points


def set_path(table: dict[str, Any], dotted: str, value: Any) -> None:
    """table['a']['b'] = value for dotted = 'a.b', creating sub-tables as needed."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise ScenarioError(f"sweep axis '{dotted}': '{key}' is not a table")
    table[leaf] = value


def sim_config_for(
    scenario: Scenario,
    table: dict[str, Any],
    expert_service: list[Any] | None = None,
    coded_service: Any | None = None,
    sample_pools: list[int] | None = None,
    check_capacity: bool = False,
    backup_service: Any | None = None,
    capacity: Any | None = None,
) -> SimConfig:
    """The simulator config of one point, with the runner's measured facts filled in.

    `traffic.load` (a fraction of the N experts' capacity) becomes a total routed rate using the mean of the
    expert service distributions, so a scenario means the same thing on a fast GPU and a slow laptop;
    `capacity(means, counts)`, when given, is that capacity instead (the served model's: servers and shared cores;
    `counts`: each expert's instances).
    Unless the scenario sets `allow_unstable`, a load of 1 or more is refused, and so, with `check_capacity`, is
    a point outside some policy's capacity region (see sim.layout.check_stability).
    """
    table = copy.deepcopy(table)
    if scenario.models is not None:
        table["n_experts"] = scenario.n_experts
        table.setdefault("model_names", [e.name for e in scenario.models.experts])
        service = table.setdefault("service", {})
        if expert_service is not None and "expert" not in service and "experts" not in service:
            service["experts"] = expert_service
        if coded_service is not None and "coded" not in service:
            service["coded"] = coded_service
        if backup_service is not None and "backup" not in service:  # else: the coded servers' (same network)
            service["backup"] = backup_service
    traffic = table.setdefault("traffic", {})
    if sample_pools is not None:
        traffic["sample_pool"] = sample_pools
        traffic.setdefault("ensemble_sample_pool", min(sample_pools))
    load, ensemble_load = traffic.pop("load", None), traffic.pop("ensemble_load", None)
    for name, value in (("load", load), ("ensemble_load", ensemble_load)):
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ScenarioError(f"sim.traffic.{name} must be a positive fraction of expert capacity, got {value!r}")
        if value is not None and value >= 1 and not scenario.allow_unstable:
            raise ScenarioError(f"sim.traffic.{name} = {value!r} is at or above the experts' capacity (1.0 = every "
                                "expert busy all the time), so their queues grow without bound; lower it, or set "
                                "allow_unstable = true to simulate the transient")
    if load is not None or ensemble_load is not None:
        stand_in = {"rate_per_ms": 1.0} if traffic.get("kind", "poisson") != "trace" else {}
        partial = parse_config({**table, "traffic": {**traffic, **stand_in}, "n_queries": 1, "horizon_ms": None})
        beside = partial.service.beside_pass_ms
        means = [partial.service.expert_dist(i).mean() + beside for i in range(partial.n_experts)]
        counts = list(partial.instance_counts)
        if load is not None:  # routed queries: a fraction of the combined capacity of every expert instance
            routed_capacity = (sum(k / m for m, k in zip(means, counts, strict=True)) if capacity is None
                               else capacity(means, counts))
            traffic["rate_per_ms"] = load * routed_capacity
        if ensemble_load is not None:  # ensemble queries occupy every expert: limited by the slowest
            traffic["ensemble_rate_per_ms"] = ensemble_load * min(k / m for m, k in zip(means, counts, strict=True))
    if check_capacity and not scenario.allow_unstable:
        _check_capacity(table, load)
    return parse_config(table)


def _check_capacity(table: dict[str, Any], load: float | None) -> None:
    """Refuse a point outside some policy's capacity region, naming the load and the capacity."""
    from sim.layout import check_stability

    explicit = table.get("n_queries") is not None or table.get("horizon_ms") is not None
    problem = check_stability(parse_config(table if explicit else {**table, "n_queries": 1}))
    if problem:
        where = f"sim.traffic.load = {load!r}: " if load is not None else ""
        raise ScenarioError(f"unstable load: {where}{problem}; lower the load, or set allow_unstable = true to "
                            "simulate the transient")


_PLACEHOLDER_SERVICE = {"kind": "exponential", "mean_ms": 1.0}


def stand_in_configs(scenario: Scenario) -> list[tuple[dict[str, Any], SimConfig]]:
    """Every sweep point's SimConfig, with stand-in service times where the real ones are measured later.

    With networks ([models]) the pass times are measured later, so the capacity region is checked with one
    stand-in pass time for every network: exact for networks of one architecture up to the few per cent their
    measured passes differ by (the coded network always shares the experts' architecture). The runner checks it
    again with the measured times before simulating (`build_point_configs`).
    """
    n = scenario.n_experts
    configs = []
    for values, table in scenario.sweep_points():
        try:
            configs.append((values, sim_config_for(
                scenario,
                table,
                expert_service=[_PLACEHOLDER_SERVICE] * n if scenario.models is not None else None,
                coded_service=_PLACEHOLDER_SERVICE if scenario.models is not None else None,
                sample_pools=[1] * n if scenario.models is not None else None,
                check_capacity=True,
            )))
        except (SimConfigError, ScenarioError) as error:
            raise ScenarioError(f"{str(error).splitlines()[0]}{_where(values)}") from None
    return configs


def _where(values: dict[str, Any]) -> str:
    return "".join(f" (sweep {k} = {v!r})" for k, v in values.items())


def trace_arrivals(config: SimConfig) -> int:
    """How many arrivals a trace-driven point simulates; SimConfigError if its trace CSV is missing, does not
    parse, names unknown models or has no arrival inside the point's n_queries / horizon_ms."""
    from sim.draws import _read_trace

    times, _ = _read_trace(config)
    if config.horizon_ms is not None:
        times = times[times < config.horizon_ms]
    count = min(len(times), config.n_queries) if config.n_queries is not None else len(times)
    if count == 0:
        source = config.traffic.trace_csv or "traffic.trace_times_ms"
        raise SimConfigError(f"sim config: trace {source} has no arrivals in the horizon")
    return count


def validate_scenario_sims(scenario: Scenario) -> None:
    """Build every sweep point's SimConfig (and read its trace), so sim errors surface before any work."""
    for values, config in stand_in_configs(scenario):
        if config.traffic.kind == "trace":
            try:
                trace_arrivals(config)
            except SimConfigError as error:
                raise ScenarioError(f"{str(error).splitlines()[0]}{_where(values)}") from None


def non_finite_fields(value: Any, path: str = "") -> list[tuple[str, float]]:
    """(dotted path, value) of every inf or nan number in a (TOML) table."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(path or "top level", value)]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_fields(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in non_finite_fields(v, f"{path}[{i}]")]
    return []


def read_profile(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Latency samples saved by an earlier run, so a run can be repeated number for number.

    ScenarioError when profile.csv cannot be read, lacks a network or holds a time that is not a positive number.
    """
    import pandas as pd

    path = folder / "profile.csv"
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:  # pandas' parser and decoding errors are ValueErrors
        raise ScenarioError(f"profile.replay: cannot read {path}: {str(error).strip().splitlines()[0]}") from None
    if not {"model", "ms"} <= set(table.columns):
        raise ScenarioError(f"profile.replay: {path} needs the columns model, ms")
    missing = [n for n in names if n not in set(table["model"].astype(str))]
    if missing:
        raise ScenarioError(f"profile.replay: {path} has no samples for {', '.join(missing)}")
    samples = {n: pd.to_numeric(table.loc[table["model"].astype(str) == n, "ms"], errors="coerce").to_numpy(float)
               for n in names}
    bad = [n for n, ms in samples.items() if not np.all(np.isfinite(ms) & (ms > 0))]
    if bad:
        raise ScenarioError(f"profile.replay: {path} has times that are not positive numbers for {', '.join(bad)}")
    return samples


def _check_replay(scenario: Scenario) -> None:
    """profile.replay must hold latency samples for every network this scenario serves."""
    assert scenario.models is not None and scenario.profile.replay is not None
    read_profile(Path(scenario.profile.replay).expanduser(), scenario.served_names())


def scenario_from_dict(data: dict[str, Any], source: str = "scenario") -> Scenario:
    """Validate a whole scenario table; every problem found goes into one one-line ScenarioError.

    Checks run in layers — the [models] table, the rest of the file, coding methods and weights, then every
    sweep point's simulator config — and a layer that needs an earlier one only runs once that one passed.
    """
    data = copy.deepcopy(data)
    bad_numbers = non_finite_fields(data)
    if bad_numbers:
        raise ScenarioError(f"{source}: " + "; ".join(f"{where}: must be a finite number, got {value!r}"
                                                      for where, value in bad_numbers))
    problems: list[str] = []
    zoo_ok = True
    if "models" in data:
        try:
            data["models"] = zoo_config_from_dict(data, source)
        except ConfigError as error:
            problems.extend(str(error).removeprefix(f"{source}: ").split("; "))
            zoo_ok = False
    stand_in = dict(data)
    if not zoo_ok:
        stand_in.pop("models")
        stand_in["sim"] = {"n_experts": 1, **(stand_in.get("sim") or {})}  # only to check the other tables
    try:
        scenario = Scenario.model_validate(stand_in)
    except ValidationError as error:
        problems.extend(validation_problems(error))
        raise ScenarioError(f"{source}: " + "; ".join(dict.fromkeys(problems))) from None
    if problems:
        raise ScenarioError(f"{source}: " + "; ".join(problems))
    if scenario.models is not None:
        import coin
        from coin.multicode import check_coding_matrix

        known = coin.available()
        for method in [scenario.coding.method, *scenario.coding.compare]:
            if method not in known:
                problems.append(f"coding: unknown method '{method}' (known: {', '.join(known)})")
        if scenario.coding.backup is not None and scenario.coding.backup not in known:
            problems.append(f"coding.backup: unknown method '{scenario.coding.backup}' (known: {', '.join(known)})")
        for weights in [*([scenario.coding.beta] if scenario.coding.beta else []), *(scenario.coding.betas or [])]:
            try:
                check_coding_matrix([weights], scenario.n_experts)
            except coin.CodingError as error:
                problems.append(f"coding: {error}")
    if scenario.models is not None:
        from models.networks import DeviceError, pick_device

        try:
            pick_device(scenario.device)
        except DeviceError as error:
            problems.append(f"device: {error}")
        if scenario.profile.replay is not None:
            try:
                _check_replay(scenario)
            except ScenarioError as error:
                problems.append(str(error))
    try:
        validate_scenario_sims(scenario)
    except ScenarioError as error:
        problems.append(str(error))
    if problems:
        raise ScenarioError(f"{source}: " + "; ".join(problems))
    return scenario


def builtin_names() -> list[str]:
    """Names of the scenarios shipped inside the package (scenarios/builtin/*.toml)."""
    folder = resources.files("scenarios") / "builtin"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(name_or_path: str | Path) -> tuple[dict, str]:
    """TOML table from a file path or a built-in scenario name; (data, source label)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():  # a folder named like a built-in does not shadow it
        try:
            return read_zoo_file(path)
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                              f"{error.start}); save the scenario as UTF-8") from None
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    resource = resources.files("scenarios") / "builtin" / f"{name_or_path}.toml"
    if not resource.is_file():
        raise ConfigError(f"unknown scenario '{name_or_path}' (built-in: {', '.join(builtin_names())})")
    data = tomllib.loads(resource.read_text(encoding="utf-8"))
    data.setdefault("name", str(name_or_path))
    return data, f"scenario '{name_or_path}'"


def load_zoo_config(name_or_path: str | Path = "quickstart", **overrides) -> ZooConfig:
    """The [models] table of a built-in scenario or TOML file; keyword overrides win (e.g. seed=1)."""
    data, source = read_toml(name_or_path)
    return zoo_config_from_dict(data, source, {k: v for k, v in overrides.items() if v is not None})


EVERY_SEED = "*seed"  # an override key: every seed the scenario has (`--seed`)


def load_scenario(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Scenario, dict]:
    """(validated scenario, the raw table it came from) from a built-in name or a TOML path."""
    try:
        data, source = read_toml(name_or_path)
    except ConfigError as error:
        raise ScenarioError(str(error)) from None
    if isinstance(name_or_path, str) and source.startswith("scenario"):
        data.setdefault("name", name_or_path)
    elif "name" not in data:
        data["name"] = re.sub(r"[^\w .+-]|\.\.", "_", Path(name_or_path).stem).strip(" .")[:100] or "scenario"
    if isinstance(data.get("models"), dict):  # the zoo's seed is the file's, whatever the overrides do to `seed`
        data["models"].setdefault("seed", data.get("seed", 0))
    for dotted, value in (overrides or {}).items():
        if dotted == EVERY_SEED:  # the scenario's seed and, where it has networks of its own, theirs
            set_path(data, "seed", value)
            if isinstance(data.get("models"), dict):
                set_path(data, "models.seed", value)
            continue
        set_path(data, dotted, value)
    return scenario_from_dict(data, source), data
