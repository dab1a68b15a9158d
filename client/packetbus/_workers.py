"""Connecting to the worker a server with several (`serve --workers N`) assigns.

Such a server's workers share the port the client dials, and the kernel spreads
connections over them by a hash of their addresses: unevenly for a few
long-lived clients. Each worker also listens on a port of its own, and
GetServerInfo names them with the worker whose turn it is to take a client (see
the server's _worker_ports): the client connects there instead, on the host it
dialed (so TLS names still match). Anything that goes wrong on the way (an older
server, a call the access policy refuses, a port a firewall closes, a port on
that host that is some other server's: behind a forwarder or a NAT the ports are
the server's, the host is not) leaves the client on the shared port, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc

log = logging.getLogger("packetbus.client")

# How long a worker's own port may take to answer before the shared one is kept.
_READY_SECONDS = 2.0


def _host(address: str) -> str | None:
    """The host part of a ``host:port`` target, or None for a target of another
    form (a unix socket, a list of addresses)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        return None
    if "," in address or address.startswith("unix"):
        return None
    return host


async def on_workers(
    shared: list[grpc.aio.Channel],
    address: str,
    open_channel: Callable[[str], grpc.aio.Channel],
    timeout: float,
) -> list[grpc.aio.Channel]:
    """The channels a new client uses: the workers' own (`shared` then closed) or
    `shared`. Cancelled (Ctrl-C) or failed on the way, it closes every channel it
    was given or opened before raising: the caller returns no client that could."""
    try:
        own = await worker_channels(shared, address, open_channel, timeout)
    except BaseException:
        await _close(shared)
        raise
    if own is None:
        return shared
    try:
        await _close(shared)
    except BaseException:
        await _close(own)
        raise
    return own


async def _close(channels: list[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close()


async def worker_channels(
    shared: list[grpc.aio.Channel],
    address: str,
    open_channel: Callable[[str], grpc.aio.Channel],
    timeout: float,
) -> list[grpc.aio.Channel] | None:
    """One channel for each of `shared` to the workers' own ports, the first to the
    worker the server assigns and the next ones to the workers after it; None
    when the client should keep `shared` (one process, or a port not reached)."""
    host = _host(address)
    if host is None:
        return None
    stub = packet_service_pb2_grpc.PacketServiceStub(shared[0])
    try:
        info = await stub.GetServerInfo(
            packet_service_pb2.GetServerInfoRequest(assign_worker=True), timeout=min(timeout, 5.0)
        )
    except grpc.RpcError as exc:
        log.debug("no worker ports from %s: %s", address, exc)
        return None
    ports = list(info.workers.ports)
    if not ports:  # also when the server names no workers (one process, or older)
        return None
    expected = [(info.workers.assigned + k) % len(ports) for k in range(len(shared))]
    channels = [open_channel(f"{host}:{ports[index]}") for index in expected]
    try:
        async with asyncio.timeout(min(timeout, _READY_SECONDS)), asyncio.TaskGroup() as waits:
            checks = [
                waits.create_task(_is_worker(channel, info, index))
                for channel, index in zip(channels, expected, strict=True)
            ]
        same = all(check.result() for check in checks)
    except BaseException as exc:
        for channel in channels:
            await channel.close()
        if not isinstance(exc, TimeoutError):
            raise
        log.warning(
            "the workers' own ports of %s (%s) did not answer; staying on the shared port",
            address,
            ", ".join(map(str, ports)),
        )
        return None
    if not same:
        for channel in channels:
            await channel.close()
        log.warning(
            "the workers' own ports of %s (%s) on %s are another server's (a forwarder or "
            "NAT in between?); staying on the shared port",
            address,
            ", ".join(map(str, ports)),
            host,
        )
        return None
    return channels


async def _is_worker(
    channel: grpc.aio.Channel, shared: packet_service_pb2.GetServerInfoResponse, index: int
) -> bool:
    """Whether `channel` reaches worker `index` of the server that answered `shared`:
    something else may listen on that port of the host dialed, and a gRPC server
    there would take every call."""
    await channel.channel_ready()
    stub = packet_service_pb2_grpc.PacketServiceStub(channel)
    try:
        info = await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest())
    except grpc.RpcError:  # not a packetbus server, or one that refuses this client
        return False
    return (
        info.server_id == shared.server_id
        and info.HasField("workers")
        and list(info.workers.ports) == list(shared.workers.ports)
        and info.workers.serving == index
    )
