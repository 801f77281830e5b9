"""`coinsim models export`: write a trained zoo as given networks — checkpoints, data, and the scenario reading them.

The written folder is exactly what a user with their own experts provides (see models.given):

    DIR/<name>-given.toml          the scenario, its [models] table in the given form
    DIR/checkpoints/base.safetensors, DIR/checkpoints/<expert>.safetensors
    DIR/data/<expert>/train/<label>/000000.png ...   (ImageFolder layout), or DIR/data/<expert>/train.npz
    DIR/data/<expert>/test/...

Images are written as 8-bit PNGs when that loses nothing (the zoo's inputs are uint8 images mapped to [-1, 1],
which `to_tensor` + `normalize(0.5, 0.5)` maps back bit for bit); otherwise (e.g. the upsampled `digits`) as
float32 model inputs in an .npz. File names number the samples in the zoo's order, so the exported scenario
draws the same coding samples and serves the same test rows. Before the folder appears, everything is read
back through the given-networks loader and compared with the zoo bit for bit.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

import atomic
from models.config import ConfigError
from models.experts import Zoo
from models.given import given_config_from_table, load_given_zoo
from models.networks import NetworkSpec

DataFormat = Literal["auto", "imagefolder", "npz"]
EXPORT_FACTORY = "models.networks:zoo_network"


def check_out_folder(out: Path) -> None:
    """--out must be new or empty: an export never mixes with, or overwrites, other files."""
    from atomic import why_blocked

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not an empty folder")
    blocked = why_blocked(out)
    if blocked is not None:  # known before the zoo is trained, not when its first file is written
        raise ConfigError(f"--out {out}: {blocked}")


def run_export_checks(config: Any, out: Path) -> None:
    """Before training anything: the scenario must have a zoo to train, and --out must be free."""
    from models.config import ZooConfig

    if config is None:
        raise ConfigError("nothing to export: the scenario has no [models] table")
    if not isinstance(config, ZooConfig):
        raise ConfigError("nothing to export: the scenario's [models] already names given checkpoints")
    check_out_folder(out)


def architecture_table(spec: NetworkSpec) -> dict[str, Any]:
    """The given-form architecture of a zoo network: torchvision's own when it is that, else the zoo factory."""
    if spec.arch in ("resnet18", "resnet50") and spec.in_channels == 3:
        return {"torchvision": spec.arch, "num_classes": spec.num_classes}
    fields = spec.model_dump(mode="json", exclude={"weights"})
    return {"factory": EXPORT_FACTORY, **fields}


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] inputs → 0..255 pixel values, N×H×W×C."""
    v = torch.round((x.double() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return v.permute(0, 2, 3, 1).contiguous().numpy()


def png_exact(x: torch.Tensor) -> bool:
    """Do 8-bit PNGs, read with to_tensor + normalize(0.5, 0.5), give back exactly these 1- or 3-channel inputs?"""
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.dtype != torch.float32:
        return False
    pixels = torch.from_numpy(_to_uint8(x)).permute(0, 3, 1, 2)
    back = pixels.to(torch.float32).div(255).sub(0.5).div(0.5)
    return bool(torch.equal(back, x))


def _write_pngs(folder: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    from PIL import Image

    pixels = _to_uint8(x)
    width = max(6, len(str(len(pixels) - 1)))
    for label in torch.unique(y).tolist():
        (folder / str(label)).mkdir(parents=True)
    for index, (image, label) in enumerate(zip(pixels, y.tolist(), strict=True)):
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)  # 8-bit L or RGB
        picture.save(folder / str(label) / f"{index:0{width}d}.png", optimize=False)


def _safe_names(names: list[str]) -> list[str]:
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", n).strip("._") or "expert" for n in names]
    if len(set(safe)) != len(safe):
        safe = [f"{i}-{s}" for i, s in enumerate(safe)]
    return safe


def export_zoo(zoo: Zoo, scenario: dict[str, Any], out: Path, data_format: DataFormat = "auto") -> Path:
    """Write `zoo` (built from `scenario`'s [models]) in the given form under `out`; return the scenario file.

    Written into a temporary sibling folder, checked, then renamed: on any error nothing appears under `out`.
    """
    from safetensors.torch import save_file

    out = Path(out).expanduser()
    check_out_folder(out)
    spec = zoo.config.network
    formats = []
    for expert in zoo.experts:
        exact = png_exact(expert.train_x) and png_exact(expert.test_x)
        if data_format == "imagefolder" and not exact:
            raise ConfigError(f"expert '{expert.name}': its inputs are not 8-bit images ({expert.partition}); PNGs "
                              "would change them — use --format npz or auto")
        formats.append("imagefolder" if data_format == "imagefolder" or (data_format == "auto" and exact) else "npz")
    channels = int(zoo.experts[0].test_x.shape[1])
    name = f"{scenario.get('name', zoo.config.name)}-given"
    table = {k: v for k, v in scenario.items() if k != "models"}
    table.update(name=name, seed=int(scenario.get("seed", 0)),
                 description=f"{scenario.get('name', zoo.config.name)} exported by `coinsim models export` as given "
                             f"checkpoints and data. {scenario.get('description', '')}".strip())
    models: dict[str, Any] = {
        "architecture": architecture_table(spec),
        "base": "checkpoints/base.safetensors",
        "preprocess": ([{"op": "grayscale"}] if channels == 1 else [])
        + [{"op": "to_tensor"}, {"op": "normalize", "mean": [0.5] * channels, "std": [0.5] * channels}],
        "experts": [],
    }
    scenario_file_name = f"{name}.toml"

    def fill(tmp: Path) -> None:
        (tmp / "checkpoints").mkdir()

        def save(model: torch.nn.Module, path: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))

        save(zoo.base, tmp / "checkpoints" / "base.safetensors")
        for expert, safe, kind in zip(zoo.experts, _safe_names([e.name for e in zoo.experts]), formats, strict=True):
            save(expert.model, tmp / "checkpoints" / f"{safe}.safetensors")
            entry = {"name": expert.name, "checkpoint": f"checkpoints/{safe}.safetensors", "train": "", "test": "",
                     "task": expert.partition}
            for split, x, y in (("train", expert.train_x, expert.train_y), ("test", expert.test_x, expert.test_y)):
                x, y = x.detach().cpu(), y.detach().cpu()
                if kind == "imagefolder":
                    _write_pngs(tmp / "data" / safe / split, x, y)
                    entry[split] = f"data/{safe}/{split}"
                else:
                    (tmp / "data" / safe).mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(tmp / "data" / safe / f"{split}.npz", x=x.numpy().astype(np.float32),
                                        y=y.numpy().astype(np.int64))
                    entry[split] = f"data/{safe}/{split}.npz"
            models["experts"].append(entry)
        table["models"] = models
        scenario_file = tmp / scenario_file_name
        scenario_file.write_text(scenario_toml(table), encoding="utf-8")
        _verify(zoo, table, scenario_file)

    atomic.publish_folder(out, fill)  # out is new or empty (checked before any work)
    return out / scenario_file_name


def _inline(value: Any) -> str:
    """A TOML value on one line (tables inline)."""
    import tomli_w

    if isinstance(value, dict):
        keys = [k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k) for k in value]
        return "{ " + ", ".join(f"{k} = {_inline(v)}" for k, v in zip(keys, value.values(), strict=True)) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def scenario_toml(table: dict[str, Any]) -> str:
    """The scenario as TOML, its [models] table first and written the way a person would, one expert a line."""
    import tomli_w

    models = table["models"]
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict) and k != "models"}
    lines = [f"# {table.get('name', 'scenario')}: given networks, written by `coinsim models export`.",
             "# Relative paths are read from this file's folder.", tomli_w.dumps(scalars).rstrip(), "", "[models]"]
    for key, value in models.items():
        if key in ("experts", "preprocess"):
            lines += [f"{key} = ["] + [f"  {_inline(item)}," for item in value] + ["]"]
        else:
            lines.append(f"{key} = {_inline(value)}")
    return "\n".join(lines) + "\n\n" + tomli_w.dumps(tables)


def _verify(zoo: Zoo, table: dict[str, Any], scenario_file: Path) -> None:
    """Read the export back as given networks; every tensor must equal the zoo's bit for bit."""
    if tomllib.loads(scenario_file.read_text(encoding="utf-8")) != table:
        raise RuntimeError("export check: the scenario file does not read back as written")
    config = given_config_from_table({**table["models"], "name": zoo.config.name}, str(scenario_file))
    again = load_given_zoo(config, "cpu", progress=False)
    pairs = [("base", zoo.base, again.base)] + [(e.name, e.model, a.model)
                                                for e, a in zip(zoo.experts, again.experts, strict=True)]
    for label, model, loaded in pairs:
        mine, theirs = model.state_dict(), loaded.state_dict()
        if mine.keys() != theirs.keys() or any(not torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine):
            raise RuntimeError(f"export check: the weights of {label} read back differ")
    for expert, loaded in zip(zoo.experts, again.experts, strict=True):
        for field in ("train_x", "train_y", "test_x", "test_y"):
            if not torch.equal(getattr(expert, field).cpu(), getattr(loaded, field)):
                raise RuntimeError(f"export check: {expert.name}'s {field} read back differs")
