"""summary.json's checks name the file and the place, and refuse malformed points (mutants of reports/load.py
that survived the other report tests)."""

from __future__ import annotations

import re

import pytest

from reports.load import ReportError, check_summary, fmt_value

POLICY = {"mean_ms": 1.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "p999_ms": 4.0}


def _summary(**extra) -> dict:
    return {"scenario": "s", "schema_version": 2, "policies": {"uncoded": POLICY}, **extra}


@pytest.mark.parametrize("points, needle", [
    ("many", "'points' must be a list of objects"),
    ([{"policies": "x"}], "points[0].policies must be an object"),
    ([{"policies": {"uncoded": POLICY}, "point": "first"}], "points[0].point must be an integer"),
])
def test_malformed_points_are_refused_naming_the_file(points, needle):
    with pytest.raises(ReportError) as error:
        check_summary(_summary(points=points), where="/r/summary.json")
    assert str(error.value).startswith("reports: /r/summary.json: ") and needle in str(error.value)


def test_points_keep_their_index_and_default_to_their_place():
    out = check_summary(_summary(points=[{"policies": {"uncoded": POLICY}}, {"point": 7, "policies": {}}]))
    assert [p["point"] for p in out["points"]] == [0, 7]


def test_axis_values_read_as_written():
    assert (fmt_value(0.05), fmt_value(2), fmt_value("poisson"), fmt_value(1e-7)) == ("0.05", "2", "poisson", "1e-07")


def test_the_report_says_what_the_policies_run_on_only_when_it_is_not_one_server_per_expert():
    from reports.html import _deployment_sentence

    one = {"instances": [1, 1], "balancer": "jsq", "groups": [[0, 1]], "extra_servers": 1, "servers": 3}
    assert str(_deployment_sentence(one, [])) == "" and str(_deployment_sentence(None, [])) == ""
    fleet = {"instances": [2, 1, 1, 1], "balancer": "round_robin", "groups": [[0, 1], [2, 3]], "extra_servers": 2,
             "servers": 7}
    assert str(_deployment_sentence(fleet, ["straggler_p"])) == (
        " Every policy runs on 7 servers: 5 expert instances (2 / 1 / 1 / 1 per expert, balanced by round_robin), "
        "coded in 2 groups and 2 extra.")
    # a sweep over the deployment: the sentence is the headline point's
    assert str(_deployment_sentence(fleet, ["deployment_instances"])).startswith(
        " At the headline point every policy runs on 7 servers")


def test_a_coding_table_that_is_not_per_expert_is_refused_naming_the_file():
    with pytest.raises(ReportError, match=r"^reports: /r/summary\.json: coding\.coin\.nda_pct must be an object"):
        check_summary(_summary(coding={"coin": {"nda_pct": 97.0}}), where="/r/summary.json")


def test_a_table_without_its_columns_is_refused_naming_the_file(tmp_path):
    import pandas as pd

    from reports.load import _read_table

    path = tmp_path / "sweep.parquet"
    pd.DataFrame({"policy": ["uncoded"]}).to_parquet(path)
    with pytest.raises(ReportError, match=rf"^reports: {re.escape(str(path))}: missing column\(s\) p99_ms"):
        _read_table(path, ("policy", "p99_ms"))
    assert _read_table(tmp_path / "absent.parquet", ("policy",)) is None


def test_the_headline_notes_where_hedge_delays_started_and_ended():
    from reports.html import hedge_delay_note

    note = hedge_delay_note({"uncoded": {"p99_ms": 3.0},
                             "hedged": {"hedge_delay_start_ms": 2.26, "hedge_delay_end_ms": 3.07},
                             "backup": {"hedge_delay_start_ms": 12.3, "hedge_delay_end_ms": None}})
    assert "hedged 2.26 → 3.07 ms" in note and "backup 12.3 → — ms" in note and "uncoded" not in note
    assert hedge_delay_note({"uncoded": {"p99_ms": 3.0}}) is None
