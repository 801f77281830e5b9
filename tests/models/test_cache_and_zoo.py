import json

import pytest
import torch

from models.cache import ModelCache, config_key
from models.config import ConfigError
from models.networks import NetworkSpec, build_network
from models.tables import load_zoo_config, zoo_config_from_dict
from models.zoo import build_zoo
from tests.conftest import tiny_zoo_config


def _net(seed=0):
    torch.manual_seed(seed)
    return build_network(NetworkSpec(width=4))


def test_cache_miss_hit_and_corruption(tmp_path):
    cache = ModelCache(tmp_path)
    key = config_key({"a": 1})
    assert cache.load("expert", key, _net())[0] == "miss"
    saved = _net(1)
    cache.save("expert", key, saved, {"accuracy": 12.5})
    loaded = _net(2)
    status, meta = cache.load("expert", key, loaded)
    assert status == "hit" and meta["accuracy"] == 12.5
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])

    weights = cache.entry("expert", key) / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert cache.load("expert", key, _net())[0] == "rebuilt"
    assert not cache.entry("expert", key).exists(), "a corrupt entry must be removed, not kept"


def test_cache_rejects_mismatched_sidecar_and_shapes(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save("base", "k1", _net(), {})
    sidecar = cache.entry("base", "k1") / "meta.json"
    meta = json.loads(sidecar.read_text())
    meta["key"] = "other"
    sidecar.write_text(json.dumps(meta))
    assert cache.load("base", "k1", _net())[0] == "rebuilt"

    cache.save("base", "k2", _net(), {})
    torch.manual_seed(0)
    wider = build_network(NetworkSpec(width=8))
    assert cache.load("base", "k2", wider)[0] == "rebuilt"


def test_config_key_is_order_independent():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_tiny_zoo_trains_beyond_chance_and_keeps_partitions_apart(tiny_zoo):
    assert len(tiny_zoo.experts) == 2
    low, high = tiny_zoo.experts
    assert set(low.test_y.unique().tolist()) == {0, 1, 2, 3, 4}
    assert set(high.train_y.unique().tolist()) == {5, 6, 7, 8, 9}
    # chance on a 5-class partition is 20%
    assert low.accuracy > 60 and high.accuracy > 60
    # fine-tuning moved the experts away from the base and from each other
    base = dict(tiny_zoo.base.named_parameters())
    for expert in tiny_zoo.experts:
        moved = sum((p - base[n]).abs().sum() for n, p in expert.model.named_parameters())
        assert moved > 0
    # no test image of an expert is among the base's or the experts' training images
    train_rows = {row.numpy().tobytes() for e in tiny_zoo.experts for row in e.train_x}
    assert not any(row.numpy().tobytes() in train_rows for row in low.test_x)


def test_second_build_hits_the_cache_with_identical_weights(tiny_zoo):
    again = build_zoo(tiny_zoo.config, device="cpu", progress=False)
    assert again.base_status == "hit" and all(e.status == "hit" for e in again.experts)
    for old, new in zip(tiny_zoo.experts, again.experts, strict=True):
        for (name, a), (_, b) in zip(old.model.state_dict().items(), new.model.state_dict().items(), strict=True):
            assert torch.equal(a, b), name


def test_same_seed_same_weights_different_seed_different(tmp_path):
    fast = {"network": {"width": 2}, "base": {"fraction": 0.05, "train": {"epochs": 1}}, "finetune": {"epochs": 1}}
    a = build_zoo(tiny_zoo_config(tmp_path / "a", seed=5, **fast), device="cpu", progress=False)
    b = build_zoo(tiny_zoo_config(tmp_path / "b", seed=5, **fast), device="cpu", progress=False)
    c = build_zoo(tiny_zoo_config(tmp_path / "c", seed=6, **fast), device="cpu", progress=False)
    wa, wb, wc = (z.experts[0].model.state_dict()["classifier.3.weight"] for z in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least 2"):
        zoo_config_from_dict({"experts": [{"name": "a", "dataset": "digits"}]})
    with pytest.raises(ConfigError, match="unique"):
        zoo_config_from_dict({"experts": [{"name": "a", "dataset": "digits"}, {"name": "a", "dataset": "digits"}]})
    bad = tmp_path / "bad.toml"
    bad.write_text("[models\n")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_zoo_config(bad)
    good = tmp_path / "zoo.toml"
    good.write_text('seed = 3\n[models]\nexperts = [{name="a", dataset="digits"}, {name="b", dataset="mnist5k"}]\n')
    assert load_zoo_config(good).seed == 3 and load_zoo_config(good, seed=4).seed == 4
