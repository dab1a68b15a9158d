"""Serving an ASGI app under uvicorn the way packetbus's own commands do
(`packetbus a2a serve`, `packetbus console`): one ready line once it listens, and a
drain on SIGTERM that ends with exit status 0.

Needs uvicorn (the ``a2a`` and ``console`` extras install it); import this module
only where those run.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn


def url_host(host: str) -> str:
    """`host` as it goes in a URL: an IPv6 address in brackets (RFC 3986 3.2.2)."""
    return f"[{host}]" if ":" in host else host


class ReadyServer(uvicorn.Server):
    """uvicorn's server that prints ``ready_line(port)`` once it listens (`port`: the
    first socket's bound port, so ``HOST:0`` shows the port taken), the line a
    supervisor or a test waits for, as `packetbus serve` prints one.

    SIGTERM is a drain asked for: uvicorn stops accepting, finishes what is under way
    (within its ``timeout_graceful_shutdown``) and the process ends normally (exit
    status 0), where uvicorn would raise SIGTERM again after shutdown (an exit status
    that reads as killed). SIGINT is raised again (exit 130, as the CLI's)."""

    def __init__(self, config: uvicorn.Config, ready_line: Callable[[int], str]) -> None:
        super().__init__(config)
        self.ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1] if self.servers else 0
            print(self.ready_line(port), flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals = [s for s in self._captured_signals if s != sig]
