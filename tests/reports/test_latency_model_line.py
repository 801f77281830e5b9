"""The report's first screen says which latency model produced the numbers, and from which calibration."""

from __future__ import annotations

from reports.html import latency_model_line


def test_served_line_quotes_the_calibration() -> None:
    summary = {"latency_model": {"name": "served", "meaning": "predicted served latency", "calibration": {
        "machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "device": "cpu", "torch": "2.14.1"},
        "created": "2026-12-03T09:01:51+00:00", "served_overhead_ms": 0.0417, "served_slope": 1.12663,
        "out_ms_median": 0.379, "back_ms_median": 0.219, "quantum_ms": 3.9472, "dispatcher_base_cores": 0.0478611,
        "dispatcher_cpu_ms_per_task": 0.2213, "work_beside_pass_ms": 0.0812}}}
    text = str(latency_model_line(summary))
    assert "<strong>served</strong>" in text and "AMD EPYC (2 cores, cpu, torch 2.14.1)" in text
    assert "0.042 ms + 1.127 × its isolated pass, of which 0.081 ms is its work beside the pass" in text
    assert "0.379 / 0.219 ms" in text
    assert "time slice 3.947 ms" in text and "0.048 cores + 0.221 ms per task" in text
    assert "under serving traffic" not in text.lower() and "side by side" not in text  # older summaries
    del summary["latency_model"]["calibration"]["work_beside_pass_ms"]  # ... which did not record it
    older = str(latency_model_line(summary))
    assert "1.127 × its isolated pass; one-way" in older and "beside" not in older and "?" not in older


def test_served_line_quotes_delays_under_traffic_and_the_corun_slowdown() -> None:
    cal = {"machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "device": "cpu", "torch": "2.14.1"},
           "delays_under_load": [{"utilization": 0.178, "out_ms_p99": 3.222},
                                 {"utilization": 0.5737, "out_ms_p99": 3.6757}],
           "corun_slowdown": [1.3842]}
    text = str(latency_model_line({"latency_model": {"name": "served", "meaning": "m", "calibration": cal}}))
    assert "p99 3.676 ms out at 57 % of the cores busy" in text  # the busiest level measured
    assert "×1.384 with one other" in text
    flat = str(latency_model_line({"latency_model": {"name": "served", "meaning": "m", "calibration": cal | {
        "corun_slowdown": [1.0]}}}))
    assert "did not slow each other measurably" in flat and "×1.384" not in flat


def test_compute_line_points_to_the_served_prediction_and_old_folders_have_none() -> None:
    text = str(latency_model_line({"latency_model": {"name": "compute", "meaning": "bare compute",
                                                     "calibration": None}}))
    assert "<strong>compute</strong>" in text and "--latency-model compute" in text
    assert latency_model_line({}) is None
    # a name from the summary is escaped, not trusted as HTML
    assert "<b>" not in str(latency_model_line({"latency_model": {"name": "<b>x</b>", "meaning": ""}}))


def test_served_line_quotes_the_networks_own_served_passes_instead_of_the_calibrations_delays() -> None:
    cal = {"machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "device": "cpu", "torch": "2.14.1"},
           "delays_under_load": [{"utilization": 0.5737, "out_ms_p99": 3.6757}]}
    served = {"digits-0-4": [{"utilization": 0.115, "mean_ms": 0.48}, {"utilization": 0.334, "mean_ms": 0.413}],
              "<i>coded</i>": [{"utilization": 0.115, "mean_ms": 0.481}]}
    text = str(latency_model_line({"latency_model": {"name": "served", "meaning": "m", "calibration": cal,
                                                     "served_passes": served}}))
    assert "the networks' own, served under traffic" in text
    assert "digits-0-4 0.480 ms at 12 % / 0.413 ms at 33 %" in text
    assert "<i>" not in text and "&lt;i&gt;coded&lt;/i&gt; 0.481 ms at 12 %" in text  # names are escaped
    assert "3.676" not in text  # the calibration's delays are not what the points drew


def test_served_line_names_the_largest_wake_extra_and_skips_a_broken_curve() -> None:
    cal = {"machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "device": "cpu", "torch": "2.14.1"}}
    served = {"a": [{"utilization": 0.1, "mean_ms": 0.4}]}
    wake = {"a": {"others_busy_ms": [0.0, 5.0, 40.0], "others_extra_ms": [0.0, 0.02, 0.11], "extra_ms": [9.0]},
            "<b>": {"others_busy_ms": [0.0, 30.0], "others_extra_ms": [0.0, 0.25]},
            "c": {"others_busy_ms": [0.0, 9.0], "others_extra_ms": [0.0]}}  # lengths differ: ignored
    text = str(latency_model_line({"latency_model": {"name": "served", "meaning": "m", "calibration": cal,
                                                     "served_passes": served, "served_wake": wake}}))
    assert "up to 0.250 ms for &lt;b&gt; after 30.000 ms of their work" in text
    plain = str(latency_model_line({"latency_model": {"name": "served", "meaning": "m", "calibration": cal,
                                                      "served_passes": served}}))
    assert "evict" not in plain


def test_the_line_says_where_the_served_profile_came_from() -> None:
    from reports.load import served_profile_text

    cal = {"machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "device": "cpu", "torch": "2.14.1"}}
    served = {"a": [{"utilization": 0.1, "mean_ms": 0.4}]}

    def line(source: dict | None) -> str:
        model = {"name": "served", "meaning": "m", "calibration": cal, "served_passes": served}
        return str(latency_model_line({"latency_model": model | ({"served_profile": source} if source else {})}))

    probed = line({"source": "cached", "probe_change_pct": {"a": -3.14, "b": 2.0, "c": float("nan")}})
    assert "The served profile: taken from the cache, confirmed by a probe (its networks&#39; mean lone served " \
           "pass -3.1 to +2.0 % from the profile&#39;s)." in probed  # NaN left out; the text escaped
    assert "taken from the cache, not probed" in line({"source": "cached"})
    assert "The served profile: measured in this run." in line({"source": "measured", "why": "fresh",
                                                              "cached": True})
    stale = line({"source": "measured", "why": "a's lone served pass is <b>1 ms</b> now", "cached": False})
    assert "(the cached one was not taken: a&#39;s lone served pass is &lt;b&gt;1 ms&lt;/b&gt; now); not cached" \
           in stale  # the reason is escaped
    assert "replayed from /r/x" in line({"source": "replayed", "from": "/r/x"})
    assert "The served profile" not in line(None)  # summaries written before it was recorded
    assert served_profile_text({"no": "source"}) is None and served_profile_text("measured") is None


def _served_line(**parts: object) -> str:
    """The latency-model line of a served summary whose latency model holds `parts` beside its calibration and
    served passes."""
    cal = {"machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "device": "cpu", "torch": "2.14.1"}}
    model = {"name": "served", "meaning": "m", "calibration": cal, "served_passes": {"a": [{"utilization": 0.1,
                                                                                            "mean_ms": 0.4}]}}
    return str(latency_model_line({"latency_model": model | parts}))


def test_served_line_gives_the_work_before_and_after_the_output_as_ranges() -> None:
    beside = {"a": {"before_output_ms": 0.06, "after_output_ms": 0.16},
              "b": {"before_output_ms": 0.08, "after_output_ms": 0.13},
              "c": {"before_output_ms": float("nan"), "after_output_ms": 9.0}}  # not finite: ignored
    text = _served_line(served_beside=beside)
    assert "0.060–0.080 ms before its output leaves" in text and "0.130–0.160 ms after it" in text
    one = _served_line(served_beside={"a": beside["a"]})
    assert "0.060 ms before its output leaves" in one and "0.160 ms after it" in one
    assert "after it" not in _served_line()


def test_served_line_gives_how_consecutive_passes_move_together_as_ranges() -> None:
    corr = {"a": {"idle_ms": [0.25, 4.0], "rho": [0.5, 0.1]}, "b": {"idle_ms": [0.25, 4.0], "rho": [0.4, 0.15]},
            "c": {"idle_ms": [0.25], "rho": [float("nan")]}}  # not finite: ignored
    text = _served_line(served_pass_correlation=corr)
    assert "correlate 0.400–0.500 when it went straight on, within 0.250 ms, and 0.100–0.150 after up to 4" in text
    assert "move together" not in _served_line(served_pass_correlation={})
