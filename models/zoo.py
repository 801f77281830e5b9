"""Build (or fetch from the cache) a base model and the experts fine-tuned from it.

The base sees a seeded share of each data set's *train* split with all labels; every expert starts from the
base's weights and is fine-tuned on its own partition (a label group and/or a data set) of the train split.
Test splits are touched only for evaluation, so every expert's test partition is disjoint from all training.
Experts keep the full K-way head, as the paper does.
"""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from models.cache import ModelCache, config_key
from models.config import ZooConfig
from models.data import ImageData, adapt_images, load_dataset, select_labels
from models.experts import Expert, Zoo
from models.networks import build_network, pick_device
from models.progress import say
from models.training import accuracy, train

if TYPE_CHECKING:
    from models.given_config import GivenZooConfig

def derive_seed(seed: int, *tags: str) -> int:
    """Independent, reproducible sub-seed for one named random stream."""
    digest = hashlib.sha256(":".join([str(seed), *tags]).encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


def _load_adapted(config: ZooConfig) -> dict[str, ImageData]:
    net = config.network
    out = {}
    for name in config.datasets():
        data = load_dataset(name, config.data_root, config.download, config.test_fraction, config.seed)
        out[name] = ImageData(
            name=data.name,
            train_x=adapt_images(data.train_x, net.in_channels, net.image_size),
            train_y=data.train_y,
            test_x=adapt_images(data.test_x, net.in_channels, net.image_size),
            test_y=data.test_y,
            num_classes=data.num_classes,
            fingerprint=data.fingerprint,
        )
    return out


def _base_split(config: ZooConfig, data: dict[str, ImageData]):
    """Seeded share of every base data set's train split, plus the matching test union for reporting."""
    xs, ys, tx, ty = [], [], [], []
    for name in config.base_datasets():
        d = data[name]
        g = torch.Generator().manual_seed(derive_seed(config.seed, "base-share", name))
        keep = torch.randperm(len(d.train_x), generator=g)[: max(1, int(round(config.base.fraction * len(d.train_x))))]
        xs.append(d.train_x[keep.sort().values])
        ys.append(d.train_y[keep.sort().values])
        tx.append(d.test_x)
        ty.append(d.test_y)
    return torch.cat(xs), torch.cat(ys), torch.cat(tx), torch.cat(ty)


def build_zoo(config: ZooConfig | GivenZooConfig, device: str | torch.device = "auto", progress: bool = True) -> Zoo:
    """Base + experts for `config`, reusing cached weights whose recorded provenance matches exactly.

    Given networks (a GivenZooConfig) are loaded from their checkpoints and data instead (models.given).
    """
    if not isinstance(config, ZooConfig):
        from models.given import load_given_zoo

        return load_given_zoo(config, device, progress)
    device = device if isinstance(device, torch.device) else pick_device(device)
    cache = ModelCache(config.resolved_cache_dir())
    data = _load_adapted(config)
    fingerprints = {name: d.fingerprint for name, d in data.items()}
    network = config.network.model_dump(mode="json")
    if network.get("activation") == "relu":  # the default before `activation` existed: keys of older caches hold
        del network["activation"]
    if config.network.weights is not None:  # the starting checkpoint's content, not just its path, decides the key
        weights = Path(config.network.weights).expanduser()
        network["weights_sha256"] = (hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file()
                                     else None)

    base_x, base_y, base_tx, base_ty = _base_split(config, data)
    base_key = config_key({
        "role": "base", "network": network, "train": config.base.train.model_dump(),
        "datasets": config.base_datasets(), "fraction": config.base.fraction,
        "data": {n: fingerprints[n] for n in config.base_datasets()}, "seed": config.seed,
    })
    torch.manual_seed(derive_seed(config.seed, "base-init"))
    base = build_network(config.network)
    status, meta = cache.load("base", base_key, base)
    if meta is None:
        say(f"training base model on {len(base_x)} images ({', '.join(config.base_datasets())})", progress)
        result = train(base, base_x, base_y, config.base.train, derive_seed(config.seed, "base-train"), device,
                       label="base", progress=progress)
        base_acc = accuracy(base, base_tx, base_ty, device)
        meta = {"accuracy": base_acc, "train_seconds": result.seconds, "final_loss": result.final_loss,
                "config": {"network": network, "train": config.base.train.model_dump()},
                "data_fingerprint": fingerprints, "partition": "+".join(config.base_datasets()),
                "name": "base", "zoo": config.name}
        cache.save("base", base_key, base, meta)
    base.to(device).eval()
    zoo = Zoo(config, device, base, meta["accuracy"], cache.entry("base", base_key), status, meta["train_seconds"])

    for spec in config.experts:
        d = data[spec.dataset]
        train_x, train_y = select_labels(d.train_x, d.train_y, spec.labels)
        test_x, test_y = select_labels(d.test_x, d.test_y, spec.labels)
        key = config_key({
            "role": "expert", "base": base_key, "spec": spec.model_dump(), "train": config.finetune.model_dump(),
            "data": fingerprints[spec.dataset], "seed": config.seed,
        })
        model = copy.deepcopy(base)
        status, meta = cache.load("expert", key, model)
        if meta is None:
            say(f"fine-tuning expert '{spec.name}' on {spec.partition()} ({len(train_x)} images)", progress)
            started = time.perf_counter()
            model.load_state_dict(base.state_dict())
            result = train(model, train_x, train_y, config.finetune, derive_seed(config.seed, "expert", spec.name),
                           device, label=spec.name, progress=progress, freeze_bn=config.finetune.freeze_bn)
            acc = accuracy(model, test_x, test_y, device)
            meta = {"accuracy": acc, "train_seconds": time.perf_counter() - started, "final_loss": result.final_loss,
                    "config": {"spec": spec.model_dump(), "train": config.finetune.model_dump()},
                    "data_fingerprint": fingerprints[spec.dataset], "partition": spec.partition(),
                    "name": spec.name, "zoo": config.name, "base_key": base_key}
            cache.save("expert", key, model, meta)
        model.to(device).eval()
        zoo.experts.append(Expert(spec, model, train_x, train_y, test_x, test_y, meta["accuracy"],
                                  cache.entry("expert", key), status, meta["train_seconds"]))
    return zoo
