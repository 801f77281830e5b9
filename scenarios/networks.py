"""The networks a scenario serves, in the order servers and tasks name them, and their files.

Task `net` k names the k-th of `served_networks`: expert i is network i, coded model k is N + k, then the
generalist backup when it is another network. `save_networks` writes them as server processes load them
(testbed.server: network.json + weights.safetensors per folder, the input rows as one .npy); the testbed and the
served-pass profile both start servers from these folders. `facts` is the runner's NetworkFacts (taken by its
fields, so this room needs nothing from the runner).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def served_networks(facts: Any) -> list[tuple[str, Any]]:
    """(name, module) in task-`net` order: expert i is network i, coded model k is N + k, then the generalist
    backup ('backup') when it is not coded model 0 itself (`coding.backup` names another method)."""
    coded = facts.coded_models or [facts.served["coded"]]
    names = ["coded"] + [f"coded-{k + 1}" for k in range(1, len(coded))]
    backup = [("backup", facts.served["backup"])] if "backup" in facts.served else []
    return ([(e["name"], facts.served[e["name"]]) for e in facts.experts] + list(zip(names, coded, strict=True))
            + backup)


def parity_networks(facts: Any) -> list[tuple[str, Any]]:
    """(name, module) of the scenario's parity networks ('parity-k<k>-<expert>', or '-any' for mixed groups), by
    key (scenarios.parity_join): the testbed's servers hold them after `served_networks`, so parity network j is
    task `net` len(served_networks) + j."""
    names = [e["name"] for e in facts.experts]
    return [(f"parity-k{k}-{names[i] if i >= 0 else 'any'}", model)
            for (k, i), model in sorted(facts.parity_models.items())]


def parity_network_index(facts: Any, k: int, dispatch: str) -> tuple[int, ...]:
    """Per expert, the task `net` of the parity network its queries' groups of k (gathered by `dispatch`) are
    encoded for on a testbed server (see `parity_networks`)."""
    from scenarios.parity_join import parity_key

    first = len(served_networks(facts))
    keys = sorted(facts.parity_models)
    return tuple(first + keys.index(parity_key(k, dispatch, i)) for i in range(len(facts.experts)))


def backup_network(facts: Any) -> int:
    """The task-`net` index of the network a backup server runs: 'backup' if served on its own, else 'coded'."""
    names = [name for name, _ in served_networks(facts)]
    return names.index("backup" if "backup" in names else "coded")


def save_networks(facts: Any, folder: Path, parity: bool = False) -> tuple[list[Path], Path]:
    """Write every served network (network.json + weights.safetensors), then the parity networks if asked, and the
    input rows; return the paths."""
    import torch
    from safetensors.torch import save_file

    from models.given_config import network_recipe

    recipe = network_recipe(facts.network_spec)  # a zoo's NetworkSpec or a user's given architecture
    paths = []
    for k, (_, model) in enumerate(served_networks(facts) + (parity_networks(facts) if parity else [])):
        net = folder / f"net-{k}"
        net.mkdir(parents=True, exist_ok=True)
        (net / "network.json").write_text(recipe)
        save_file({name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()},
                  str(net / "weights.safetensors"))
        paths.append(net)
    inputs = folder / "inputs.npy"
    np.save(inputs, torch.cat(facts.test_inputs).cpu().numpy().astype(np.float32))
    return paths, inputs
