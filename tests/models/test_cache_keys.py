"""The cache keys end to end, in one shared cache: every setting that changes what a network is trained from
changes the key of exactly the networks it affects (a stale hit would silently serve the wrong weights), and
settings that do not affect training never cause a retrain.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import PurePosixPath

import pytest
import torch

from models.cache import ModelCache, config_key
from models.config import ZooConfig
from models.networks import NetworkSpec, build_network
from models.zoo import build_zoo, derive_seed
from tests.conftest import tiny_zoo_table

# a zoo that trains in well under a second: the statuses are what is tested, not the accuracy
FAST = {"network": {"arch": "cnn", "width": 2},
        "base": {"fraction": 0.05, "train": {"epochs": 1, "lr": 3e-3, "batch_size": 256}},
        "finetune": {"epochs": 1, "lr": 2e-3, "batch_size": 256},
        "experts": [{"name": "low", "dataset": "mnist5k", "labels": [0, 1]},
                    {"name": "high", "dataset": "mnist5k", "labels": [5, 6]}]}


def _table(cache, **changes) -> dict:
    table = copy.deepcopy(tiny_zoo_table(cache, 0, **FAST))
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = table
        for part in path:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[int(last) if last.isdigit() else last] = value
    return table


def _statuses(cache, **changes) -> tuple[str, str, str]:
    zoo = build_zoo(ZooConfig.model_validate(_table(cache, **changes)), device="cpu", progress=False)
    return (zoo.base_status, *(e.status for e in zoo.experts))


MISS_ALL = ("miss", "miss", "miss")
EXPERTS = ("hit", "miss", "miss")
SECOND = ("hit", "hit", "miss")
NONE = ("hit", "hit", "hit")

# setting (a__b = table path, digits index lists) -> which networks it must retrain
CHANGES = [
    ({"seed": 1}, MISS_ALL),
    ({"test_fraction": 0.25}, MISS_ALL),  # another train/test split is other training data
    ({"network__width": 3}, MISS_ALL),
    ({"network__batchnorm": True}, MISS_ALL),
    ({"network__activation": "gelu"}, MISS_ALL),
    ({"network__activation": "relu"}, NONE),  # naming the default is the same network as leaving it out
    ({"base__fraction": 0.06}, MISS_ALL),  # the experts start from another base
    ({"base__train__lr": 1e-3}, MISS_ALL),
    ({"base__train__batch_size": 128}, MISS_ALL),
    ({"base__train__weight_decay": 0.01}, MISS_ALL),
    ({"base__datasets": ["mnist5k", "digits"]}, MISS_ALL),
    ({"finetune__lr": 1e-3}, EXPERTS),
    ({"finetune__epochs": 2}, EXPERTS),
    ({"finetune__weight_decay": 0.05}, EXPERTS),
    ({"finetune__batch_size": 128}, EXPERTS),
    ({"finetune__freeze_bn": False}, EXPERTS),
    ({"experts__1__labels": [5, 7]}, SECOND),
    ({"experts__1__name": "upper"}, SECOND),  # the name seeds the expert's training stream
    ({"experts__1__dataset": "digits", "experts__1__labels": None, "base__datasets": ["mnist5k"]}, SECOND),
    ({"name": "renamed"}, NONE),  # the zoo's name is a label, not training input
]


def test_every_setting_that_changes_training_changes_the_key_in_one_shared_cache(tmp_path):
    cache = tmp_path / "shared"
    assert _statuses(cache) == MISS_ALL
    assert _statuses(cache) == NONE
    for changes, expected in CHANGES:
        assert _statuses(cache, **changes) == expected, changes
    # nothing was overwritten: both the original zoo and a changed one are still served from the cache, and every
    # retrain added an entry of its own
    assert _statuses(cache) == NONE
    assert _statuses(cache, **CHANGES[0][0]) == NONE
    entries = ModelCache(cache).entries()
    assert len(entries) == 3 + sum(status == "miss" for _, expected in CHANGES for status in expected)
    assert len({e["path"] for e in entries}) == len(entries)


def test_keys_of_relu_networks_are_those_written_before_the_activation_option(tmp_path):
    """Caches filled before `network.activation` existed stay valid: these names were printed by the project
    one commit before the option was added, for the FAST zoo (keys hold the embedded data's fingerprint)."""
    zoo = build_zoo(ZooConfig.model_validate(_table(tmp_path / "c")), device="cpu", progress=False)
    assert zoo.base_cache_path.name == "base-a9932eb27f50b48d3033"
    assert [e.cache_path.name for e in zoo.experts] == ["expert-bf2a714419a29ee50833", "expert-358413097b862873178e"]


def test_a_hit_serves_the_weights_that_were_trained_for_that_key(tmp_path):
    """Two zoos differing only in the finetune learning rate share the base; each gets its own experts back."""
    cache = tmp_path / "shared"
    first = build_zoo(ZooConfig.model_validate(_table(cache)), device="cpu", progress=False)
    other = build_zoo(ZooConfig.model_validate(_table(cache, finetune__lr=1e-2)), device="cpu", progress=False)
    again = build_zoo(ZooConfig.model_validate(_table(cache)), device="cpu", progress=False)
    for a, b, c in zip(first.experts, other.experts, again.experts, strict=True):
        wa, wb, wc = (e.model.state_dict()["classifier.3.weight"] for e in (a, b, c))
        assert torch.equal(wa, wc) and not torch.equal(wa, wb)
        assert c.accuracy == a.accuracy and c.cache_path == a.cache_path != b.cache_path
    assert other.base_status == "hit" and other.base_cache_path == first.base_cache_path
    # the paths a zoo reports are the entries that hold its networks
    for zoo in (first, other):
        for path, role in ((zoo.base_cache_path, "base"), *((e.cache_path, "expert") for e in zoo.experts)):
            assert json.loads((path / "meta.json").read_text())["role"] == role


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    import models.cache

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(models.cache, "save_file", disk_full)
    cache = ModelCache(tmp_path)
    with pytest.raises(OSError):
        cache.save("expert", "k", _net(), {})
    assert list(tmp_path.iterdir()) == []


def test_config_key_is_the_sha256_of_canonical_json():
    """Stable across processes and releases: sorted keys, no whitespace, first 20 hex digits of SHA-256."""
    payload = {"b": [1, 2.5, None], "a": {"z": True, "y": "text"}}
    canonical = '{"a":{"y":"text","z":true},"b":[1,2.5,null]}'
    assert config_key(payload) == hashlib.sha256(canonical.encode()).hexdigest()[:20]
    assert json.dumps(payload, sort_keys=True, separators=(",", ":")) == canonical
    assert config_key({"path": PurePosixPath("/x/y")}) == config_key({"path": "/x/y"})  # other values by str()


def test_derived_seeds_are_pinned():
    """The sub-seeds are not part of the cache key (the zoo seed is): if their derivation changed, a warm cache
    would keep serving weights that a cold one no longer reproduces. Values from the documented rule:
    int(sha256("seed:tag:...")[:8 bytes], big-endian) mod 2**63."""
    def rule(seed: int, *tags: str) -> int:
        digest = hashlib.sha256(":".join([str(seed), *tags]).encode()).digest()
        return int.from_bytes(digest[:8], "big") % 2**63

    pinned = {(0, ("base-init",)): 343873621032210799, (3, ("expert", "low")): 7657503912909896912}
    for (seed, tags), value in pinned.items():
        assert derive_seed(seed, *tags) == rule(seed, *tags) == value
    assert derive_seed(0, "base-init") != derive_seed(1, "base-init")
    assert derive_seed(0, "expert", "low") != derive_seed(0, "expert", "high")
    assert all(0 <= derive_seed(s, "t") < 2**63 for s in range(200))


def _net(seed: int = 0, width: int = 4):
    torch.manual_seed(seed)
    return build_network(NetworkSpec(width=width))


def test_save_records_key_role_and_weights_hash_and_replaces_an_old_entry(tmp_path):
    cache = ModelCache(tmp_path / "home" / ".cache" / "coinsim")  # a cache folder whose parents do not exist yet
    first = cache.save("expert", "k", _net(1), {"accuracy": 1.0})
    assert first == tmp_path / "home" / ".cache" / "coinsim" / "expert-k"
    meta = json.loads((first / "meta.json").read_text())
    weights = (first / "model.safetensors").read_bytes()
    assert meta["key"] == "k" and meta["role"] == "expert" and meta["accuracy"] == 1.0
    assert meta["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    cache.save("expert", "k", _net(2), {"accuracy": 2.0})  # a retrain replaces the entry, atomically
    loaded = _net(3)
    status, meta = cache.load("expert", "k", loaded)
    assert status == "hit" and meta["accuracy"] == 2.0
    assert all(torch.equal(v, _net(2).state_dict()[k]) for k, v in loaded.state_dict().items())
    assert sorted(p.name for p in cache.root.iterdir()) == ["expert-k"]  # no temporary folder left


@pytest.mark.parametrize("damage", ["no sidecar", "bad json", "no weights", "renamed tensor"])
def test_a_damaged_entry_is_rebuilt_and_removed(tmp_path, damage):
    from safetensors.torch import load_file, save_file

    cache = ModelCache(tmp_path)
    folder = cache.save("base", "k", _net(), {})
    if damage == "no sidecar":
        (folder / "meta.json").unlink()
    elif damage == "bad json":
        (folder / "meta.json").write_text("{")
    elif damage == "no weights":
        (folder / "model.safetensors").unlink()
    else:  # same shapes, another name: the hash is updated too, so only the name check can catch it
        state = load_file(str(folder / "model.safetensors"))
        state["renamed"] = state.pop(next(iter(state)))
        save_file(state, str(folder / "model.safetensors"))
        meta = json.loads((folder / "meta.json").read_text())
        meta["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        (folder / "meta.json").write_text(json.dumps(meta))
    assert cache.load("base", "k", _net()) == ("rebuilt", None)
    assert not folder.exists()
