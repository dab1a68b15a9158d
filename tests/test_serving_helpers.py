"""The test helpers that start `packetbus serve --workers` and wait for its workers."""

from __future__ import annotations

import sys
import threading

from tests.conftest import serving, wait_for_workers

# A stand-in for `serve --workers 2` on a busy machine: a worker says it serves before
# the supervisor's "2 workers serving on" line, then the other worker.
_EARLY_WORKER = (
    "import time\n"
    "print('packetbus 0.1.0 serving on 127.0.0.1:1', flush=True)\n"
    "print('2 workers serving on 127.0.0.1:1', flush=True)\n"
    "print('packetbus 0.1.0 serving on 127.0.0.1:1', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_worker_line_read_before_the_supervisors_still_counts() -> None:
    process = serving([sys.executable, "-c", _EARLY_WORKER])
    try:
        waiting = threading.Thread(target=wait_for_workers, args=(process, 2), daemon=True)
        waiting.start()
        waiting.join(10)
        # Before: the first worker's line was read by `serving` and lost, and this
        # waited forever for a third line.
        assert not waiting.is_alive()
    finally:
        process.kill()
        process.wait()
