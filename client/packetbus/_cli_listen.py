"""Listening addresses on the command line: parsing ``HOST:PORT`` and checking, before a
server starts, that it can listen there (one line of reason instead of a server's bind
log). Shared by `packetbus serve`, `packetbus a2a serve` and `packetbus console`."""

from __future__ import annotations

import errno
import socket


def host_port(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host without brackets, port); None if not."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return None
    return host.strip("[]"), int(port)


def bind_problem(host: str, port: int, *, in_use_hint: str = "") -> str | None:
    """Why nothing can listen on `host`:`port` now (the OS's reason, and `in_use_hint`
    after it when another process holds the port), or None.

    Probed as servers bind: SO_REUSEADDR but not SO_REUSEPORT, so a listener of any
    kind is found (a server's own workers have not started yet)."""
    try:
        found = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = found[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE and in_use_hint:
            return f"{reason}: {in_use_hint}"
        return reason
    return None
