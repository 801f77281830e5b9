"""On-disk cache of trained networks: safetensors weights + a JSON sidecar, keyed by a config hash.

An entry is trusted only when the sidecar's key matches the request, the weights file hashes to the value
recorded at save time, and every tensor name and shape fits the network. Anything else is a corrupt or
stale entry: it is removed and the caller retrains. Entries are written to a temporary folder and renamed
into place, so a crash never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import atomic

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
SIDECAR = "meta.json"
Status = Literal["hit", "miss", "rebuilt"]


def config_key(payload: dict[str, Any]) -> str:
    """Stable hash of a JSON-able description of how a model was made."""
    canonical = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelCache:
    """A folder of `<role>-<key>/` entries."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, role: str, key: str) -> Path:
        return self.root / f"{role}-{key}"

    def load(self, role: str, key: str, model: nn.Module) -> tuple[Status, dict[str, Any] | None]:
        """Fill `model` from the cache. Returns ('hit', sidecar), ('miss', None) or ('rebuilt', None)."""
        folder = self.entry(role, key)
        if not folder.exists():
            return "miss", None
        try:
            meta = json.loads((folder / SIDECAR).read_text())
            if meta.get("key") != key:
                raise ValueError(f"sidecar key {meta.get('key')} != {key}")
            if _file_sha256(folder / WEIGHTS) != meta.get("weights_sha256"):
                raise ValueError("weights file does not match its recorded hash")
            state = load_file(str(folder / WEIGHTS))
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            found = {k: tuple(v.shape) for k, v in state.items()}
            if expected != found:
                raise ValueError("tensor names or shapes differ from the network")
            model.load_state_dict(state, strict=True)
        except (OSError, ValueError, SafetensorError, json.JSONDecodeError, RuntimeError) as error:
            log.warning("cache entry %s is unusable (%s); rebuilding", folder, error)
            shutil.rmtree(folder, ignore_errors=True)
            return "rebuilt", None
        return "hit", meta

    def save(self, role: str, key: str, model: nn.Module, meta: dict[str, Any]) -> Path:
        """Write weights + sidecar atomically (temp folder, then rename)."""
        def fill(tmp: Path) -> None:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS))
            sidecar = dict(meta, key=key, role=role, weights_sha256=_file_sha256(tmp / WEIGHTS))
            (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str))

        return atomic.publish_folder(self.entry(role, key), fill, replace=True)

    def entries(self) -> list[dict[str, Any]]:
        """Sidecars of every entry (unreadable ones skipped), for `coinsim models list`."""
        out = []
        for sidecar in sorted(self.root.glob(f"*/{SIDECAR}")):
            try:
                meta = json.loads(sidecar.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            meta["path"] = str(sidecar.parent)
            out.append(meta)
        return out

