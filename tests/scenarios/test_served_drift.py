"""A cached served profile is used only while the machine runs the networks' isolated passes as it did when the
profile was measured; otherwise it is measured again (the served passes moved more than the isolated ones)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from calibration.passes import ServedLevel, ServedPasses, from_frame, to_frame
from scenarios import runner
from scenarios.schema import scenario_from_dict
from tests import calibration_testutil as cu
from tests.scenarios.test_runner import _tiny_networks


def _passes(isolated: float | None) -> ServedPasses:
    level = ServedLevel(utilization=0.2, rate_per_ms=1.0, n_lone=50, samples_ms=(1.0, 2.0, 3.0))
    return ServedPasses(levels=(level,), isolated_p50_ms=isolated)


def test_the_isolated_pass_is_kept_in_the_table() -> None:
    back = from_frame(to_frame({"a": _passes(0.25), "b": _passes(None)}))
    assert back["a"].isolated_p50_ms == 0.25 and back["b"].isolated_p50_ms is None
    assert "isolated_p50_ms" not in to_frame({"b": _passes(None)}).columns  # an older profile's table


@pytest.mark.parametrize("now, stale", [(1.04, False), (0.96, False), (1.06, True), (0.94, True)])
def test_drift_beyond_the_limit_either_way_is_stale(now: float, stale: bool) -> None:
    profile = {"a": _passes(1.0), "b": _passes(2.0)}
    isolated = {"a": [0.99, 1.0, 1.01], "b": [2.0 * now] * 3}  # b's samples agree: no noise to allow for
    reason = runner.served_profile_drift(profile, isolated, 5.0)
    assert (reason is not None) == stale
    if stale:
        assert "b's isolated pass" in reason and f"{2.0 * now:.3f} ms now" in reason
    assert runner.served_profile_drift(profile, isolated, 100.0) is None


def test_the_medians_own_interval_widens_the_limit() -> None:
    # 100 samples uniform on 0.9 .. 1.1 (median 1.0): its 95 % interval is ranks 40 .. 60, i.e. 0.98 .. 1.02,
    # a half-width of 2 %: a change of 6 % is within 5 + 2, one of 8 % is not
    samples = np.linspace(0.9, 1.1, 101)[:100] + 0.001
    half = 100 * (np.sort(samples)[60] - np.sort(samples)[40]) / (2 * np.median(samples))
    assert half == pytest.approx(2.0, abs=0.05)
    median = float(np.median(samples))
    assert runner.served_profile_drift({"a": _passes(median / 1.06)}, {"a": samples}, 5.0) is None
    assert "±2.0 %" in runner.served_profile_drift({"a": _passes(median / 1.08)}, {"a": samples}, 5.0)


def test_a_profile_that_does_not_say_is_stale() -> None:
    assert "does not say" in runner.served_profile_drift({"a": _passes(None)}, {"a": [1.0]}, 5.0)


def _level_passes(mean: float, spread: float, n_lone: int, served_mean: float | None = None) -> ServedPasses:
    samples = (mean - spread, mean, mean + spread)
    level = ServedLevel(utilization=0.15, rate_per_ms=1.0, n_lone=n_lone, samples_ms=samples,
                        served_mean_ms=served_mean)
    return ServedPasses(levels=(level, level.model_copy(update={"utilization": 0.5})), isolated_p50_ms=1.0)


def test_a_probe_beyond_the_limit_and_the_noise_of_two_means_is_stale() -> None:
    # the profile's lowest level: lone passes 1.9, 2.0, 2.1 ms (std 0.0816), 400 of them; a probe of 100: the two
    # means' 95 % interval is 1.96 x 0.0816 x sqrt(1/400 + 1/100) / 2.0 = 0.894 % of the profile's mean
    cached = {"a": _level_passes(2.0, 0.1, 400)}
    noise = 100 * 1.96 * np.std([1.9, 2.0, 2.1]) * np.sqrt(1 / 400 + 1 / 100) / 2.0
    assert noise == pytest.approx(0.894, abs=0.001)
    for change_pct, stale in ((5.8, False), (-5.8, False), (6.0, True), (-6.0, True), (30.0, True)):
        probe = {"a": _level_passes(2.0 * (1 + change_pct / 100), 0.1, 100)}
        reason = runner.served_probe_drift(cached, probe, 5.0)
        assert (reason is not None) == stale, change_pct
        if stale:
            assert f"{2.0 * (1 + change_pct / 100):.3f} ms now, 2.000 ms" in reason and "±0.9 %" in reason
    # the mean as served (wake included) is what is compared, where the level has it: samples alike, passes 30 %
    # longer as they ran
    assert runner.served_probe_drift({"a": _level_passes(2.0, 0.1, 400, 2.2)},
                                     {"a": _level_passes(2.0, 0.1, 100, 2.86)}, 5.0) is not None
    assert runner.served_probe_drift({"a": _level_passes(2.0, 0.1, 400, 2.2)},
                                     {"a": _level_passes(2.6, 0.1, 100, 2.2)}, 5.0) is None
    # a network the cached profile does not hold is not judged here
    assert runner.served_probe_drift(cached, {"b": _level_passes(9.0, 0.1, 100)}, 5.0) is None


def test_served_pass_profile_measures_again_after_drift(tiny_cache, tmp_path, monkeypatch) -> None:
    raw = _tiny_networks(tiny_cache)
    raw["profile"] = dict(raw["profile"], served_passes="measured", served_drift_pct=5.0)
    scenario = scenario_from_dict(raw)
    facts = runner.prepare_networks(scenario, quiet=True)
    calls: list[str] = []
    probe_mean: dict[str, float | None] = {"ms": 2.0}  # what a probe's servers time now (the profile's: 2.0 ms)

    def measured(folders, inputs, names, isolated, utilizations=None, min_lone=None, span_ms=None, **_):
        # the servers' measurement itself: tests/calibration
        if utilizations is None:
            calls.append("profile")
            return {name: _level_passes(2.0, 0.1, 1500) for name in names}
        from calibration.measure import PROBE_MIN_LONE, REHEARSAL_UTILIZATION

        assert tuple(utilizations) == REHEARSAL_UTILIZATION[:1] and min_lone == PROBE_MIN_LONE  # lowest level, short
        calls.append("probe")
        if probe_mean["ms"] is None:  # the short stream timed too few lone passes
            from calibration.file import CalibrationError

            raise CalibrationError("only 7 passes ran with no other server computing")
        return {name: _level_passes(probe_mean["ms"], 0.1, 200) for name in names}

    monkeypatch.setattr("calibration.measure.measure_served_passes", measured)
    monkeypatch.setattr(runner, "served_profile_cache", lambda facts, calibration: tmp_path / "cached.csv")
    cal = cu.hand_calibration()
    first, source = runner.served_pass_profile(scenario, facts, cal, quiet=True)
    assert calls == ["profile"] and source == {"source": "measured", "why": "none cached", "cached": True}
    for name, passes in first.items():  # recorded with the isolated pass of the run that measured it
        assert passes.isolated_p50_ms == pytest.approx(float(np.median(facts.profile_ms[name])))
    _, source = runner.served_pass_profile(scenario, facts, cal, quiet=True)
    assert calls == ["profile", "probe"]  # the same machine: the cache, its probe agreeing
    assert source == {"source": "cached", "probe_change_pct": {name: 0.0 for name in first}}
    _, source = runner.served_pass_profile(scenario, facts, cal, quiet=True, fresh=True)
    assert calls[2:] == ["profile"] and source["why"] == "fresh"  # a testbed run measures it afresh all the same
    # served passes 25 % shorter with the isolated ones as they were: the probe finds it (beyond its 15 % and the
    # means' 0.6 % noise), measured again; 10 % shorter: within what they move in minutes, the cache
    probe_mean["ms"] = 1.5
    _, source = runner.served_pass_profile(scenario, facts, cal, quiet=True)
    assert calls[3:] == ["probe", "profile"] and "lone served pass is 1.500 ms now, 2.000 ms" in source["why"]
    probe_mean["ms"] = 1.8
    _, source = runner.served_pass_profile(scenario, facts, cal, quiet=True)
    assert calls[5:] == ["probe"] and set(source["probe_change_pct"].values()) == {-10.0}
    del calls[5:]
    probe_mean["ms"] = None  # a probe that cannot tell does not end the run: the whole profile is measured
    _, source = runner.served_pass_profile(scenario, facts, cal, quiet=True)
    assert calls[5:] == ["probe", "profile"] and "its probe could not tell" in source["why"]
    assert "only 7 passes" in source["why"]
    del calls[5:]
    probe_mean["ms"] = 2.0
    no_probe = scenario.model_copy(update={"profile": scenario.profile.model_copy(update={"served_probe": False})})
    _, source = runner.served_pass_profile(no_probe, facts, cal, quiet=True)
    assert calls[5:] == [] and source == {"source": "cached"}  # profile.served_probe = false: the isolated check
    # twice as slow (beyond 5 % plus any interval a 30-sample median can have): measured again, cached anew, no probe
    slower = dataclasses.replace(facts, profile_ms={n: np.asarray(t) * 2.0 for n, t in facts.profile_ms.items()})
    _, source = runner.served_pass_profile(scenario, slower, cal, quiet=True)
    assert calls[5:] == ["profile"] and "isolated pass" in source["why"]
    a_bit = dataclasses.replace(facts, profile_ms={n: np.asarray(t) * 2.06 for n, t in facts.profile_ms.items()})
    runner.served_pass_profile(scenario, a_bit, cal, quiet=True)
    assert calls[6:] == ["probe"]  # 3 % from the new one: the cache, probed


def test_a_served_profile_measured_beside_a_busy_process_is_not_cached(tiny_cache, tmp_path, monkeypatch,
                                                                       capsys) -> None:
    import subprocess
    import sys
    import time

    raw = _tiny_networks(tiny_cache)
    raw["profile"] = dict(raw["profile"], served_passes="measured")
    scenario = scenario_from_dict(raw)
    facts = runner.prepare_networks(scenario, quiet=True)
    spinners: list[subprocess.Popen] = []

    def measured(folders, inputs, names, isolated, **_):
        # another process keeps a core busy while "the servers" are timed (not reaped before the meter stops)
        spinners.append(subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\n"
                                          "while time.time() - t < 1.5: pass"]))
        time.sleep(1.2)
        return {name: _passes(None) for name in names}

    monkeypatch.setattr("calibration.measure.measure_served_passes", measured)
    cache = tmp_path / "cached.csv"
    monkeypatch.setattr(runner, "served_profile_cache", lambda facts, calibration: cache)
    try:
        profile, source = runner.served_pass_profile(scenario, facts, cu.hand_calibration(), quiet=False)
    finally:
        for p in spinners:
            p.wait()
    assert set(profile) == set(facts.profile_ms)  # this run uses what it measured
    assert not cache.exists() and source["cached"] is False
    assert "cores busy while it was measured" in capsys.readouterr().err

