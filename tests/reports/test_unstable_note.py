"""An allowed unstable run says so in its report."""

from __future__ import annotations

from click.testing import CliRunner

from scenarios.cli import cli


def test_allowed_unstable_run_is_flagged_in_the_report(tmp_path):
    import tomli_w

    scenario = {"name": "overload", "seed": 1, "allow_unstable": True,
                "sim": {"n_experts": 2, "r": 1, "n_queries": 2000, "policies": ["uncoded", "replication"],
                        "traffic": {"kind": "poisson", "load": 1.2},
                        "service": {"expert": {"kind": "exponential", "mean_ms": 1.0}}}}
    path = tmp_path / "overload.toml"
    path.write_text(tomli_w.dumps(scenario))
    result = CliRunner().invoke(cli, ["--quiet", "run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    html = next((tmp_path / "out" / "overload").glob("*/report.html")).read_text()
    assert "allow_unstable = true" in html and "not a steady state" in html

    stable = dict(scenario, allow_unstable=False, name="calm")
    stable["sim"] = dict(scenario["sim"], traffic={"kind": "poisson", "load": 0.5})
    path.write_text(tomli_w.dumps(stable))
    result = CliRunner().invoke(cli, ["--quiet", "run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "not a steady state" not in next((tmp_path / "out" / "calm").glob("*/report.html")).read_text()
