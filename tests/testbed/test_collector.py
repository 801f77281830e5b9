"""The frontend keeps Python's cyclic garbage collector out of a served run: a full collection walks every object
the process holds (over 100 ms with the testbed imported here) and stops the dispatcher meanwhile."""

from __future__ import annotations

import gc

from testbed.frontend import collector_paused


def _cycles(n: int) -> None:
    """`n` reference cycles left as garbage: what makes the collector run on its own."""
    for _ in range(n):
        a: list = []
        a.append(a)


def test_paused_no_collection_runs_however_much_garbage_is_made_and_the_collector_comes_back() -> None:
    assert gc.isenabled()
    with collector_paused(True) as log:
        assert not gc.isenabled() and gc.get_freeze_count() > 0  # collected once, the survivors frozen
        _cycles(200_000)  # hundreds of generation-0 thresholds
    assert log.pauses == [] and log.before_ms is not None and log.before_ms > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.collect()


def test_not_paused_the_same_garbage_is_collected_and_each_collection_timed() -> None:
    with collector_paused(False) as log:
        _cycles(200_000)
    # 700 allocations a generation-0 collection; nothing collected before
    assert len(log.pauses) >= 100 and all(ms >= 0 for ms in log.pauses) and log.before_ms is None
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_collector_off_before_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused(True):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
