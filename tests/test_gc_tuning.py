"""The serving process's collector (_gc): what the server had made when it started is
out of the collector's view, and young collections run less often."""

from __future__ import annotations

import gc

from packetbus_server import _gc


def test_settle_heap_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    kept = [[i] for i in range(1_000)]  # containers alive at "start"
    try:
        _gc.settle_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (_gc._YOUNG, before[1], before[2])
        # A full collection no longer walks the frozen objects: none of them is tracked
        # in any generation.
        assert not any(obj is kept for obj in gc.get_objects())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
