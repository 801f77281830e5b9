"""A zoo table as the user writes it (TOML file, or a scenario's [models]) to its validated config: a trained zoo
(`models.config.ZooConfig`) or, with an `architecture` key, given networks (`models.given_config.GivenZooConfig`).
Above both, so neither imports the other for this."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from models.config import ConfigError, ZooConfig, format_validation, read_zoo_file
from models.given import given_config_from_table


def zoo_config_from_dict(data: dict, source: str = "config", overrides: dict | None = None) -> ZooConfig:
    """Validate a zoo table (or a scenario holding one under [models]).

    A table with an `architecture` key describes given networks instead: a models.given_config.GivenZooConfig.
    """
    table = dict(data.get("models", data))
    if "seed" not in table and "seed" in data:
        table["seed"] = data["seed"]
    if "name" not in table:
        table["name"] = data.get("name", Path(source).stem if source.endswith(".toml") else source)
    table.update(overrides or {})
    if "architecture" in table:
        return given_config_from_table(table, source)  # type: ignore[return-value]
    try:
        return ZooConfig.model_validate(table)
    except ValidationError as error:
        raise ConfigError(format_validation(error, source)) from None


def load_zoo_config(path: str | Path, **overrides) -> ZooConfig:
    """ZooConfig from a TOML file (built-in scenarios are resolved by name in `scenarios`)."""
    data, source = read_zoo_file(path)
    return zoo_config_from_dict(data, source, {k: v for k, v in overrides.items() if v is not None})
