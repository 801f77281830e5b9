"""Where output goes is checked before any work: a place under a file, or one no file can be made in, is refused in
one line by `coinsim calibrate --out` and `coinsim models export --out` before they measure or train anything."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from atomic import blocked_by, why_blocked
from scenarios.cli import cli


def test_a_writable_folder_is_not_blocked_and_the_probe_leaves_nothing(tmp_path: Path) -> None:
    assert blocked_by(tmp_path / "new" / "deeper") is None  # made later: its nearest existing ancestor is writable
    assert list(tmp_path.iterdir()) == []


def test_a_folder_under_a_file_is_blocked_by_that_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert blocked_by(tmp_path / "f" / "sub") == (tmp_path / "f", "file")
    assert why_blocked(tmp_path / "f" / "sub") == f"{tmp_path / 'f'} is a file, not a folder"


def test_a_folder_no_file_can_be_made_in_is_blocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what root's permission bits never tell (a read-only or virtual file system such as /proc): a file is tried
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert blocked_by(tmp_path / "out") == (tmp_path, "permission")
    assert why_blocked(tmp_path) == f"no permission to write in {tmp_path}"


def _one_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


def test_calibrate_refuses_an_out_under_a_file_before_measuring(tmp_path: Path, monkeypatch) -> None:
    import calibration.measure

    monkeypatch.setattr(calibration.measure, "calibrate", lambda *a, **k: pytest.fail("measured on bad input"))
    (tmp_path / "f").write_text("x")
    line = _one_line(CliRunner().invoke(cli, ["calibrate", "--device", "cpu", "--out", str(tmp_path / "f" / "c.json")],
                                        obj={}))
    assert "is a file, not a folder" in line and (tmp_path / "f").read_text() == "x"


def test_export_refuses_an_out_under_a_file_before_training(tmp_path: Path, monkeypatch) -> None:
    import models.zoo

    monkeypatch.setattr(models.zoo, "build_zoo", lambda *a, **k: pytest.fail("trained on bad input"))
    (tmp_path / "f").write_text("x")
    line = _one_line(CliRunner().invoke(cli, ["models", "export", "--out", str(tmp_path / "f" / "zoo")]))
    assert "is a file, not a folder" in line
