"""Validated description of a model zoo: one base model and N experts fine-tuned from it.

Everything that can be checked without touching data is checked here, so a bad file fails before any work.
The same table appears as `[models]` inside scenario files; a bare zoo file is accepted too.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.data import DATASETS, TORCHVISION
from models.networks import NetworkSpec

NUM_CLASSES = {"mnist5k": 10, "digits": 10, "mnist": 10, "fashionmnist": 10, "cifar10": 10}


class ConfigError(ValueError):
    """A zoo/scenario file that cannot be used; the message is one line meant for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainSpec(_Strict):
    """Optimiser knobs (AdamW, as in the paper's appendix)."""

    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(3, ge=1)
    freeze_bn: bool = Field(True, description="keep BatchNorm running statistics fixed (fine-tuning only)")


def _canonical_dataset(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown data set '{name}' (known: {', '.join(DATASETS)})")
    return key


class BaseSpec(_Strict):
    """The shared starting point: trained on a seeded share of the train splits, never on test data."""

    datasets: list[str] | None = Field(None, description="defaults to every data set the experts use")
    fraction: float = Field(0.5, gt=0, le=1, description="share of each train split the base sees")
    train: TrainSpec = TrainSpec(lr=1e-3, batch_size=64, weight_decay=0.0, epochs=6, freeze_bn=False)

    @field_validator("datasets")
    @classmethod
    def _canonical(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_canonical_dataset(n) for n in value]


class ExpertSpec(_Strict):
    """One expert: a data set and the labels of its partition (all labels when omitted)."""

    name: str = Field(min_length=1)
    dataset: str
    labels: list[int] | None = None

    @field_validator("dataset")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return _canonical_dataset(value)

    @model_validator(mode="after")
    def _labels_exist(self) -> ExpertSpec:
        if self.labels is not None:
            k = NUM_CLASSES[self.dataset]
            bad = [label for label in self.labels if not 0 <= label < k]
            if bad:
                raise ValueError(f"expert '{self.name}': labels {bad} do not exist in {self.dataset} (0..{k - 1})")
            if not self.labels or len(set(self.labels)) != len(self.labels):
                raise ValueError(f"expert '{self.name}': labels must be a non-empty list without repeats")
        return self

    def partition(self) -> str:
        """Human label of the partition, e.g. 'mnist5k[0-4]'."""
        if self.labels is None:
            return f"{self.dataset}[all]"
        ls = sorted(self.labels)
        if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 2:
            return f"{self.dataset}[{ls[0]}-{ls[-1]}]"
        return f"{self.dataset}[{','.join(map(str, ls))}]"


def default_cache_dir() -> Path:
    return Path(os.environ.get("COINSIM_CACHE", Path.home() / ".cache" / "coinsim"))


class ZooConfig(_Strict):
    """Base + experts: data, network, training, seed and where trained weights are cached."""

    name: str = "custom"
    seed: int = Field(0, ge=0)
    data_root: Path | None = None
    download: bool = False
    test_fraction: float = Field(0.2, gt=0, lt=1, description="test share of embedded data sets")
    network: NetworkSpec = NetworkSpec()
    base: BaseSpec = BaseSpec()
    experts: list[ExpertSpec] = Field(min_length=2)
    finetune: TrainSpec = TrainSpec(lr=5e-4, batch_size=64, weight_decay=0.01, epochs=5, freeze_bn=True)
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ZooConfig:
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names):
            raise ValueError(f"expert names must be unique, got {names}")
        for expert in self.experts:
            if NUM_CLASSES[expert.dataset] > self.network.num_classes:
                raise ValueError(
                    f"expert '{expert.name}': {expert.dataset} has {NUM_CLASSES[expert.dataset]} classes but the "
                    f"network outputs {self.network.num_classes}"
                )
        needs_root = sorted({d for d in self.datasets() if d in TORCHVISION})
        if needs_root:
            if self.data_root is None:
                raise ValueError(f"data sets {needs_root} need data_root (a folder holding them)")
            if not Path(self.data_root).expanduser().is_dir() and not self.download:
                raise ValueError(f"data_root {self.data_root} does not exist (create it, or set download = true)")
        return self

    def datasets(self) -> list[str]:
        """Every data set the zoo touches, in first-use order."""
        seen = [e.dataset for e in self.experts] + list(self.base.datasets or [])
        return list(dict.fromkeys(seen))

    def base_datasets(self) -> list[str]:
        return self.base.datasets or list(dict.fromkeys(e.dataset for e in self.experts))

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


def validation_problems(error: ValidationError) -> list[str]:
    """Every problem pydantic found, as 'a.b: message' (a nested model that condensed its own error into one with
    `loc` and `detail`, as the simulator's config does, has its location spliced under ours)."""
    out = []
    for item in error.errors():
        loc, inner = ".".join(str(p) for p in item["loc"]), (item.get("ctx") or {}).get("error")
        if hasattr(inner, "detail"):
            loc, message = ".".join(x for x in (loc, getattr(inner, "loc", "")) if x), inner.detail
        else:
            message = item["msg"].removeprefix("Value error, ")
        out.append(f"{loc or 'top level'}: {message}")
    return out


def format_validation(error: ValidationError, source: str) -> str:
    """All problems on one line: 'source: a.b: message; c: message'."""
    return f"{source}: " + "; ".join(validation_problems(error))


def read_zoo_file(path: str | Path) -> tuple[dict, str]:
    """TOML table of a zoo or scenario file; (data, source label)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), str(path)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: malformed TOML: {error}") from None
    except RecursionError:  # the parser recurses once per level of nested arrays or inline tables
        raise ConfigError(f"{path}: malformed TOML: nested too deeply to read") from None
