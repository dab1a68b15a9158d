"""Each worker's own port, and the turns by which clients are spread over them.

Workers share one port with SO_REUSEPORT, and the kernel picks a worker for each
new connection by a hash of its addresses: fair only on average over many
connections. A few long-lived clients (the usual packetbus load: some
dispatchers, a consumer group's members) often land 1:3 on 2 workers, or both
consumers of a group on one. A reuseport BPF program cannot do better without
state (cBPF picks at random or by CPU), and a gRPC worker cannot hand over or
refuse a single connection. So, like Redis Cluster or NATS discovery, the client
is told: each worker also listens on a port of its own, and GetServerInfo (asked
once when a client connects, on the shared port) names the ports and the worker
this client should use, handed out in turn over all workers from one counter in
shared memory. N clients that connect land evenly on N workers whichever worker
answered them.

The ports are fixed (`--worker-ports FIRST`, default the port after the shared
one): a worker restarted after a crash, or a whole server restarted, comes back
on the same ports, and clients reconnect to them as to any restarted server.
"""

from __future__ import annotations

import multiprocessing
import socket
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

from packetbus.v1 import packet_service_pb2


@dataclass(frozen=True)
class WorkerPorts:
    """What worker `index` of a server with ``len(ports)`` workers knows of all."""

    index: int
    ports: tuple[int, ...]
    # The next turn, shared by every worker (a multiprocessing.Value under its lock).
    turns: Synchronized[int]

    def take_turn(self) -> int:
        """The worker whose turn it is to take a new client."""
        with self.turns.get_lock():
            turn = self.turns.value
            self.turns.value = turn + 1
        return turn % len(self.ports)

    def describe(self, *, assign: bool) -> packet_service_pb2.Workers:
        """GetServerInfo's `workers`: the ports, this worker and, when asked to
        `assign` one (a client connecting), the worker whose turn it is."""
        return packet_service_pb2.Workers(
            ports=self.ports, serving=self.index, assigned=self.take_turn() if assign else 0
        )


def new_turns() -> Synchronized[int]:
    """A turn counter to share with worker processes (passed when they start)."""
    turns: Synchronized[int] = multiprocessing.get_context("spawn").Value("Q", 0)
    return turns


def pick_ports(host: str, count: int, first: int | None) -> tuple[int, ...]:
    """The ports of `count` workers on `host`: `first` and the ones after it, or
    ports free now (the kernel's ephemeral ones) for `first` 0. Raises OSError
    naming the port when one is taken.

    The probes are closed before the workers bind the ports: another process
    could take one meanwhile, and that worker then fails to start with "address
    in use" (the supervisor stops the server, as for a taken shared port)."""
    found = socket.getaddrinfo(
        host.strip("[]") or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = found[0]
    wanted = [0] * count if not first else list(range(first, first + count))
    if wanted[-1] > 65535:
        raise ValueError(f"--worker-ports {first}: {count} ports from it go past 65535")
    probes = [socket.socket(family, kind, proto) for _ in wanted]
    try:
        for probe, port in zip(probes, wanted, strict=True):
            # As gRPC binds: a port left in TIME_WAIT by the last run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address[0], port, *address[2:]))
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"worker port {port} on {host or '*'}: {exc.strerror} (workers listen on "
                    "--worker-ports FIRST and the ports after it; default: the port after "
                    "--listen's)",
                ) from None
        return tuple(int(probe.getsockname()[1]) for probe in probes)
    finally:
        for probe in probes:
            probe.close()
