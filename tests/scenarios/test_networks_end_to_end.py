"""Real networks end to end: r = 2 coded models on the tiny zoo, the join checked query by query from the saved
outputs alone, and the same run with its points computed on local worker processes and on a Dask worker (the
network outputs shipped to them) giving the same queries.
"""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from scenarios.runner import run_scenario
from scenarios.schema import scenario_from_dict
from tests.conftest import tiny_zoo_table


def _raw(cache_dir, **sweep) -> dict:
    return {
        "name": "tiny-r2",
        "seed": 0,
        "device": "cpu",
        "models": tiny_zoo_table(cache_dir),
        "coding": {"method": "coin", "samples": 50},
        "profile": {"warmup": 2, "samples": 30, "live_check_queries": 0},
        "sim": {
            "r": 2,
            "n_queries": 1500,
            "policies": ["uncoded", "coded"],
            "traffic": {"kind": "poisson", "load": 0.2, "ensemble_rate_per_ms": 0.0},  # 65 % busy at p = 0.25
            "stragglers": {"p": 0.2, "slowdown": 10.0},
        },
        "sweep": {"axis": "stragglers.p", "values": [0.1, 0.25], **sweep},
    }


def _run(raw: dict, out) -> tuple:
    folder = run_scenario(scenario_from_dict(raw), raw, out, quiet=True)
    return folder, pd.read_parquet(folder / "queries.parquet")


def _decode(experts: np.ndarray, coded: np.ndarray, matrix: np.ndarray, present: list[int], coded_back: list[int],
            index: int) -> np.ndarray:
    """Outputs (N, K) of every expert at one row: the present ones as computed, the others solved from the coded
    outputs that came back (pseudo-inverse of the coding submatrix)."""
    n = experts.shape[0]
    missing = [j for j in range(n) if j not in present]
    out = experts[:, index].copy()
    if missing:
        rhs = coded[coded_back, index] - matrix[np.ix_(coded_back, present)] @ experts[present, index]
        out[missing] = np.linalg.pinv(matrix[np.ix_(coded_back, missing)]) @ rhs
    return out


@pytest.fixture(scope="module")
def r2_run(tiny_cache, tmp_path_factory):
    return _run(_raw(tiny_cache), tmp_path_factory.mktemp("r2"))


def test_r2_every_query_is_joined_with_the_coded_servers_that_answered(r2_run):
    folder, queries = r2_run
    summary = json.loads((folder / "summary.json").read_text())
    saved = np.load(folder / "outputs.npz", allow_pickle=False)
    labels, offsets, experts = saved["labels"], saved["offsets"], saved["expert_outputs"]
    coded, matrix = saved["coded_outputs"], saved["coding_matrix"]
    n = experts.shape[0]
    assert matrix.shape == (2, n) and coded.shape[0] == 2 and summary["coding_matrix"] == matrix.tolist()
    used_by_coded_model = {0: 0, 1: 0}
    swapped_differs = 0
    for row in queries.itertuples():
        servers = [int(s) for s in row.servers_used.split(",")]
        index = offsets[row.model] + row.sample_id
        present = [s for s in servers if s < n] if row.answered_by == "decoded" else list(range(n))
        back = sorted(s - n for s in servers if s >= n)
        outs = _decode(experts, coded, matrix, present, back, index)
        assert (outs[row.model].argmax() == labels[index]) == row.correct, row
        if row.answered_by == "decoded":
            assert row.policy == "coded" and row.model not in present and len(back) >= 1
            for k in back:
                used_by_coded_model[k] += 1
            other = _decode(experts, coded[::-1], matrix[::-1], present, back, index)  # the other coded model
            swapped_differs += (other[row.model].argmax() == labels[index]) != row.correct
    assert min(used_by_coded_model.values()) > 20, used_by_coded_model
    if swapped_differs == 0:  # which queries a run decodes follows measured timings: on those, the two coded models
        # may happen to agree; the check has power only if they disagree somewhere on the saved outputs
        for i in range(n):
            for k in range(2):
                for index in range(offsets[i], offsets[i + 1]):
                    present = [j for j in range(n) if j != i]
                    mine = _decode(experts, coded, matrix, present, [k], index)[i].argmax() == labels[index]
                    other = _decode(experts, coded[::-1], matrix[::-1], present, [k], index)[i].argmax() == labels[
                        index]
                    swapped_differs += mine != other
    assert swapped_differs > 0, "the outputs cannot tell the two coded models apart; the check would be vacuous"
    # the table of decodes with every set of up to r missing experts, all r coded outputs back
    table = {(d["missing"], d["expert"]): d for d in summary["multi_decode"]}
    names = [e["name"] for e in summary["experts"]]
    assert len(table) == 2 * 1 + 1 * 2  # {low}, {high}, {low, high}
    for size in (1, 2):
        for missing in combinations(range(n), size):
            present = [j for j in range(n) if j not in missing]
            for i in missing:
                part = np.arange(offsets[i], offsets[i + 1])
                dec = np.stack([_decode(experts, coded, matrix, present, [0, 1], s)[i] for s in part])
                row = table[(",".join(names[m] for m in missing), names[i])]
                assert row["decoded_acc_pct"] == pytest.approx(100 * (dec.argmax(-1) == labels[part]).mean())


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_points_on_worker_processes_give_the_same_queries(r2_run, tiny_cache, tmp_path, executor):
    """The answer tables (network outputs) and measured service times are shipped to two local processes, or
    scattered to a one-worker Dask LocalCluster; the latency profile is replayed so only the executor differs."""
    folder, queries = r2_run
    raw = _raw(tiny_cache, executor=executor, workers=2 if executor == "local" else 1)
    raw["profile"] = {"replay": str(folder), "live_check_queries": 0}
    _, again = _run(raw, tmp_path)
    assert again["correct"].any() and (again["answered_by"] == "decoded").any()
    pd.testing.assert_frame_equal(queries, again)


def test_r2_run_predicts_served_latency_from_the_calibration(r2_run):
    """The run says which latency model produced its numbers, keeps the calibration it used, and its arrivals
    come at the load's fraction of the served capacity worked out from profile.csv and the hand calibration."""
    import pandas as pd

    from tests import calibration_testutil as cu

    folder, queries = r2_run
    summary = json.loads((folder / "summary.json").read_text())
    model = summary["latency_model"]
    assert model["name"] == "served" and model["calibration"]["served_slope"] == cu.SLOPE
    saved = json.loads((folder / "calibration.json").read_text())
    assert saved["serving"]["overhead_ms"] == cu.OVERHEAD_MS
    # capacity: min(servers, cores) with every pass at 0.2 + 1.5 x its profiled time
    profile = pd.read_csv(folder / "profile.csv")
    experts = [e["name"] for e in summary["experts"]]
    means = [float((cu.OVERHEAD_MS + cu.SLOPE * profile.loc[profile["model"] == name, "ms"]).mean())
             for name in experts]
    cores = saved["machine"]["cpu_count"] - cu.BASE_CORES
    capacity = min(sum(1 / m for m in means), cores / (np.mean(means) + cu.CPU_MS_PER_TASK))
    scenario = __import__("tomllib").loads((folder / "scenario.toml").read_text())
    load = scenario["sim"]["traffic"]["load"]
    one = queries[(queries["point"] == 0) & (queries["policy"] == queries["policy"].iloc[0])]
    arrivals = np.sort(one["arrival_ms"].to_numpy())
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    # a Poisson count of n arrivals: the rate estimate's relative standard error is 1 / sqrt(n)
    assert abs(rate / (load * capacity) - 1) < 4 / np.sqrt(len(arrivals))
