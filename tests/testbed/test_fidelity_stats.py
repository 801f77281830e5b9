"""Fidelity statistics of `coinsim testbed` (bootstrap intervals, verdicts, ranking agreement) and the testbed
report on synthetic folders: fast, no servers started."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from reports.testbed import render_testbed
from scenarios.cli import cli
from scenarios.testbed_run import (
    LIMITS_PCT,
    METRICS,
    VERDICTS,
    bootstrap_metrics,
    fidelity_rows,
    fidelity_summary,
    fidelity_table_text,
    pooled_intervals,
    ranking_frame,
    ranking_rows,
    ranking_summary,
    verdict,
)

ROOT = Path(__file__).resolve().parents[2]
LEGACY_FIDELITY = ROOT / "tests" / "reports" / "data" / "fidelity-before-intervals.csv"
MU, SIGMA = 1.0, 0.5  # lognormal latencies: the true median is exp(MU)


def _repeats(seed: int, n: int, r: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.lognormal(MU, SIGMA, n) for _ in range(r)]


# --- the bootstrap -------------------------------------------------------------------------------------------------

def test_mean_interval_matches_the_two_level_variance_computed_by_hand():
    """The half width of the mean's interval is 1.96 × the standard error a two-level resampling implies, computed
    in closed form from the data: Var = (between-repeat variance of the repeat means + mean within-repeat variance
    / n) / R. Resampling only queries, only repeats, or a wrong percentile pair misses it by 15-40 %."""
    repeats = [r * s for r, s in zip(_repeats(3, 1000), (1.0, 1.08, 0.93), strict=True)]  # repeats that differ
    n, n_rep = 1000, len(repeats)
    means = np.array([r.mean() for r in repeats])
    within = np.array([r.var() for r in repeats])
    se = np.sqrt((means.var() + within.mean() / n) / n_rep)
    iv = pooled_intervals(repeats, np.random.default_rng(0), resamples=3000)["mean"]
    half = (iv["measured_hi_ms"] - iv["measured_lo_ms"]) / 2
    assert half == pytest.approx(1.96 * se, rel=0.08)
    assert iv["half_width_pct"] == pytest.approx(100 * half / np.concatenate(repeats).mean())
    assert iv["measured_pooled_ms"] == pytest.approx(np.concatenate(repeats).mean())
    assert iv["n_measured"] == 3 * n


def test_p50_interval_covers_the_true_median_and_shrinks_as_one_over_sqrt_n():
    true = np.exp(MU)
    covered = [(lambda iv: iv["measured_lo_ms"] <= true <= iv["measured_hi_ms"])(
        pooled_intervals(_repeats(seed, 1000), np.random.default_rng(seed))["p50"]) for seed in range(20)]
    assert sum(covered) >= 18, covered  # nominal 95 %

    def width(n: int) -> float:
        ivs = [pooled_intervals(_repeats(seed, n), np.random.default_rng(seed))["p50"] for seed in range(6)]
        return float(np.mean([iv["measured_hi_ms"] - iv["measured_lo_ms"] for iv in ivs]))

    ratio = width(250) / width(4000)  # 16x the queries: ~4x narrower
    assert 3.0 < ratio < 5.3, ratio


def test_intervals_are_deterministic_under_a_seed_and_change_with_it():
    repeats = _repeats(1, 500)
    a = pooled_intervals(repeats, np.random.default_rng(42))
    b = pooled_intervals(repeats, np.random.default_rng(42))
    c = pooled_intervals(repeats, np.random.default_rng(43))
    assert a == b
    assert a["p99"]["measured_lo_ms"] != c["p99"]["measured_lo_ms"]


def test_repeats_of_unequal_length_weigh_by_their_own_queries():
    """A repeat with one query fewer takes the padded path; padding must never leak into a sample."""
    equal = _repeats(5, 1200)
    unequal = [equal[0], equal[1], equal[2][:-1]]
    a = pooled_intervals(equal, np.random.default_rng(0), resamples=1000)
    b = pooled_intervals(unequal, np.random.default_rng(0), resamples=1000)
    assert b["mean"]["n_measured"] == 3 * 1200 - 1
    for m in METRICS:
        assert b[m]["measured_lo_ms"] <= b[m]["measured_pooled_ms"] <= b[m]["measured_hi_ms"], m
        assert b[m]["half_width_pct"] == pytest.approx(a[m]["half_width_pct"], rel=0.25), m
    # exactly: repeat A 1000 queries of 1 ms, repeat B 10 of 100 ms. A bootstrap sample is A+A, B+B or A+B, and
    # A+B pools 1010 queries (mean 1990/1010 ms), not 2000 — B weighs by its own queries
    means = bootstrap_metrics([np.ones(1000), np.full(10, 100.0)], np.random.default_rng(0), resamples=200)[:, 0]
    mixed = (1000 + 10 * 100) / 1010
    assert np.isclose(means[:, None], [1.0, mixed, 100.0]).any(axis=1).all()
    assert 60 < np.isclose(means, mixed).sum() < 140


def _frames(seed: int, policies: dict[str, float], n: int = 600, repeats: int = 3,
            scale: tuple[float, ...] = (1.0, 1.0, 1.0)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat([pd.DataFrame({"repeat": k, "policy": p, "query_id": np.arange(n),
                                    "warmup": np.arange(n) < n // 10,
                                    "latency_ms": f * scale[k] * rng.lognormal(MU, SIGMA, n)})
                      for k in range(repeats) for p, f in policies.items()], ignore_index=True)


def test_fidelity_rows_judge_against_the_pooled_value_and_say_why():
    """Repeats at different speeds: the median of repeats and the pooled value differ, and the error is against
    the pooled one; every row's verdict and limit are the ones its own numbers imply."""
    measured = _frames(0, {"uncoded": 1.0}, scale=(1.0, 1.5, 1.6))
    simulated = _frames(1, {"uncoded": 1.2}, repeats=1)
    rows = pd.DataFrame(fidelity_rows(0, {"load": 0.1}, "predicted", simulated, measured, seed=3))
    live = measured[~measured["warmup"]]
    for row in rows.to_dict("records"):
        m = row["metric"]
        pooled = live["latency_ms"].mean() if m == "mean" else np.percentile(live["latency_ms"], METRICS[m])
        assert row["measured_pooled_ms"] == pytest.approx(pooled)
        assert row["rel_error_pct"] == pytest.approx(100 * (row["simulated_ms"] / pooled - 1))
        assert row["measured_median_of_repeats_ms"] != pytest.approx(pooled, rel=1e-3)
        assert row["limit_pct"] == LIMITS_PCT[m]
        assert row["verdict"] == verdict(row["rel_error_pct"], row["limit_pct"], row["simulated_ms"],
                                         row["measured_lo_ms"], row["measured_hi_ms"], row["half_width_pct"])
    again = pd.DataFrame(fidelity_rows(0, {"load": 0.1}, "isolated", simulated, measured, seed=3))
    # the same interval whichever variant is judged
    pd.testing.assert_series_equal(rows["measured_lo_ms"], again["measured_lo_ms"])


# --- verdicts ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rel", "limit", "sim", "lo", "hi", "half", "expected"), [
    (14.0, 15.0, 11.4, 9.0, 11.0, 5.0, "within the limit"),          # outside the interval, inside the limit
    (-15.0, 15.0, 8.5, 9.5, 10.5, 5.0, "within the limit"),          # the limit itself counts
    (-22.0, 15.0, 7.8, 7.5, 12.0, 18.0, "inside the measured interval"),
    (-22.0, 15.0, 7.8, 7.5, 12.0, 22.0, "off"),                      # interval too wide to excuse anything
    (-22.0, 15.0, 7.8, 8.0, 12.0, 18.0, "off"),                      # just below the interval
    (45.0, 40.0, 14.5, 8.0, 14.0, 15.0, "off"),                      # just above it
])
def test_verdict(rel, limit, sim, lo, hi, half, expected):
    assert verdict(rel, limit, sim, lo, hi, half) == expected


# --- ranking -------------------------------------------------------------------------------------------------------

def _cell(policy: str, service: str, meas: float, lo: float, hi: float, sim: float, metric: str = "p99",
          point: int = 0) -> dict:
    return {"point": point, "load": 0.1 * (point + 1), "service": service, "policy": policy, "metric": metric,
            "simulated_ms": sim, "measured_pooled_ms": meas, "measured_lo_ms": lo, "measured_hi_ms": hi,
            "rel_error_pct": 100 * (sim / meas - 1), "verdict": "off"}


def _ranking_table() -> pd.DataFrame:
    cells = [
        _cell("A", "model", 10, 9, 11, 10), _cell("B", "model", 20, 19, 21, 18),
        _cell("C", "model", 30, 29, 31, 15),    # measured slowest, simulated faster than B
        _cell("D", "model", 10.5, 9.5, 11.5, 40),  # overlaps A (ignored); below B and C, simulated slowest
        _cell("A", "predicted", 10, 9, 11, 10), _cell("B", "predicted", 20, 19, 21, 20),
        _cell("C", "predicted", 30, 29, 31, 30), _cell("D", "predicted", 10.5, 9.5, 11.5, 5),
        # another metric, ordered the other way round: must not leak into the p99 ranking
        _cell("A", "model", 10, 9, 11, 50, "p50"), _cell("B", "model", 20, 19, 21, 1, "p50"),
    ]
    return pd.DataFrame(cells)


def test_ranking_counts_only_pairs_the_testbed_tells_apart():
    rows = {r["service"]: r for r in ranking_rows(_ranking_table())}
    model = rows["model"]
    assert (model["point"], model["load"], model["metric"]) == (0, 0.1, "p99")
    assert model["n_pairs_distinguishable"] == 5  # every pair but A-D
    assert model["n_agree"] == 2                  # A<B, A<C
    named = model["disagreeing"].split("; ")
    assert len(named) == 3 and {s.split(" measured")[0] for s in named} == {"B < C", "D < B", "D < C"}
    assert rows["predicted"]["n_pairs_distinguishable"] == 5 and rows["predicted"]["n_agree"] == 5
    assert rows["predicted"]["disagreeing"] == ""
    assert ranking_summary(ranking_frame(_ranking_table())) == {
        "model": {"metric": "p99", "agree": 2, "distinguishable": 5},
        "predicted": {"metric": "p99", "agree": 5, "distinguishable": 5}}


def test_ranking_of_a_table_without_intervals_is_empty():
    old = _ranking_table().drop(columns=["measured_lo_ms", "measured_hi_ms"])
    assert ranking_rows(old) == []
    assert list(ranking_frame(old).columns)[:2] == ["point", "service"] and ranking_summary(ranking_frame(old)) == {}


def test_cli_table_puts_the_headline_first_and_marks_verdicts():
    table = pd.DataFrame([
        {**_cell("A", service, 10, 9, 11, sim), "metric": m, "verdict": v}
        for service, sim, v in (("isolated", 5, "off"), ("model", 10.5, "within the limit"),
                                ("predicted", 12.0, "inside the measured interval")) for m in METRICS])
    text = fidelity_table_text(table, ranking_frame(_ranking_table()))
    body = [line for line in text.splitlines() if line.startswith(("isolated", "model", "predicted"))]
    assert [line.split()[0] for line in body] == ["predicted", "isolated", "model"]
    assert "+20.0 ~" in body[0] and "-50.0 ✗" in body[1] and "+5.0 ✓" in body[2]
    assert "predicted (headline) 5/5" in text and "model 2/5" in text


def test_fidelity_summary_counts_every_verdict():
    table = pd.DataFrame([{**_cell(p, "predicted", 10, 9, 11, 10), "metric": m, "verdict": v}
                          for p, v in (("A", VERDICTS[0]), ("B", VERDICTS[2]), ("C", VERDICTS[2]))
                          for m in METRICS])
    table.loc[table["policy"] == "C", "rel_error_pct"] = -61.0
    out = fidelity_summary(table)["predicted"]
    assert out["verdicts"]["p99"] == {VERDICTS[0]: 1, VERDICTS[1]: 0, VERDICTS[2]: 2}
    assert out["worst_abs_rel_error_pct"]["p999"] == 61.0


# --- the report ----------------------------------------------------------------------------------------------------

POLICIES = {"uncoded": 1.3, "hedged": 1.0, "coded": 1.1}


def _testbed_folder(root: Path, services: dict[str, float], fidelity: pd.DataFrame | None = None,
                    points: tuple[dict, ...] = ({"load": 0.1}, {"load": 0.2}),
                    policies: dict[str, float] = POLICIES) -> Path:
    """A testbed result folder as run_testbed writes it, from synthetic measured and simulated latencies at
    `points` (sweep coordinates); each simulator variant a fixed factor off the truth. With `fidelity` given (an
    old folder's), that file is written instead of one computed here."""
    root.mkdir(parents=True)
    measured, simulated, rows = [], [], []
    for point, coords in enumerate(points):
        real = _frames(10 + point, policies)
        for position, (column, value) in enumerate(coords.items()):
            real.insert(position, column, value)
        real.insert(0, "point", point)
        real["correct"] = real["correct_sim_join"] = True
        measured.append(real)
        for k, (service, factor) in enumerate(services.items()):
            sim = _frames(20 + 10 * point + k, {p: f * factor for p, f in policies.items()}, repeats=1)
            sim.insert(0, "service", service)
            sim.insert(0, "point", point)
            simulated.append(sim)
            rows += fidelity_rows(point, coords, service, sim, real, seed=0)
    table = pd.DataFrame(rows) if fidelity is None else fidelity
    ranking = ranking_frame(table)
    summary = {"scenario": "synthetic-bed", "kind": "testbed", "seed": 0, "repeats": 3, "straggle": "stall",
               "device": "cpu", "cpu_count": 2, "load_average": [0.5, 0.4, 0.3],
               "service_ms": {"low": {"isolated_mean_ms": 0.8, "in_situ_mean_ms": 1.5, "in_situ_alone_mean_ms": 1.3,
                                      "in_situ_cycle_mean_ms": 1.6}},
               "overheads": {}, "accuracy": {},
               "worst_abs_rel_error_pct": {s: {m: float(g.loc[g["metric"] == m, "rel_error_pct"].abs().max())
                                               for m in METRICS} for s, g in table.groupby("service")}}
    if fidelity is None:
        summary |= {"fidelity_summary": fidelity_summary(table), "ranking": ranking_summary(ranking)}
        ranking.to_csv(root / "ranking.csv", index=False)
    (root / "summary.json").write_text(json.dumps(summary))
    pd.concat(measured, ignore_index=True).to_parquet(root / "testbed.parquet", index=False)
    pd.concat(simulated, ignore_index=True).to_parquet(root / "simulated.parquet", index=False)
    table.to_csv(root / "fidelity.csv", index=False, float_format="%.6g")
    return root


def _text(html: str) -> str:
    return " ".join(html.split())


def test_report_headlines_the_predicted_variant(tmp_path):
    folder = _testbed_folder(tmp_path / "bed", {"isolated": 0.5, "model": 1.02, "predicted": 1.3})
    html = _text(render_testbed(folder).read_text())
    first = html[: html.index("<h2>")]  # the first screen, before any section
    assert "Headline variant: <b>predicted</b> (sim: predicted from calibration)" in first
    assert "nothing from this run goes into it" in first
    fidelity = pd.read_csv(folder / "fidelity.csv")
    mine = fidelity[(fidelity["service"] == "predicted") & (fidelity["metric"] == "p50")]
    counts = [int((mine["verdict"] == v).sum()) for v in VERDICTS]
    assert counts[2] > 0  # 30 % slow: the p50 cells are off
    assert f"<td>p50</td><td>15 %</td> <td>{counts[0]}</td><td>{counts[1]}</td><td>{counts[2]}</td>" in first
    ranking = pd.read_csv(folder / "ranking.csv")
    mine = ranking[ranking["service"] == "predicted"]
    assert (f"<b>{mine['n_agree'].sum()} of {mine['n_pairs_distinguishable'].sum()}</b> policy pairs" in first)
    # the per-point table: the measured pooled value with its interval, the headline's error and mark
    row = fidelity[(fidelity["service"] == "predicted") & (fidelity["metric"] == "p99")
                   & (fidelity["policy"] == "hedged") & (fidelity["point"] == 1)].iloc[0]
    assert (f"{row['measured_pooled_ms']:.2f} [{row['measured_lo_ms']:.2f}, {row['measured_hi_ms']:.2f}] · "
            f"{row['simulated_ms']:.2f} · {row['rel_error_pct']:+.1f} %") in html
    assert "model (in-sample)" in html and "in-sample diagnostics" in html
    assert html.count("<img") == 2


def test_report_without_predicted_headlines_the_in_sample_model(tmp_path):
    folder = _testbed_folder(tmp_path / "bed", {"isolated": 0.5, "in_situ": 0.9, "model": 1.02})
    html = _text(render_testbed(folder).read_text())
    first = html[: html.index("<h2>")]
    assert "Headline variant: <b>model</b>" in first and "It is <b>in-sample</b>" in first
    assert "predicted" not in html
    assert "<td>in_situ (in-sample)</td>" in html and "<td>model (in-sample)</td>" not in html  # model heads
    assert "<h3>model (in-sample) vs measured</h3>" in html


def test_an_old_fidelity_csv_still_renders(tmp_path):
    """A fidelity.csv written before the intervals (tests/reports/data/fidelity-before-intervals.csv, once
    docs/testbed_fidelity.csv: measured_ms = median over repeats, no verdicts), under `coinsim report`: the
    measured values it has, no verdicts, no ranking."""
    old = pd.read_csv(LEGACY_FIDELITY)
    assert "measured_pooled_ms" not in old and "verdict" not in old
    points = tuple(g.iloc[0][["load", "straggler_p"]].to_dict() for _, g in old.groupby("point"))
    folder = _testbed_folder(tmp_path / "old", {"isolated": 0.5, "model": 1.0}, fidelity=old, points=points,
                             policies=dict.fromkeys(old["policy"], 1.0))
    assert not (folder / "ranking.csv").exists()
    shutil.copy(LEGACY_FIDELITY, folder / "fidelity.csv")
    result = CliRunner().invoke(cli, ["report", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    html = _text((folder / "report.html").read_text())
    assert "Headline variant: <b>model</b>" in html and "written before measured intervals" in html
    assert "Ranking at" not in html and "[95 % interval]" not in html
    row = old[(old["service"] == "model") & (old["metric"] == "p99") & (old["policy"] == "backup")
              & (old["point"] == 3)].iloc[0]
    assert (f"{row['measured_ms']:.2f} · {row['simulated_ms']:.2f} · {row['rel_error_pct']:+.1f} %, "
            f"±{row['repeat_spread_pct']:.0f} % spread") in html
    assert "Point 3: load = 0.2, straggler_p = 0.05" in html


def test_figures_a_run_did_not_have_render_as_a_dash(tmp_path):
    """A network that never ran alone (no in-situ lone passes) and a host figure from an older folder: the report
    still renders, with a dash in their cells; the host's other load is shown where the run recorded it."""
    folder = _testbed_folder(tmp_path / "bed", {"isolated": 0.5, "predicted": 1.1})
    summary = json.loads((folder / "summary.json").read_text())
    summary["service_ms"]["low"]["in_situ_alone_mean_ms"] = None
    base = {"dispatch_lateness_ms_median": 0.1, "dispatch_lateness_ms_p99": 0.5, "transport_ms_median": 0.4,
            "transport_ms_p99": 2.0, "frontend_cores_median": 0.2, "shared_cores": 1.8,
            "compute_ms_by_overlap": {"0": 1.0}}
    summary["overheads"] = {"0": base, "1": base | {"other_cores_median": 0.31, "other_cores_max": 0.77}}
    (folder / "summary.json").write_text(json.dumps(summary))
    html = _text(render_testbed(folder).read_text())
    assert "<td>0.800</td> <td>1.500</td> <td>+87.5 %</td> <td>—</td><td>1.600</td>" in html  # alone: none
    assert "<td>— / —</td>" in html and "<td>0.31 / 0.77</td>" in html
