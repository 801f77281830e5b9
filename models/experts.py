"""What a built zoo is: the base model and its experts with their data partitions, accuracy and provenance
(trained here and cached, or a user's given checkpoint). Plain data, below both the trainer (models.zoo) and the
loader of given networks (models.given)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from models.cache import Status

if TYPE_CHECKING:
    from models.config import ExpertSpec, ZooConfig
    from models.given_config import GivenExpertSpec, GivenZooConfig

Provenance = Status | Literal["given"]  # cache status of a trained network, or 'given' (a user's checkpoint)


@dataclass
class Expert:
    """A fine-tuned expert with its own train and test partitions (already adapted to the network)."""

    spec: ExpertSpec | GivenExpertSpec
    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    accuracy: float
    cache_path: Path
    status: Provenance
    train_seconds: float

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def partition(self) -> str:
        return self.spec.partition()


@dataclass
class Zoo:
    config: ZooConfig | GivenZooConfig
    device: torch.device
    base: nn.Module
    base_accuracy: float
    base_cache_path: Path
    base_status: Provenance
    base_train_seconds: float
    experts: list[Expert] = field(default_factory=list)

    @property
    def models(self) -> list[nn.Module]:
        return [e.model for e in self.experts]
