"""Given experts: a user's own base and fine-tuned checkpoints, architecture and data, instead of a trained zoo.

A `[models]` table that has an `architecture` key is read here (its schema, `GivenZooConfig`, is in
models.given_config); one without is a zoo to train (models.config). Everything a user can get wrong is checked
before any work, and every problem is one line: the architecture must build, every checkpoint must fit it exactly
(names and shapes), every data source must hold images whose labels the network can output, and all of them must
have one input shape, which one forward pass of the network must accept.

Checkpoints are safetensors files, or torch files read with `torch.load(weights_only=True)`: no pickle in a
checkpoint ever runs code. Data is an ImageFolder-layout directory (root/<class>/<image>) or an .npz with `x`
and `y` arrays (read without pickle). Images go through a named preprocessing pipeline; float arrays in an
.npz are model inputs already and are used as they are.

Samples of an ImageFolder directory are ordered by file name (ties by class folder), not class by class as
torchvision orders them: name files 000000.png, 000001.png, ... to fix the order across classes, which is what
`coinsim models export` does so that a re-run draws the same coding samples and the same test rows.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from models.config import ConfigError, format_validation
from models.data import DataError
from models.experts import Expert, Zoo
from models.given_config import GivenExpertSpec, GivenZooConfig, first_line, pipeline
from models.progress import say

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def given_config_from_table(table: dict[str, Any], source: str) -> GivenZooConfig:
    """Validate a given-networks [models] table and check its files; ConfigError (one line) lists every problem."""
    table = dict(table)
    here = Path(source).expanduser().parent if source.endswith(".toml") else Path(".")
    root = Path(table.get("root", ".")).expanduser()
    table["root"] = root if root.is_absolute() else here / root
    try:
        config = GivenZooConfig.model_validate(table)
    except ValidationError as error:
        raise ConfigError(format_validation(error, source)) from None
    problems = given_problems(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


# ------------------------------------------------------------------------------------------------- checkpoints



def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file read weights-only (a top-level 'state_dict' is opened)."""
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unreadable, or torch refused to unpickle it without running code
        raise DataError(f"checkpoint {path} cannot be read as weights only ({first_line(error)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"checkpoint {path} does not hold a state dict (names → tensors)")
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        names = ", ".join(list(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(f"checkpoint {path} holds {sum(bad.values())} non-finite weight(s) (NaN or inf) in {names}")
    return state


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes; for safetensors only the header is read."""
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
        except Exception as error:  # noqa: BLE001
            raise DataError(f"checkpoint {path} cannot be read ({first_line(error)})") from None
    return {k: tuple(v.shape) for k, v in read_checkpoint(path).items()}


def fit_problem(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], show: int = 3) -> str | None:
    """Why a checkpoint with `found` names/shapes cannot be loaded strictly into a network expecting `expected`."""

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (f" and {len(keys) - show} more" if len(keys) > show else "")

    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} is {'×'.join(map(str, found[k])) or 'scalar'} (network: "
              f"{'×'.join(map(str, expected[k])) or 'scalar'})"
              for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"missing keys {first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {first(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch {first(shapes)}")
    return ", ".join(parts) if parts else None


def load_strict(net: nn.Module, path: Path, label: str) -> nn.Module:
    state = read_checkpoint(path)
    problem = fit_problem({k: tuple(v.shape) for k, v in net.state_dict().items()},
                          {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise DataError(f"{label}: {path} does not fit the architecture: {problem}")
    net.load_state_dict(state, strict=True)
    return net


# ------------------------------------------------------------------------------------------------------ data


def _class_label(name: str, classes: list[str] | None, where: Path) -> int:
    if classes is not None:
        if name not in classes:
            raise DataError(f"{where}: class folder '{name}' is not one of models.classes")
        return classes.index(name)
    if not name.isdecimal():
        raise DataError(f"{where}: class folder '{name}' is not a label number; list the network's classes "
                        "(in output order) as models.classes")
    return int(name)


def scan_image_folder(root: Path, classes: list[str] | None) -> tuple[list[Path], np.ndarray]:
    """Image files of root/<class>/..., ordered by file name (ties by class), and their labels."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = _class_label(folder.name, classes, root)
        found += [(f.name, folder.name, f, label) for f in folder.rglob("*")
                  if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not found:
        raise DataError(f"data folder {root} holds no images in class folders (root/<class>/<image>.png)")
    found.sort(key=lambda item: (item[0], item[1], str(item[2])))
    return [f for *_, f, _ in found], np.array([label for *_, label in found], dtype=np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ("x", "y") if k not in arrays.files]
            if missing:
                raise DataError(f"{path} lacks the array(s) {', '.join(missing)} (needs x and y)")
            x, y = arrays["x"], arrays["y"]
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - not an npz, or object arrays that would need pickle
        raise DataError(f"{path} cannot be read as an .npz of plain arrays ({first_line(error)})") from None
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must be a 1-D array of integer labels, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} rows but y has {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{path} holds no samples")
    if np.issubdtype(x.dtype, np.floating):
        if x.ndim != 4:
            raise DataError(f"{path}: float x must be model inputs N×C×H×W, got shape {x.shape}")
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise DataError(f"{path}: x holds {bad} non-finite value(s) (NaN or inf)")
    elif x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"{path}: x must be uint8 images (N×H×W or N×H×W×C) or float inputs (N×C×H×W), "
                        f"got {x.dtype} {x.shape}")
    return x, y.astype(np.int64)


class DataSource:
    """One train or test source: listed (files or arrays) up front, decoded on demand."""

    def __init__(self, path: Path, classes: list[str] | None, steps: list[Any], labels: list[int] | None):
        self.path = path
        self.transform = pipeline(steps)
        if path.suffix == ".npz":
            self.files: list[Path] | None = None
            self.x, all_labels = _read_npz(path)
        else:
            if not path.exists() and path.with_suffix(".npz").is_file():
                raise DataError(f"data folder {path} does not exist (did you mean {path.with_suffix('.npz')}?)")
            try:
                self.files, all_labels = scan_image_folder(path, classes)
            except OSError as error:
                raise DataError(f"data folder {path} cannot be read ({error.strerror or error})") from None
            self.x = None
        keep = np.arange(len(all_labels)) if labels is None else np.flatnonzero(np.isin(all_labels, labels))
        if len(keep) == 0:
            raise DataError(f"{path} holds no samples with labels {labels}")
        self.keep, self.labels = keep, all_labels[keep]

    def __len__(self) -> int:
        return len(self.keep)

    def _image(self, index: int):
        from PIL import Image

        if self.files is not None:
            path = self.files[index]
            try:
                with Image.open(path) as image:
                    return image.convert("RGB")
            except Exception as error:  # noqa: BLE001 - a broken image file
                raise DataError(f"{path} cannot be read as an image ({first_line(error)})") from None
        array = self.x[index]
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        try:
            return Image.fromarray(array).convert("RGB")
        except Exception as error:  # noqa: BLE001 - e.g. 2 channels: no image mode
            raise DataError(f"{self.path}: x row {index} of shape {array.shape} is not an image "
                            f"({first_line(error)})") from None

    def sample(self, row: int) -> torch.Tensor:
        """The model input of one (kept) sample."""
        index = int(self.keep[row])
        if self.x is not None and np.issubdtype(self.x.dtype, np.floating):
            return torch.from_numpy(np.ascontiguousarray(self.x[index], dtype=np.float32))
        image = self._image(index)
        try:
            return self.transform(image)
        except Exception as error:  # noqa: BLE001 - e.g. normalize with 3 means on a 1-channel image
            where = self.files[index] if self.files is not None else f"{self.path} row {index}"
            raise DataError(f"preprocess fails on {where} (a {image.size[0]}×{image.size[1]} image): "
                            f"{first_line(error)}") from None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs N×C×H×W float32, labels int64), every sample the same shape."""
        rows = [self.sample(i) for i in range(len(self))]
        shapes = {tuple(r.shape) for r in rows}
        if len(shapes) > 1:
            listed = ", ".join("×".join(map(str, s)) for s in sorted(shapes)[:3])
            raise DataError(f"{self.path}: images differ in shape after preprocessing ({listed}); "
                            "add resize and center_crop steps")
        return torch.stack(rows).float().contiguous(), torch.from_numpy(self.labels.copy())


def _sources(config: GivenZooConfig, expert: GivenExpertSpec) -> tuple[DataSource, DataSource]:
    steps = config.steps(expert)
    return tuple(DataSource(config.path(p), config.classes, steps, expert.labels)  # type: ignore[return-value]
                 for p in (expert.train, expert.test))


# ------------------------------------------------------------------------------------------ the whole check


def every_sample_checked(source: DataSource) -> torch.Tensor:
    """Decode and preprocess every sample of `source` once (a broken image file, a non-finite value or a sample
    of another shape is a DataError naming it); the first sample's input."""
    first = source.sample(0)
    for row in range(1, len(source)):
        shape = tuple(source.sample(row).shape)
        if shape != tuple(first.shape):
            index = int(source.keep[row])
            where = source.files[index] if source.files is not None else f"{source.path} row {index}"
            raise DataError(f"{where} is {'×'.join(map(str, shape))} after preprocessing, the first sample "
                            f"{'×'.join(map(str, first.shape))}; add resize and center_crop steps")
    return first


def given_problems(config: GivenZooConfig) -> list[str]:
    """Everything that would stop the given networks from loading, one short line each (empty: all good).

    Builds the architecture once, reads every checkpoint (shapes, then finiteness), lists the data, decodes and
    preprocesses every sample of every source (file, shape) and runs one forward pass: everything loading would
    meet, without training.
    """
    problems: list[str] = []
    net = None
    try:
        net = config.architecture.build().eval()
    except ValueError as error:
        problems.append(f"architecture: {error}")
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()} if net is not None else None
    checkpoints = [("base", config.base)] + [(f"experts.{i}.checkpoint", e.checkpoint)
                                             for i, e in enumerate(config.experts)]
    for where, raw in checkpoints:
        path = config.path(raw)
        if not path.is_file():
            problems.append(f"{where}: checkpoint {path} does not exist")
            continue
        try:
            found = _checkpoint_shapes(path)
        except DataError as error:
            problems.append(f"{where}: {error}")
            continue
        problem = fit_problem(expected, found) if expected is not None else None
        if problem:
            problems.append(f"{where}: {path} does not fit {config.architecture.label()}: {problem}")
            continue
        try:
            read_checkpoint(path)  # every weight read once: a non-finite one is refused here, not after the work
        except DataError as error:
            problems.append(f"{where}: {error}")

    first: dict[str, tuple[torch.Tensor, DataSource]] = {}
    for i, expert in enumerate(config.experts):
        for kind, raw in (("train", expert.train), ("test", expert.test)):
            try:
                source = DataSource(config.path(raw), config.classes, config.steps(expert), expert.labels)
                first[f"experts.{i}.{kind}"] = (every_sample_checked(source), source)
            except DataError as error:
                problems.append(f"experts.{i}.{kind}: {error}")
    shapes = {where: tuple(x.shape) for where, (x, _) in first.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{w} {'×'.join(map(str, s))}" for w, s in list(shapes.items())[:4])
        problems.append(f"data: every source must give inputs of one shape after preprocessing ({listed})")
    elif net is not None and first:
        where, (x, source) = next(iter(first.items()))
        try:
            with torch.no_grad():
                out = net(x[None])
        except Exception as error:  # noqa: BLE001 - the network rejecting the data's shape
            problems.append(f"architecture: {config.architecture.label()} fails on one input of shape "
                            f"{'×'.join(map(str, x.shape))} from {source.path}: {first_line(error)}")
        else:
            if not isinstance(out, torch.Tensor) or out.ndim != 2:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                problems.append(f"architecture: {config.architecture.label()} must map a batch to N×K logits, "
                                f"gave {got}")
            else:
                k = int(out.shape[1])
                for where, (_, source) in first.items():
                    bad = sorted({int(v) for v in source.labels if not 0 <= v < k})
                    if bad:
                        problems.append(f"{where}: {source.path} has labels {bad[:5]} but the network outputs "
                                        f"{k} classes (0..{k - 1})")
    return problems


# ---------------------------------------------------------------------------------------------- the zoo


def load_given_zoo(config: GivenZooConfig, device: str | torch.device = "auto", progress: bool = True) -> Zoo:
    """The given base and experts as a Zoo: the same fields `prepare_networks` reads from a trained zoo."""
    from models.networks import pick_device
    from models.training import accuracy

    device = device if isinstance(device, torch.device) else pick_device(device)
    started = time.perf_counter()
    say(f"loading given base and {len(config.experts)} experts ({config.architecture.label()})", progress)
    base_path = config.path(config.base)
    base = load_strict(config.architecture.build(), base_path, "base").to(device).eval()
    loaded = []
    for i, spec in enumerate(config.experts):
        path = config.path(spec.checkpoint)
        model = load_strict(copy.deepcopy(base).cpu(), path, f"experts.{i}.checkpoint").to(device).eval()
        train_source, test_source = _sources(config, spec)
        train_x, train_y = train_source.tensors()
        test_x, test_y = test_source.tensors()
        loaded.append((spec, model, train_x, train_y, test_x, test_y, path))
    base_acc = accuracy(base, torch.cat([item[4] for item in loaded]), torch.cat([item[5] for item in loaded]),
                        device)
    zoo = Zoo(config, device, base, base_acc, base_path, "given", 0.0)  # type: ignore[arg-type]
    for spec, model, train_x, train_y, test_x, test_y, path in loaded:
        zoo.experts.append(Expert(spec, model, train_x, train_y, test_x, test_y,  # type: ignore[arg-type]
                                  accuracy(model, test_x, test_y, device), path, "given", 0.0))
    say(f"given networks and data loaded in {time.perf_counter() - started:.1f} s", progress)
    return zoo
