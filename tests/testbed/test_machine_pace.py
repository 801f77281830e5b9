"""The machine's pace per served run (scenarios.testbed_run.machine_pace): lone passes found from the servers'
stamps, each against its network's median lone pass over all runs; the summary, the CLI line and the report's
figure. Hand-made task records with the answer worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from reports.testbed import render_testbed
from scenarios.testbed_run import machine_pace, pace_summary, pace_text


def _tasks(rows: list[tuple[int, str, int, int, float, float, float]]) -> pd.DataFrame:
    """rows: (repeat, policy, server, net, start, compute_ms, run zero on the host clock); a NaN compute is a task
    dropped in its queue. Laid out as a served point's task records: point and sweep coordinates first."""
    frame = pd.DataFrame(rows, columns=["repeat", "policy", "server", "net", "start", "compute_ms", "zero"])
    frame.insert(0, "load", 0.3)
    frame.insert(0, "point", 0)
    frame["status"] = np.where(np.isfinite(frame["compute_ms"]), "done", "dropped_queued")
    frame["queue_ms"] = 0.25
    frame["server_recv_clock_ms"] = frame.pop("start") - 0.25
    frame["frontend_zero_clock_ms"] = frame.pop("zero")
    return frame


# run "a"/0 (started second): server 0 runs net 0 for 1 ms at 0, 10 and 20; server 1 runs net 1 for 2 ms at 0.5,
# overlapping the first, so neither of those two is lone; a task dropped in its queue is no pass. Run "a"/1
# (started first): net 0 for 1.5 ms at 0, 5, 9 and net 1 for 2 ms at 20, all lone. Usual lone pass: net 0 the
# median of 1, 1, 1.5, 1.5, 1.5 = 1.5 ms, net 1 2 ms (its one lone pass). Pace: run 0 median(1/1.5, 1/1.5) - 1 =
# -33.3 %; run 1 median(1, 1, 1, 1) - 1 = 0 %.
ROWS = [(0, "a", 0, 0, 0.0, 1.0, 5000.0), (0, "a", 1, 1, 0.5, 2.0, 5000.0), (0, "a", 0, 0, 10.0, 1.0, 5000.0),
        (0, "a", 0, 0, 20.0, 1.0, 5000.0), (0, "a", 1, 1, 30.0, np.nan, 5000.0),
        (1, "a", 0, 0, 0.0, 1.5, 2000.0), (1, "a", 0, 0, 5.0, 1.5, 2000.0), (1, "a", 1, 0, 9.0, 1.5, 2000.0),
        (1, "a", 1, 1, 20.0, 2.0, 2000.0)]


def test_pace_is_each_runs_lone_passes_against_their_networks_usual_pass():
    pace = machine_pace(_tasks(ROWS))
    assert list(pace["repeat"]) == [1, 0]  # in serving order
    assert list(pace.columns[:4]) == ["point", "load", "policy", "repeat"]
    assert list(pace["started_s"]) == pytest.approx([0.0, 3.0])
    assert list(pace["lone_passes"]) == [4, 2]
    assert list(pace["lone_pass_ms"]) == pytest.approx([1.5, 1.0])
    assert list(pace["pace_pct"]) == pytest.approx([0.0, -100.0 / 3.0])


def test_an_overlap_at_the_very_edge_of_a_pass_is_not_lone_and_touching_passes_are():
    # two passes that only touch (one ends as the other starts) are both lone; a pass that starts 1 µs before
    # another ends is not, nor is the other
    touching = machine_pace(_tasks([(0, "a", 0, 0, 0.0, 1.0, 0.0), (0, "a", 1, 0, 1.0, 1.0, 0.0)]))
    assert int(touching["lone_passes"].iloc[0]) == 2
    overlapping = machine_pace(_tasks([(0, "a", 0, 0, 0.0, 1.0, 0.0), (0, "a", 1, 0, 0.999, 1.0, 0.0),
                                       (0, "a", 0, 0, 5.0, 1.0, 0.0)]))
    assert int(overlapping["lone_passes"].iloc[0]) == 1


def test_a_pass_cancelled_in_service_still_ran_beside_the_others():
    # server 1's task was cancelled in service: its pass (0.5-1.5) ran all the same, so server 0's first pass is
    # not lone, and the cancelled pass itself is not either
    tasks = _tasks([(0, "a", 0, 0, 0.0, 1.0, 0.0), (0, "a", 1, 0, 0.5, 1.0, 0.0), (0, "a", 0, 0, 5.0, 1.0, 0.0)])
    tasks.loc[1, "status"] = "dropped_in_service"
    assert int(machine_pace(tasks)["lone_passes"].iloc[0]) == 1


def test_the_summary_counts_slow_runs_and_the_cli_line_names_the_spread():
    pace = pd.DataFrame({"pace_pct": [-4.0, 2.0, 10.5, 39.0, np.nan]})
    summary = pace_summary(pace)
    assert summary == {"runs": 4, "pace_pct_min": -4.0, "pace_pct_max": 39.0, "slow_runs": 2, "slow_pct": 10.0}
    line = pace_text({"machine_pace": summary})
    assert "-4 % to +39 %" in line and "2 of 4 runs over 10 % slower" in line
    assert pace_text({}) == ""


def test_the_report_draws_the_pace_when_the_folder_has_it(tmp_path):
    from tests.testbed.test_fidelity_stats import _testbed_folder, _text

    folder = _testbed_folder(tmp_path / "bed", {"predicted": 1.0})
    plain = _text(render_testbed(folder).read_text())
    assert "Machine pace" not in plain  # a folder written before pace.csv
    pace = machine_pace(_tasks(ROWS))
    pace.to_csv(folder / "pace.csv", index=False)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps(summary | {"machine_pace": pace_summary(pace)}))
    html = _text(render_testbed(folder).read_text())
    assert "<h2>Machine pace during the runs</h2>" in html and "0 of 2 runs were more than 10 % slower" in html
    assert (folder / "figures" / "testbed_pace.png").stat().st_size > 1000
    assert html.count("<img") == plain.count("<img") + 1
