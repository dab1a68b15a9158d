"""TCP ports for the tests' own servers, never ones the kernel hands out meanwhile.

A port found free by binding to port 0 comes from the ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default), from which the
kernel also gives every outgoing connection and every other bind to port 0 its
port: between the probe and the server's own bind, another test's client or
server could take it, and CI once saw `serve` fail "Address already in use".
So the tests take their ports below that range, each pytest-xdist worker from a
block of its own, in turn, each checked free by a bind first.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading

# Below the default ephemeral range, above well-known services. Ports the machine's
# own services use in that stretch (RabbitMQ's distribution port) are left out.
_FIRST, _BLOCK, _BLOCKS = 20_000, 1_500, 8
_TAKEN_BY_SERVICES = frozenset({25_672})


def _block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    start = _FIRST + (index % _BLOCKS) * _BLOCK
    return range(start, start + _BLOCK)


_LOCK = threading.Lock()
_NEXT = itertools.cycle(list(_block()))
# A random start: a process run again soon after does not take the ports its
# predecessor's servers may still hold in TIME_WAIT.
for _ in range(random.randrange(_BLOCK)):
    next(_NEXT)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port free on loopback now, from this worker's block (see the module
    docstring); ports are handed out in turn, so one is not given twice in a row."""
    with _LOCK:
        for _ in range(_BLOCK):
            port = next(_NEXT)
            if port not in _TAKEN_BY_SERVICES and _free(port):
                return port
    raise RuntimeError(f"no free port in {_block()}")


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on loopback now (see free_port)."""
    return [free_port() for _ in range(n)]
