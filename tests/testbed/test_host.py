"""The host meter tells the cores other processes kept busy from the run's own: a spinning process counts as
'other' unless it is named as the run's own."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from testbed.host import HostMeter

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc only")


def _spin_for(seconds: float, own_child: bool) -> float:
    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # the interpreter is up and spinning
        meter = HostMeter([os.getpid(), child.pid] if own_child else [os.getpid()])
        time.sleep(seconds)
        load = meter.stop()
    finally:
        child.kill()
        child.wait()
    assert load.other_cores is not None and load.steal_cores is not None and load.steal_cores >= 0
    return load.other_cores


def test_a_spinning_stranger_is_about_one_other_core_and_an_own_process_is_not() -> None:
    stranger = _spin_for(1.0, own_child=False)
    own = _spin_for(1.0, own_child=True)
    # the spinner takes one core (less when the machine is busy); named as our own it drops out of 'other'
    assert stranger > 0.6
    assert own < stranger - 0.5
