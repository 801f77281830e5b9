"""Figure builders on plain tables: they return Figures with the right axes, scales and series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from reports_testutil import AXIS, POLICIES, write_result

import reports
from reports.load import load_result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder, _ = write_result(tmp_path_factory.mktemp("fig") / "run", n=600)
    return load_result(folder)


def _labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_policy_colours_are_stable_and_distinct():
    a = reports.policy_colors(["coded", "uncoded", "replication", "hedged", "mine", "coded-2"])
    b = reports.policy_colors(["uncoded", "coded"])
    assert a["uncoded"] == b["uncoded"] and a["coded"] == b["coded"]  # "uncoded" is not mistaken for coded
    assert len(set(a.values())) == len(a)
    by_kind = reports.policy_colors(["hedged", "fast"], {"hedged": "hedged", "fast": "coded"})
    assert by_kind["fast"] == a["coded"] and by_kind["hedged"] == a["hedged"]
    assert reports.policy_colors(["hedged", "coded-hedged"])["coded-hedged"] == a["coded"]


def test_ccdf_has_log_y_one_line_per_policy_and_tail_reference_lines(data):
    fig = reports.latency_ccdf(data.queries, list(POLICIES), point=4)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert _labels(ax) == list(POLICIES)
    assert "latency (ms)" in ax.get_xlabel()
    # 540 measured queries per policy: p99 is estimable, p99.9 is not, so only the p99 guide is drawn
    assert {t.get_text() for t in ax.texts} == {"p99"}
    many = pd.DataFrame({"policy": "coded", "latency_ms": np.random.default_rng(0).exponential(5.0, 2000)})
    assert {t.get_text() for t in reports.latency_ccdf(many).axes[0].texts} == {"p99", "p99.9"}


def test_ccdf_colours_follow_the_shared_map(data):
    colors = reports.policy_colors(list(POLICIES))
    fig = reports.latency_ccdf(data.queries, list(POLICIES), colors, point=4)
    lines = {ln.get_label(): ln.get_color() for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")}
    assert lines == colors


def test_ccdf_survival_ends_at_the_largest_latencies(data):
    fig = reports.latency_ccdf(data.queries, ["uncoded"], point=4)
    line = fig.axes[0].get_lines()[0]
    q = data.queries
    lat = np.sort(q[(q.policy == "uncoded") & (q.point == 4) & ~q.warmup].latency_ms.to_numpy())
    assert line.get_xdata()[-1] == pytest.approx(lat[-2])  # last point with P > 0
    assert line.get_ydata()[-1] == pytest.approx(1 / len(lat))


def test_tail_vs_sweep_has_two_panels_with_ci_bands(data):
    fig = reports.tail_vs_sweep(data.sweep, AXIS, list(POLICIES))
    assert len(fig.axes) == 2
    for ax, title in zip(fig.axes, ("p99", "p99.9"), strict=True):
        assert ax.get_ylabel() == f"{title} latency (ms)"
        assert len(ax.collections) == len(POLICIES)  # one CI band per policy
        assert ax.get_xlabel() == "straggler probability"
    x = fig.axes[0].get_lines()[0].get_xdata()
    assert list(x) == sorted(data.sweep[AXIS].unique())


def test_metric_vs_sweep_handles_categorical_axis(data):
    sw = data.sweep.copy()
    sw["variant"] = sw["point"].map(lambda p: f"v{p}")
    fig = reports.accuracy_vs_sweep(sw, "variant", list(POLICIES))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"v{p}" for p in range(5)]
    y = ax.get_lines()[0].get_ydata()
    uncoded = sw[sw.policy == POLICIES[0]].sort_values("point")["accuracy_pct"].to_numpy()
    assert y.tolist() == pytest.approx(uncoded.tolist())  # plotted as stored: percent, never rescaled


def test_answer_fractions_from_queries_sum_to_100_and_match_the_sweep(data):
    from_queries = reports.answer_fractions(data.queries, None)  # the report reads the headline point's rows
    assert set(from_queries["point"]) == {data.headline_point}
    kinds = ["direct_pct", "replica_pct", "hedge_pct", "decoded_pct"]
    assert np.allclose(from_queries[kinds].sum(axis=1), 100.0)
    for kind in kinds:
        merged = from_queries.merge(data.sweep[["point", "policy", kind]], on=["point", "policy"],
                                    suffixes=("", "_sweep"))
        assert len(merged) == len(POLICIES) and np.allclose(merged[kind], merged[f"{kind}_sweep"])
    frac = reports.answer_fractions(data.queries, data.sweep)  # every point: the sweep's columns
    assert sorted(set(frac["point"])) == sorted(set(data.sweep["point"]))
    fig = reports.answer_mix_vs_sweep(frac, data.sweep, AXIS, list(POLICIES))
    assert [ax.get_title() for ax in fig.axes] == ["Decoded answers", "Replica answers", "Hedge answers"]
    decoded = fig.axes[0].get_lines()[0]
    assert decoded.get_label() == "coded"
    coded = data.sweep[data.sweep.policy == "coded"].sort_values(AXIS)
    assert decoded.get_ydata().tolist() == pytest.approx(coded["decoded_pct"].tolist())


def test_answer_fractions_fall_back_to_the_sweep_columns(data):
    frac = reports.answer_fractions(None, data.sweep)
    assert list(frac.columns) == ["point", "policy", "direct_pct", "replica_pct", "hedge_pct", "decoded_pct"]
    only_decoded = reports.answer_fractions(None, data.sweep.drop(columns=["direct_pct", "replica_pct", "hedge_pct"]))
    fig = reports.answer_mix_vs_sweep(only_decoded, data.sweep, AXIS)
    assert len(fig.axes) == 1


def test_nda_bars_one_group_per_expert_plus_average_with_the_reference_at_100():
    table = pd.DataFrame({"method": ["coin", "coin", "vanilla", "vanilla"], "expert": ["a", "b", "a", "b"],
                          "nda_pct": [90.0, 80.0, 40.0, 50.0]})
    fig = reports.nda_bars(table, {"coin": 85.0})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "average"]
    heights = [round(p.get_height(), 3) for p in ax.patches]
    assert heights == [90.0, 80.0, 85.0, 40.0, 50.0, 45.0]  # vanilla's average computed from its experts
    reference = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(reference) == 1 and set(reference[0].get_ydata()) == {100.0}  # NDA is in percent


def test_traffic_over_time_counts_queries_in_system(data):
    q = data.queries[data.queries.point == data.headline_point]  # the report reads that point's queries
    assert len(q)
    fig = reports.traffic_over_time(q, policies=["uncoded"])
    rate_ax, queue_ax = fig.axes
    assert rate_ax.get_ylabel() == "arrivals (queries/s)"
    backlog = queue_ax.get_lines()[0].get_ydata()
    assert backlog.min() >= 0
    # Little's law over the whole window: time-average in system = total time in system / window length.
    rows = q[q.policy == "uncoded"]
    edges = np.linspace(q.arrival_ms.min(), q.finish_ms.max(), 61)  # the figure's window spans all policies
    expected = rows.latency_ms.sum() / (edges[-1] - edges[0])
    assert backlog.mean() == pytest.approx(expected, rel=1e-9)


def test_time_average_in_system_exact_on_a_tiny_trace():
    # query A in [0, 2), query B in [1, 4): N(t) = 1, 2, 1, 1 on the unit bins
    got = reports.time_average_in_system(np.array([0.0, 1.0]), np.array([2.0, 4.0]), np.array([0.0, 1, 2, 3, 4]))
    assert got.tolist() == [1.0, 2.0, 1.0, 1.0]
    half = reports.time_average_in_system(np.array([0.5]), np.array([1.0]), np.array([0.0, 1.0, 2.0]))
    assert half.tolist() == [0.5, 0.0]


def test_accuracy_axis_does_not_zoom_into_noise(data):
    sw = data.sweep.copy()
    sw["accuracy_pct"] = 98.0 + 1e-3 * sw["point"]  # a 0.004-point wobble
    ax = reports.accuracy_vs_sweep(sw, AXIS).axes[0]
    lo, hi = ax.get_ylim()
    assert hi - lo >= 1.0 and hi <= 100.0  # at least a point of accuracy: the wobble is <0.5 % of the height
    assert lo < 98.0 < hi


def test_a_sweep_axis_spanning_16x_is_drawn_on_a_log_scale():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reports.figures import _finish_sweep_axis

    def scale(xs):
        fig, ax = plt.subplots()
        ax.plot(xs, [1.0] * len(xs))
        _finish_sweep_axis(ax, "deployment_instances", None)
        out = ax.get_xscale(), [t.get_text() for t in ax.get_xticklabels()]
        plt.close(fig)
        return out

    assert scale([2, 4, 8, 16, 32, 64, 128]) == ("log", ["2", "4", "8", "16", "32", "64", "128"])
    assert scale([0.0, 0.02, 0.1])[0] == "linear"  # a zero cannot go on a log axis
    assert scale([1, 2, 4, 8])[0] == "linear"  # under 16x: linear reads better


def test_a_ccdf_of_millions_is_drawn_from_a_few_thousand_exact_steps():
    """Every plotted step is one of the sorted latencies at its exact survival; the tail is drawn query by query."""
    lat = np.random.default_rng(1).lognormal(0.0, 1.0, 1_000_000)
    fig = reports.latency_ccdf(pd.DataFrame({"policy": "coded", "latency_ms": lat}))
    line = fig.axes[0].get_lines()[0]
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert len(x) <= 3 * reports.figures.CCDF_STEPS
    ranks = np.searchsorted(np.sort(lat), x)  # position of each drawn latency among all of them
    assert np.allclose(y, 1.0 - (ranks + 1) / len(lat))
    assert (np.diff(ranks[-(reports.figures.CCDF_STEPS - 1):]) == 1).all()  # the largest 2,000: every query
    assert x[0] == lat.min() and y[-1] == pytest.approx(1e-6)
