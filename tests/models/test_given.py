"""Given networks: a user's torchvision ResNet-18 base and experts, their PNGs / .npz, run end to end.

The reference side reads the same files with PIL, numpy, safetensors and torch.load directly and hands the
runner a hand-built Zoo; the given side goes through models.given. Both must give the same answers.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from models.config import ConfigError
from models.given import fit_problem, load_given_zoo
from models.given_config import GivenArchitecture, GivenZooConfig, network_recipe, pipeline, rebuild_network
from models.networks import NetworkSpec, build_network
from models.tables import zoo_config_from_dict
from scenarios.cli import cli
from scenarios.schema import scenario_from_dict

K = 4
SIDE = 16
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
EXPERTS = {"ab": [0, 1], "cd": [2, 3]}


def _resnet(num_classes: int = K) -> torch.nn.Module:
    from torchvision.models import resnet18

    return resnet18(num_classes=num_classes)


def _images(labels: list[int], per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved classes (so class-by-class order differs from file-name order), one colour per class + noise."""
    y = np.array([labels[i % len(labels)] for i in range(per_class * len(labels))])
    colour = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.int64)
    x = colour[y][:, None, None, :] + rng.integers(-40, 41, size=(len(y), SIDE, SIDE, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×H×W float32, (v/255 - mean)/std, computed with numpy."""
    x = (pixels.astype(np.float32) / np.float32(255) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def given_dir(tmp_path_factory) -> Path:
    """checkpoints/ (base + 2 experts: one .pth, one safetensors), png/<expert>/<split>/<label>/NNN.png, npz/.

    The base is trained briefly on every expert's train images, each expert fine-tuned from it on its own (BN
    statistics frozen), so the experts are better than chance on their tasks and NDA is defined.
    """
    from models.config import TrainSpec
    from models.training import train

    root = tmp_path_factory.mktemp("given")
    rng = np.random.default_rng(0)
    data = {name: {split: _images(labels, 6, rng) for split in ("train", "test")} for name, labels in EXPERTS.items()}
    torch.manual_seed(0)
    base = _resnet()
    all_x = np.concatenate([d["train"][0] for d in data.values()])
    all_y = np.concatenate([d["train"][1] for d in data.values()])
    train(base, _normalised(all_x), torch.from_numpy(all_y), TrainSpec(lr=1e-3, batch_size=8, epochs=3), 0,
          torch.device("cpu"), progress=False)
    (root / "checkpoints").mkdir()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(root / "checkpoints" / "base.safetensors"))
    for name in EXPERTS:
        expert = _resnet()
        expert.load_state_dict(base.state_dict())
        x, y = data[name]["train"]
        train(expert, _normalised(x), torch.from_numpy(y), TrainSpec(lr=1e-3, batch_size=6, epochs=10), 1,
              torch.device("cpu"), progress=False, freeze_bn=True)
        state = {k: v.contiguous() for k, v in expert.state_dict().items()}
        if name == "ab":
            torch.save(state, root / "checkpoints" / f"{name}.pth")
        else:
            save_file(state, str(root / "checkpoints" / f"{name}.safetensors"))
        for split, (x, y) in data[name].items():
            for i, (image, label) in enumerate(zip(x, y, strict=True)):
                folder = root / "png" / name / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / f"{i:03d}.png")
            (root / "npz" / name).mkdir(parents=True, exist_ok=True)
            np.savez(root / "npz" / name / f"{split}.npz", x=x, y=y)
    return root


def _checkpoint(name: str) -> str:
    return f"checkpoints/{name}.pth" if name == "ab" else f"checkpoints/{name}.safetensors"


def _models_table(data: str = "png", **changes) -> dict:
    def source(name: str, split: str) -> str:
        return f"png/{name}/{split}" if data == "png" else f"npz/{name}/{split}.npz"

    table = {
        "architecture": {"torchvision": "resnet18", "num_classes": K},
        "base": "checkpoints/base.safetensors",
        "preprocess": [{"op": "to_tensor"}, {"op": "normalize", "mean": MEAN, "std": STD}],
        "experts": [{"name": n, "checkpoint": _checkpoint(n), "train": source(n, "train"), "test": source(n, "test"),
                     "task": f"colours{labels}"} for n, labels in EXPERTS.items()],
    }
    table.update(changes)
    return table


def _write_scenario(folder: Path, name: str, models: dict) -> Path:
    scenario = {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "models": models,
        "coding": {"method": "coin", "compare": ["vanilla"], "samples": 8},
        "profile": {"warmup": 1, "samples": 10},
        "sim": {"r": 1, "n_queries": 400,
                "policies": ["uncoded", {"kind": "coded", "dispatch": "hedged", "delay_ms": "p95"}],
                "traffic": {"kind": "poisson", "load": 0.3}, "stragglers": {"p": 0.1, "slowdown": 10.0}},
    }
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(scenario))
    return path


# ------------------------------------------------------------------------------------ independent reference


@dataclass
class _Task:
    name: str
    task: str

    def partition(self) -> str:
        return self.task


def _reference_inputs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every PNG under folder/<label>/, ordered by file name, as (v/255 - mean)/std in float32."""
    files = sorted(folder.glob("*/*.png"), key=lambda f: f.name)
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return _normalised(pixels), torch.tensor([int(f.parent.name) for f in files])


def _reference_zoo(root: Path):
    from models.experts import Expert, Zoo

    def net(path: Path) -> torch.nn.Module:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        model = _resnet()
        model.load_state_dict(state)
        return model.eval()

    def acc(model, x, y) -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean() * 100)

    base = net(root / "checkpoints" / "base.safetensors")
    experts = []
    for name, labels in EXPERTS.items():
        model = net(root / _checkpoint(name))
        train_x, train_y = _reference_inputs(root / "png" / name / "train")
        test_x, test_y = _reference_inputs(root / "png" / name / "test")
        experts.append(Expert(_Task(name, f"colours{labels}"), model, train_x, train_y, test_x, test_y,  # type: ignore
                              acc(model, test_x, test_y), root / _checkpoint(name), "given", 0.0))
    all_x, all_y = torch.cat([e.test_x for e in experts]), torch.cat([e.test_y for e in experts])
    return Zoo(None, torch.device("cpu"), base, acc(base, all_x, all_y), root, "given", 0.0, experts)  # type: ignore


def _run(args: list[str]) -> Path:
    result = CliRunner().invoke(cli, ["--threads", "1", "--quiet", "run", *args])
    assert result.exit_code == 0, result.output + str(result.exception)
    out = Path(args[args.index("--out") + 1])
    return next(p for p in (out).glob("*/*") if p.is_dir() and not p.name.startswith("."))


def _same_results(a: Path, b: Path) -> None:
    nda_a, nda_b = (pd.read_csv(p / "nda.csv").drop(columns="encode_s") for p in (a, b))
    pd.testing.assert_frame_equal(nda_a, nda_b, check_exact=True)
    with np.load(a / "outputs.npz") as oa, np.load(b / "outputs.npz") as ob:
        for key in oa.files:
            np.testing.assert_array_equal(oa[key], ob[key], err_msg=key)
    pd.testing.assert_frame_equal(pd.read_parquet(a / "queries.parquet"), pd.read_parquet(b / "queries.parquet"),
                                  check_exact=True)
    experts_a, experts_b = (json.loads((p / "summary.json").read_text())["experts"] for p in (a, b))
    assert experts_a == experts_b


# ------------------------------------------------------------------------------------------------- the tests


def test_given_loader_reads_what_an_independent_reader_reads(given_dir):
    config = zoo_config_from_dict({"models": _models_table()}, str(given_dir / "x.toml"))
    assert isinstance(config, GivenZooConfig)
    zoo = load_given_zoo(config, "cpu", progress=False)
    reference = _reference_zoo(given_dir)
    for mine, theirs in zip(zoo.experts, reference.experts, strict=True):
        assert mine.partition == theirs.partition
        for field in ("train_x", "train_y", "test_x", "test_y"):
            assert torch.equal(getattr(mine, field), getattr(theirs, field)), field
        for key, value in theirs.model.state_dict().items():
            assert torch.equal(mine.model.state_dict()[key], value), key
    # file-name order, not class by class: the interleaved labels survive
    assert zoo.experts[0].test_y[:4].tolist() == [0, 1, 0, 1]

    from_npz = load_given_zoo(zoo_config_from_dict({"models": _models_table("npz")}, str(given_dir / "x.toml")),
                              "cpu", progress=False)
    for mine, theirs in zip(from_npz.experts, reference.experts, strict=True):
        assert torch.equal(mine.test_x, theirs.test_x) and torch.equal(mine.train_y, theirs.train_y)


def test_given_resnet_run_end_to_end_matches_the_zoo_path(given_dir, tmp_path, monkeypatch):
    png = _write_scenario(given_dir, "given-png", _models_table())
    first = _run([str(png), "--out", str(tmp_path / "given")])
    for name in ("nda.csv", "profile.csv", "queries.parquet", "summary.json", "report.html"):
        assert (first / name).is_file(), name
    summary = json.loads((first / "summary.json").read_text())
    assert set(summary["coding"]) == {"coin", "vanilla"}
    assert {e["name"] for e in summary["experts"]} == set(EXPERTS)
    assert all(e["accuracy_pct"] > 50 for e in summary["experts"]), \
        f"experts better than chance on their 2 classes: {[e['accuracy_pct'] for e in summary['experts']]}"
    assert all(np.isfinite(v) for c in summary["coding"].values() for v in c["nda_pct"].values())
    recorded = tomllib.loads((first / "scenario.toml").read_text())
    recorded.pop("coinsim_version")
    scenario_from_dict(recorded, str(first / "scenario.toml"))  # the record still finds checkpoints and data
    queries = pd.read_parquet(first / "queries.parquet")
    assert len(queries) == 2 * 400 and set(queries["answered_by"]) >= {"direct"}

    npz = _write_scenario(given_dir, "given-npz", _models_table("npz"))
    _same_results(first, _run([str(npz), "--out", str(tmp_path / "npz"), "--no-report",
                               "--set", f"profile.replay={first}"]))

    reference = _reference_zoo(given_dir)
    monkeypatch.setattr("models.zoo.build_zoo", lambda *args, **kwargs: reference)
    _same_results(first, _run([str(png), "--out", str(tmp_path / "zoo"), "--no-report",
                               "--set", f"profile.replay={first}"]))


def _bad_run(folder: Path, models: dict, tmp_path: Path) -> str:
    scenario = _write_scenario(folder, "bad", models)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--threads", "1", "run", str(scenario), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not out.exists(), "nothing may be written before the scenario is valid"
    return lines[0]


def test_missing_checkpoint(given_dir, tmp_path):
    table = _models_table()
    table["experts"][1]["checkpoint"] = "checkpoints/nope.safetensors"
    line = _bad_run(given_dir, table, tmp_path)
    assert "experts.1.checkpoint" in line and "nope.safetensors does not exist" in line


def test_checkpoint_of_another_architecture_names_first_keys(given_dir, tmp_path):
    torch.manual_seed(0)
    save_file(build_network(NetworkSpec(arch="cnn", in_channels=3, image_size=SIDE, width=4)).state_dict(),
              str(tmp_path / "cnn.safetensors"))
    table = _models_table()
    table["experts"][0]["checkpoint"] = str(tmp_path / "cnn.safetensors")
    line = _bad_run(given_dir, table, tmp_path)
    assert "experts.0.checkpoint" in line and "does not fit" in line
    assert "missing keys conv1.weight, bn1.weight, bn1.bias and" in line
    # the network's order for missing keys; the file's (safetensors: sorted) for unexpected ones
    assert "unexpected keys classifier.1.bias, classifier.1.weight, classifier.3.bias and 5 more" in line

    wide = _models_table(architecture={"torchvision": "resnet18", "num_classes": 10})
    line = _bad_run(given_dir, wide, tmp_path)
    assert "shape mismatch fc.weight is 4×512 (network: 10×512)" in line
    assert "missing keys" not in line


def test_non_finite_weights_are_refused_before_any_work(given_dir, tmp_path):
    state = load_file(str(given_dir / "checkpoints" / "cd.safetensors"))
    state["fc.bias"] = state["fc.bias"].clone()
    state["fc.bias"][1] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    table = _models_table()
    table["experts"][1]["checkpoint"] = str(tmp_path / "nan.safetensors")
    line = _bad_run(given_dir, table, tmp_path)
    assert "experts.1.checkpoint" in line and "1 non-finite weight(s)" in line and "fc.bias" in line
    state = torch.load(given_dir / "checkpoints" / "ab.pth", weights_only=True)
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], float("inf"))
    torch.save(state, tmp_path / "inf.pth")
    table = _models_table(base=str(tmp_path / "inf.pth"))
    line = _bad_run(given_dir, table, tmp_path)
    assert "base" in line and f"{state['conv1.weight'].numel()} non-finite weight(s)" in line


def test_non_finite_inputs_are_refused_before_any_work(given_dir, tmp_path):
    x, y = (np.load(given_dir / "npz" / "ab" / "test.npz")[k] for k in ("x", "y"))
    inputs = _normalised(x).numpy()
    inputs[2, 0, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=inputs, y=y)
    table = _models_table("npz")
    table["experts"][0]["test"] = str(tmp_path / "nan.npz")
    line = _bad_run(given_dir, table, tmp_path)
    assert "experts.0.test" in line and "1 non-finite value(s)" in line


def test_import_path_that_does_not_import(given_dir, tmp_path):
    line = _bad_run(given_dir, _models_table(architecture={"factory": "no_such_package.nets:make", "width": 3}),
                    tmp_path)
    assert "architecture" in line and "cannot import no_such_package.nets" in line
    line = _bad_run(given_dir, _models_table(architecture={"factory": "torchvision.models:resnet_nine"}), tmp_path)
    assert "has no attribute resnet_nine" in line
    line = _bad_run(given_dir, _models_table(architecture={"torchvision": "resnet81"}), tmp_path)
    assert "unknown torchvision model 'resnet81'" in line and "resnet18" in line


def test_factory_form_builds_the_same_network(given_dir):
    torchvision_form = zoo_config_from_dict({"models": _models_table()}, str(given_dir / "x.toml"))
    factory_form = zoo_config_from_dict(
        {"models": _models_table(architecture={"factory": "torchvision.models:resnet18", "num_classes": K})},
        str(given_dir / "x.toml"))
    a, b = (load_given_zoo(c, "cpu", progress=False) for c in (torchvision_form, factory_form))
    x = a.experts[0].test_x
    with torch.no_grad():
        assert torch.equal(a.experts[1].model(x), b.experts[1].model(x))


def test_data_folder_without_images(given_dir, tmp_path):
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    (empty / "0" / "notes.txt").write_text("no images here")
    table = _models_table()
    table["experts"][0]["test"] = str(empty)
    line = _bad_run(given_dir, table, tmp_path)
    assert "experts.0.test" in line and "holds no images" in line


@pytest.mark.parametrize("bad", ["broken", "other-size"])
def test_every_image_is_decoded_before_any_work(given_dir, tmp_path, bad):
    """Not only the first: the last image of a folder (by name) broken, or of another size, is refused before
    anything is trained or written — by run and by validate alike."""
    import shutil

    folder = tmp_path / "test"
    shutil.copytree(given_dir / "png" / "ab" / "test", folder)
    last = folder / "1" / "zzz.png"
    if bad == "broken":
        last.write_bytes(b"\x89PNG not really")
    else:
        Image.fromarray(np.zeros((SIDE + 4, SIDE + 4, 3), np.uint8)).save(last)
    table = _models_table()
    table["experts"][0]["test"] = str(folder)
    line = _bad_run(given_dir, table, tmp_path)
    expect = "cannot be read as an image" if bad == "broken" else f"is 3×{SIDE + 4}×{SIDE + 4} after preprocessing"
    assert "experts.0.test" in line and "zzz.png" in line and expect in line, line
    scenario = given_dir / "bad.toml"
    result = CliRunner().invoke(cli, ["validate", str(scenario), "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [line], result.output


def test_data_with_classes_the_network_cannot_output(given_dir, tmp_path):
    folder = tmp_path / "seven"
    (folder / "7").mkdir(parents=True)
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(folder / "7" / "000.png")
    table = _models_table()
    table["experts"][1]["train"] = str(folder)
    line = _bad_run(given_dir, table, tmp_path)
    assert "experts.1.train" in line and "labels [7] but the network outputs 4 classes (0..3)" in line

    named = tmp_path / "named"
    (named / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(named / "cat" / "000.png")
    table = _models_table()
    table["experts"][1]["test"] = str(named)
    assert "class folder 'cat' is not a label number" in _bad_run(given_dir, table, tmp_path)
    table["classes"] = ["a", "b", "c", "d", "e", "cat"]  # 'cat' is output 5 of a 4-output network
    assert "labels [5] but the network outputs 4" in _bad_run(given_dir, table, tmp_path)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran code"))


def test_a_pickle_that_runs_code_is_refused(given_dir, tmp_path):
    control, marker = tmp_path / "control.txt", tmp_path / "ran.txt"
    torch.save({"fc.weight": _Payload(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists(), "the payload must be live, or this test proves nothing"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": _Payload(marker)}, evil)
    table = _models_table()
    table["experts"][0]["checkpoint"] = str(evil)
    line = _bad_run(given_dir, table, tmp_path)
    assert "cannot be read as weights only" in line
    assert not marker.exists()


def test_config_errors_are_one_line(given_dir):
    source = str(given_dir / "x.toml")
    with pytest.raises(ConfigError, match="exactly one of torchvision"):
        zoo_config_from_dict({"models": _models_table(architecture={"num_classes": 3})}, source)
    with pytest.raises(ConfigError, match="weights cannot be given"):
        zoo_config_from_dict({"models": _models_table(architecture={"torchvision": "resnet18",
                                                                    "weights": "IMAGENET1K_V1"})}, source)
    with pytest.raises(ConfigError, match="normalize must come after to_tensor"):
        zoo_config_from_dict({"models": _models_table(preprocess=[{"op": "normalize", "mean": [0.5], "std": [0.5]},
                                                                  {"op": "to_tensor"}])}, source)
    with pytest.raises(ConfigError, match=r"experts\.0\.train: preprocess fails on .*000\.png"):
        zoo_config_from_dict({"models": _models_table(preprocess=[{"op": "grayscale"}, {"op": "to_tensor"}, {
            "op": "normalize", "mean": MEAN, "std": STD}])}, source)
    with pytest.raises(ConfigError, match="one shape after preprocessing"):
        table = _models_table()
        table["experts"][1]["preprocess"] = [{"op": "center_crop", "size": 8}, {"op": "to_tensor"}]
        zoo_config_from_dict({"models": table}, source)


def test_label_subset_keeps_only_those_labels(given_dir):
    table = _models_table()
    table["experts"][1]["labels"] = [3]
    config = zoo_config_from_dict({"models": table}, str(given_dir / "x.toml"))
    zoo = load_given_zoo(config, "cpu", progress=False)
    reference_x, reference_y = _reference_inputs(given_dir / "png" / "cd" / "test")
    assert zoo.experts[1].test_y.tolist() == [3] * int((reference_y == 3).sum())
    assert torch.equal(zoo.experts[1].test_x, reference_x[reference_y == 3])


def test_pipeline_steps_by_name():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    image = Image.fromarray(gray).convert("RGB")
    from models.given_config import CenterCrop, Grayscale, Normalize, Resize, ToTensor

    out = pipeline([Grayscale(op="grayscale"), CenterCrop(op="center_crop", size=4), ToTensor(op="to_tensor"),
                    Normalize(op="normalize", mean=[0.5], std=[0.5])])(image)
    expected = (gray[2:6, 2:6].astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    assert out.shape == (1, 4, 4) and torch.equal(out[0], torch.from_numpy(expected))
    flat = pipeline([Resize(op="resize", size=[5, 3])])(Image.new("RGB", (8, 8), (51, 102, 153)))
    assert flat.shape == (3, 5, 3)
    assert torch.allclose(flat, torch.tensor([0.2, 0.4, 0.6])[:, None, None].expand(3, 5, 3))


def test_fit_problem_lists_the_first_keys_only():
    expected = {f"k{i}": (2,) for i in range(6)}
    assert fit_problem(expected, dict(expected)) is None
    problem = fit_problem(expected, {"k0": (3,), "x": (1,)})
    assert problem == "missing keys k1, k2, k3 and 2 more, unexpected keys x, shape mismatch k0 is 3 (network: 2)"


@pytest.mark.parametrize("spec", [NetworkSpec(arch="cnn", width=4),
                                  GivenArchitecture(torchvision="resnet18", num_classes=3),
                                  GivenArchitecture(factory="models.networks:zoo_network", arch="resnet_cifar",
                                                    width=4, in_channels=3)])
def test_network_recipe_rebuilds_the_architecture_in_another_process(spec):
    torch.manual_seed(0)
    original = build_network(spec) if isinstance(spec, NetworkSpec) else spec.build()
    recipe = network_recipe(spec)
    torch.manual_seed(1)
    rebuilt = rebuild_network(json.loads(json.dumps(recipe)))
    assert [(k, v.shape) for k, v in original.state_dict().items()] == \
        [(k, v.shape) for k, v in rebuilt.state_dict().items()]
    rebuilt.load_state_dict(original.state_dict())
    channels = 1 if isinstance(spec, NetworkSpec) else 3
    x = torch.randn(2, channels, 28, 28)
    with torch.no_grad():
        assert torch.equal(original.eval()(x), rebuilt.eval()(x))
    # a NetworkSpec file as the testbed writes it today is still read
    if isinstance(spec, NetworkSpec):
        assert isinstance(rebuild_network(spec.model_dump_json()), type(original))
