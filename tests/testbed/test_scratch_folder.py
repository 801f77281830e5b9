"""The testbed's scratch folders: a frontend killed with SIGKILL leaves its folder behind; the next run removes
it, and never a folder whose process is still alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

from testbed.cluster import scratch_folder

HOLDER = """
import sys, time, tempfile
tempfile.tempdir = sys.argv[1]
from testbed.cluster import scratch_folder
with scratch_folder("coinsim-testbed-") as folder:
    (folder / "weights.bin").write_bytes(bytes(1 << 20))
    print(folder, flush=True)
    time.sleep(60)
"""


def test_a_killed_runs_folder_is_removed_by_the_next_and_a_live_ones_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    alive = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        killed_folder, alive_folder = (tmp_path / p.stdout.readline().strip() for p in (killed, alive))
        assert killed_folder.is_dir() and alive_folder.is_dir()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
        assert killed_folder.is_dir(), "SIGKILL gives a process no chance to clean up"
        other = tmp_path / "coinsim-calibrate-1-abc"  # another kind of scratch folder is not touched
        other.mkdir()
        with scratch_folder("coinsim-testbed-") as mine:
            assert mine.is_dir() and mine.name.startswith(f"coinsim-testbed-{os.getpid()}-")
            assert not killed_folder.exists() and alive_folder.is_dir() and other.is_dir()
        assert not mine.exists()
    finally:
        alive.kill()
        alive.wait(10)
