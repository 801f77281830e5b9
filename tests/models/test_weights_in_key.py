"""A starting checkpoint replaced at the same path must not be served from the cache: its content is in the key."""

from __future__ import annotations

from models.config import ZooConfig
from models.zoo import build_zoo
from tests.conftest import tiny_zoo_table


def test_replacing_the_weights_file_changes_the_key(tmp_path):
    weights = tmp_path / "start.safetensors"
    weights.write_bytes(b"first checkpoint")
    table = tiny_zoo_table(tmp_path / "cache")
    table["network"] = {**table["network"], "weights": str(weights)}
    first = build_zoo(ZooConfig.model_validate(table), device="cpu", progress=False)
    again = build_zoo(ZooConfig.model_validate(table), device="cpu", progress=False)
    assert again.base_status == "hit"  # same file: cached
    weights.write_bytes(b"second checkpoint")
    changed = build_zoo(ZooConfig.model_validate(table), device="cpu", progress=False)
    assert changed.base_status != "hit" and changed.base_cache_path != first.base_cache_path
