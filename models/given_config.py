"""The schema of given networks: a `[models]` table with an `architecture` key (`GivenZooConfig`) — how to
build the network, its checkpoints, its data and the preprocessing pipeline — and how another process rebuilds the
architecture (`network_recipe` / `rebuild_network`). Plain configuration, below both the loader (models.given)
and what a built zoo is (models.experts)."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

if TYPE_CHECKING:
    from models.networks import NetworkSpec

FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------- architecture


class GivenArchitecture(BaseModel):
    """How to build the network the checkpoints belong to; every other key is a keyword argument.

    `torchvision = "resnet18"` builds `torchvision.models.get_model("resnet18", weights=None, **kwargs)` (never
    a download: the weights come from the checkpoints); `factory = "package.module:function"` imports that
    callable and calls it with the keyword arguments. JSON-serialisable, so another process can rebuild the
    network from `model_dump_json()` (see `network_recipe` / `rebuild_network`).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    torchvision: str | None = Field(None, description="a torchvision.models name, e.g. resnet18")
    factory: str | None = Field(None, description="'package.module:callable' returning an nn.Module")

    @model_validator(mode="after")
    def _one_way(self) -> GivenArchitecture:
        if (self.torchvision is None) == (self.factory is None):
            raise ValueError("give exactly one of torchvision = '<model name>' or factory = 'package.module:callable'")
        if self.torchvision is not None:
            from torchvision.models import list_models

            known = list_models()
            if self.torchvision not in known:
                close = get_close_matches(self.torchvision, known, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ValueError(f"unknown torchvision model '{self.torchvision}'{hint}")
            taken = sorted(k for k in self.kwargs() if k.startswith("weights"))
            if taken:
                raise ValueError(f"torchvision '{self.torchvision}': {', '.join(taken)} cannot be given here "
                                 "(the weights come from the base and expert checkpoints)")
        else:
            self.factory_function()
        return self

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments: every key besides torchvision / factory."""
        return dict(self.model_extra or {})

    def factory_function(self) -> Callable[..., Any]:
        """The factory function; ValueError (one line) when it cannot be imported."""
        assert self.factory is not None
        if not FACTORY_PATTERN.match(self.factory):
            raise ValueError(f"factory '{self.factory}' is not of the form 'package.module:callable'")
        module_name, attr = self.factory.split(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # noqa: BLE001 - any failure to import is the user's to fix
            raise ValueError(f"factory '{self.factory}': cannot import {module_name} "
                             f"({type(error).__name__}: {first_line(error)})") from None
        target: Any = module
        for part in attr.split("."):
            if not hasattr(target, part):
                raise ValueError(f"factory '{self.factory}': {module_name} has no attribute {attr}")
            target = getattr(target, part)
        if not callable(target):
            raise ValueError(f"factory '{self.factory}' is not callable")
        return target

    def label(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs().items())
        return f"{self.torchvision or self.factory}({args})"

    def build(self) -> nn.Module:
        """A freshly initialised network; ValueError (one line) when the constructor fails."""
        try:
            if self.torchvision is not None:
                from torchvision.models import get_model

                net = get_model(self.torchvision, weights=None, **self.kwargs())
            else:
                net = self.factory_function()(**self.kwargs())
        except ValueError:
            raise
        except Exception as error:  # noqa: BLE001 - a constructor rejecting its arguments is a user error
            raise ValueError(f"{self.label()} failed: {type(error).__name__}: {first_line(error)}") from None
        if not isinstance(net, nn.Module):
            raise ValueError(f"{self.label()} returned {type(net).__name__}, not a torch nn.Module")
        return net


def network_recipe(spec: GivenArchitecture | NetworkSpec) -> str:
    """JSON from which `rebuild_network` builds the same architecture in another process.

    Works for both kinds of `NetworkFacts.network_spec`: a zoo's NetworkSpec (its local ImageNet `weights`
    file dropped: the trained weights are loaded after building) and a GivenArchitecture.
    """
    from models.networks import NetworkSpec

    if isinstance(spec, NetworkSpec):
        return spec.model_copy(update={"weights": None}).model_dump_json()
    return json.dumps({"given": spec.model_dump(mode="json")})


def rebuild_network(recipe: str) -> nn.Module:
    """A freshly initialised network from `network_recipe` JSON (or a bare NetworkSpec JSON, as older files hold)."""
    from models.networks import NetworkSpec, build_network

    data = json.loads(recipe)
    if isinstance(data, dict) and set(data) == {"given"}:
        return GivenArchitecture.model_validate(data["given"]).build()
    return build_network(NetworkSpec.model_validate(data))


# ------------------------------------------------------------------------------------------- preprocessing


class Resize(_Strict):
    op: Literal["resize"]
    size: int | tuple[int, int] = Field(description="shorter side (int) or [height, width]")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"


class CenterCrop(_Strict):
    op: Literal["center_crop"]
    size: int | tuple[int, int]


class Grayscale(_Strict):
    op: Literal["grayscale"]


class ToTensor(_Strict):
    op: Literal["to_tensor"]


class Normalize(_Strict):
    op: Literal["normalize"]
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> Normalize:
        if len(self.mean) != len(self.std):
            raise ValueError(f"normalize: {len(self.mean)} means but {len(self.std)} stds")
        if any(s <= 0 for s in self.std):
            raise ValueError("normalize: every std must be positive")
        return self


Step = Annotated[Resize | CenterCrop | Grayscale | ToTensor | Normalize, Field(discriminator="op")]


def _check_steps(steps: list[Any]) -> list[Any]:
    ops = [s.op for s in steps]
    if ops.count("to_tensor") > 1:
        raise ValueError("preprocess: to_tensor appears more than once")
    if "to_tensor" in ops and "normalize" in ops and ops.index("normalize") < ops.index("to_tensor"):
        raise ValueError("preprocess: normalize must come after to_tensor")
    return steps


def pipeline(steps: list[Any]) -> Callable[[Any], torch.Tensor]:
    """PIL image (RGB) → float tensor C×H×W; to_tensor is implied before the first normalize, else at the end."""
    from torchvision import transforms as T

    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
             "nearest": T.InterpolationMode.NEAREST}
    ops = [s.op for s in steps]
    if "to_tensor" not in ops:
        at = ops.index("normalize") if "normalize" in ops else len(steps)
        steps = [*steps[:at], ToTensor(op="to_tensor"), *steps[at:]]
    chain: list[Any] = []
    for step in steps:
        if isinstance(step, Resize):
            size = step.size if isinstance(step.size, int) else list(step.size)
            chain.append(T.Resize(size, interpolation=modes[step.interpolation], antialias=True))
        elif isinstance(step, CenterCrop):
            chain.append(T.CenterCrop(step.size if isinstance(step.size, int) else list(step.size)))
        elif isinstance(step, Grayscale):
            chain.append(T.Grayscale(num_output_channels=1))
        elif isinstance(step, ToTensor):
            chain.append(T.ToTensor())
        else:
            chain.append(T.Normalize(step.mean, step.std))
    return T.Compose(chain)


# -------------------------------------------------------------------------------------------------- config


def describe_labels(stem: str, labels: list[int] | None) -> str:
    """'stem[0-4]', 'stem[1,3]' or 'stem[all]', as zoo partitions are written."""
    if labels is None:
        return f"{stem}[all]"
    ls = sorted(labels)
    if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 2:
        return f"{stem}[{ls[0]}-{ls[-1]}]"
    return f"{stem}[{','.join(map(str, ls))}]"


class GivenExpertSpec(_Strict):
    """One fine-tuned expert: its checkpoint, the data its coding samples come from, and its test data."""

    name: str = Field(min_length=1)
    checkpoint: Path
    train: Path = Field(description="ImageFolder directory or .npz: the pool the P coding samples are drawn from")
    test: Path = Field(description="ImageFolder directory or .npz: the expert's test set (NDA, served queries)")
    labels: list[int] | None = Field(None, description="keep only samples with these labels (train and test)")
    task: str | None = Field(None, description="what the expert does, for tables (default: test data + labels)")
    preprocess: list[Step] | None = Field(None, description="this expert's own pipeline (default: [models]')")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value or len(set(value)) != len(value):
                raise ValueError("labels must be a non-empty list without repeats")
            if min(value) < 0:
                raise ValueError(f"labels must be ≥ 0, got {min(value)}")
        return value

    @field_validator("preprocess")
    @classmethod
    def _steps(cls, value: list[Any] | None) -> list[Any] | None:
        return None if value is None else _check_steps(value)

    def partition(self) -> str:
        """Human label of the expert's task (the zoo's partition)."""
        return self.task or describe_labels(self.test.stem if self.test.suffix == ".npz" else self.test.name,
                                            self.labels)


class GivenZooConfig(_Strict):
    """`[models]` for given networks: architecture, base and expert checkpoints, data, preprocessing.

    Relative paths are read from `root`, which defaults to the folder of the scenario file.
    """

    name: str = "custom"
    seed: int = Field(0, ge=0)
    root: Path = Field(Path("."), description="folder relative paths are read from")
    architecture: GivenArchitecture
    base: Path = Field(description="checkpoint of the base model the experts were fine-tuned from")
    preprocess: list[Step] = Field(default_factory=lambda: [ToTensor(op="to_tensor")])
    classes: list[str] | None = Field(None, description="class names in the network's output order, for "
                                                        "ImageFolder class folders that are not label numbers")
    experts: list[GivenExpertSpec] = Field(min_length=2)

    @field_validator("preprocess")
    @classmethod
    def _steps(cls, value: list[Any]) -> list[Any]:
        return _check_steps(value)

    @model_validator(mode="after")
    def _unique(self) -> GivenZooConfig:
        names = [e.name for e in self.experts]
        if len(set(names)) != len(names):
            raise ValueError(f"expert names must be unique, got {names}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must not repeat a name")
        return self

    @property
    def network(self) -> GivenArchitecture:
        """What the runner records as `NetworkFacts.network_spec` (see `network_recipe`)."""
        return self.architecture

    def path(self, value: Path) -> Path:
        value = Path(value).expanduser()
        return value if value.is_absolute() else Path(self.root).expanduser() / value

    def steps(self, expert: GivenExpertSpec) -> list[Any]:
        return expert.preprocess if expert.preprocess is not None else self.preprocess

    def base_datasets(self) -> list[str]:
        """For `coinsim models train`'s table."""
        return ["given"]


def first_line(error: BaseException) -> str:
    """The first line of an error's text (its type's name when it has none): one line for the CLI."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
