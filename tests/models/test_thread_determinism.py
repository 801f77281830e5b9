"""Trained weights do not depend on torch's thread count (the cache key does not hold it, so they must not)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _weights_digest(threads: int, cache: str) -> subprocess.Popen:
    """Train the tiny zoo in a fresh process with `threads` torch threads; its last line is the weights' digest."""
    code = textwrap.dedent(f"""
        import hashlib, torch
        torch.set_num_threads({threads})
        from models.config import ZooConfig
        from models.zoo import build_zoo
        from tests.conftest import tiny_zoo_table
        zoo = build_zoo(ZooConfig.model_validate(tiny_zoo_table({cache!r})), device="cpu", progress=False)
        digest = hashlib.sha256()
        for model in [zoo.base, *zoo.models]:
            for tensor in model.state_dict().values():
                digest.update(tensor.numpy().tobytes())
        print(digest.hexdigest())
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _digest(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out.strip().splitlines()[-1]


def test_one_and_two_threads_train_the_same_weights(tmp_path):
    # both trainings at once (each in its own cache): the test's wall time is one training's
    one, two = _weights_digest(1, str(tmp_path / "one")), _weights_digest(2, str(tmp_path / "two"))
    assert _digest(one) == _digest(two)
