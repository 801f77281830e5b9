"""OT fusion / aligned COIN measurements on MNIST-5k with width-16 SmallCNNs (issue 6).

Usage: python bench/repro_otfusion.py SEED  (prints one JSON line; docs/coin.md has the table of seeds 0-2)
"""
import json
import sys
import time

import torch

import coin
from coin.otfusion import fuse
from models.config import TrainSpec
from models.data import load_dataset, select_labels
from models.networks import NetworkSpec, build_network
from models.training import accuracy, train

torch.set_num_threads(1)
seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
dev = torch.device("cpu")
d = load_dataset("mnist5k", seed=seed)
spec = NetworkSpec(arch="cnn", width=16)
full = TrainSpec(lr=1e-3, batch_size=64, epochs=5)
tune = TrainSpec(lr=5e-4, batch_size=64, weight_decay=0.01, epochs=5)
out = {"seed": seed}

def net(init: int, x, y, ts, train_seed, start=None):
    torch.manual_seed(init)
    m = build_network(spec)
    if start is not None:
        m.load_state_dict(start.state_dict())
    train(m, x, y, ts, train_seed, dev, progress=False)
    return m.eval()

def acc(m):
    return accuracy(m, d.test_x, d.test_y, dev)

# 1) two networks from different seeds on all labels
t0 = time.time()
a, b = net(100 * seed + 1, d.train_x, d.train_y, full, 1), net(100 * seed + 2, d.train_x, d.train_y, full, 2)
x = d.train_x[torch.randperm(len(d.train_x), generator=torch.Generator().manual_seed(seed))[:200]]
r = {"A": acc(a), "B": acc(b)}
with torch.no_grad():
    both = a(d.test_x).softmax(-1) + b(d.test_x).softmax(-1)
    r["ensemble"] = float((both.argmax(1) == d.test_y).float().mean() * 100)
r["vanilla"] = acc(coin.encode("vanilla", [a, b], [0.5, 0.5], x).model)
for metric in ("weight", "activation"):
    r[f"ot_{metric}"] = acc(fuse([a, b], [0.5, 0.5], metric=metric, x=x).model)
r["ot_weight_sinkhorn0.05"] = acc(fuse([a, b], [0.5, 0.5], solver="sinkhorn", reg=0.05).model)
out["fusion"] = r
print(json.dumps(r), f"{time.time() - t0:.0f}s", flush=True)

# 2) label-split experts fine-tuned from bases of different seeds vs from one base
half = torch.randperm(len(d.train_x), generator=torch.Generator().manual_seed(1000 + seed))[: len(d.train_x) // 2]
base_a = net(100 * seed + 11, d.train_x[half], d.train_y[half], full, 11)
base_b = net(100 * seed + 12, d.train_x[half], d.train_y[half], full, 12)
parts = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
trains = [select_labels(d.train_x, d.train_y, p) for p in parts]
tests = [select_labels(d.test_x, d.test_y, p) for p in parts]
e0 = net(0, *trains[0], tune, 21, start=base_a)
e1_diff = net(0, *trains[1], tune, 22, start=base_b)
e1_same = net(0, *trains[1], tune, 22, start=base_a)
g = torch.Generator().manual_seed(2000 + seed)
pick = [torch.randperm(len(t[0]), generator=g)[:100] for t in trains]
xs = torch.cat([t[0][i] for t, i in zip(trains, pick, strict=False)])
ys = torch.cat([t[1][i] for t, i in zip(trains, pick, strict=False)])
owner = torch.cat([torch.full((100,), k) for k in range(2)])
beta = torch.tensor([0.5, 0.5], dtype=torch.float64)
methods = [("vanilla", {}), ("ot_fusion", {}), ("coin", {}), ("aligned_coin", {}),
           ("aligned_coin", {"metric": "activation"})]
for label, experts in (("different_init", [e0, e1_diff]), ("shared_base", [e0, e1_same])):
    rows = {"expert_acc": [accuracy(m, *t, dev) for m, t in zip(experts, tests, strict=True)]}
    for name, opts in methods:
        res = coin.encode(name, experts, beta, xs, y=ys, owner=owner, **opts)
        nda = coin.evaluate(res.model, experts, beta, tests)
        key = name + ("_act" if opts else "")
        rows[key] = {"nda": [row.nda for row in nda], "mean": sum(row.nda for row in nda) / 2,
                     "s": round(res.seconds, 2), "lam": res.info.get("lam"),
                     "ident": res.info.get("identity_fraction")}
    out[label] = rows
    print(label, json.dumps(rows), flush=True)
json.dump(out, open(f"/tmp/otf/seed{seed}.json", "w"), indent=1)
print(f"total {time.time() - t0:.0f}s")
