"""Networks the experts are built on. All map N×C×H×W images to K logits.

`cnn` is the default: small enough to train base + experts in well under a minute on a laptop CPU.
`resnet_cifar` is a small pre-activation-free ResNet with BatchNorm (what the paper's BN remarks are about).
`resnet18` / `resnet50` are torchvision's, for users with a GPU; an ImageNet checkpoint can be given as a
local file (no hub downloads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

Arch = Literal["cnn", "resnet_cifar", "resnet18", "resnet50"]
Activation = Literal["relu", "leaky_relu", "gelu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}


class NetworkSpec(BaseModel):
    """Architecture and input geometry; every data set is adapted to (in_channels, image_size)."""

    model_config = ConfigDict(extra="forbid")

    arch: Arch = "cnn"
    in_channels: int = Field(1, ge=1, le=3)
    image_size: int = Field(28, ge=8, le=512)
    num_classes: int = Field(10, ge=2)
    width: int = Field(16, ge=2, le=512, description="channels of the first conv layer")
    batchnorm: bool = False
    activation: Activation = Field(
        "relu", description="nonlinearity of `cnn` (leaky_relu: slope 0.01); other archs use ReLU only")
    weights: Path | None = Field(None, description="local checkpoint for resnet18/50 (safetensors or .pth)")

    @model_validator(mode="after")
    def _activation_of_cnn_only(self) -> NetworkSpec:
        if self.activation != "relu" and self.arch != "cnn":
            raise ValueError(f"activation = '{self.activation}' is supported by arch = 'cnn' only (got '{self.arch}')")
        return self


class SmallCNN(nn.Module):
    """conv-act-pool ×2 then two linear layers (act: ReLU by default, or leaky ReLU / GELU)."""

    def __init__(self, in_channels: int, num_classes: int, width: int, image_size: int, batchnorm: bool,
                 activation: Activation = "relu"):
        super().__init__()
        act = ACTIVATIONS[activation]

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [act(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, width), *block(width, 2 * width))
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, 4 * width), act(), nn.Linear(4 * width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Three stages of two basic blocks (ResNet-14 shape), widths w, 2w, 4w."""

    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            stages += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _torchvision_resnet(spec: NetworkSpec) -> nn.Module:
    from torchvision import models as tv

    net = {"resnet18": tv.resnet18, "resnet50": tv.resnet50}[spec.arch](weights=None)
    if spec.weights is not None:
        net.load_state_dict(load_state_file(spec.weights))
    if spec.in_channels != 3:
        net.conv1 = nn.Conv2d(spec.in_channels, 64, 7, 2, 3, bias=False)
    net.fc = nn.Linear(net.fc.in_features, spec.num_classes)
    return net


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a local checkpoint: safetensors, or a .pth read with torch's weights-only loader."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def build_network(spec: NetworkSpec) -> nn.Module:
    """A freshly initialised network (the caller seeds torch first)."""
    if spec.arch == "cnn":
        return SmallCNN(spec.in_channels, spec.num_classes, spec.width, spec.image_size, spec.batchnorm,
                        spec.activation)
    if spec.arch == "resnet_cifar":
        return CifarResNet(spec.in_channels, spec.num_classes, spec.width)
    return _torchvision_resnet(spec)


def zoo_network(**fields) -> nn.Module:
    """`build_network` as a keyword-argument factory, so a given-networks scenario can name a zoo architecture
    (`factory = "models.networks:zoo_network"` plus NetworkSpec fields), as `coinsim models export` writes."""
    return build_network(NetworkSpec(**fields))


class DeviceError(ValueError):
    """A device that this machine does not have (one line for the user)."""


def pick_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when present, else CPU; an explicit device must exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (chosen.index or 0) >= count:
            raise DeviceError(f"device '{device}' requested but this machine has {count} CUDA device(s)")
    elif chosen.type != "cpu":
        raise DeviceError(f"unsupported device '{device}' (use auto, cpu, cuda or cuda:N)")
    return chosen
