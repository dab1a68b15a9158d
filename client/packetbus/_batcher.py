"""Automatic batching of single-packet dispatches, with flow control.

One gRPC call per packet costs ~50x more per packet than a repeated field of
them (DESIGN.md section 4), so `Client.dispatch` queues packets here and sends
them in batches bounded by count, bytes and latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from packetbus.v1 import packet_pb2, packet_service_pb2

from ._config import BatchSettings
from ._errors import client_closed

SendBatch = Callable[
    [Sequence[packet_pb2.Packet], float], Awaitable[Sequence[packet_service_pb2.DispatchResult]]
]


@dataclass(slots=True)
class _Item:
    packet: packet_pb2.Packet
    size: int
    deadline: float
    future: asyncio.Future[packet_service_pb2.DispatchResult]


class Batcher:
    def __init__(self, send: SendBatch, settings: BatchSettings) -> None:
        self._send = send
        self._settings = settings
        self._pending: list[_Item] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_concurrent_batches)
        self._outstanding_packets = 0
        self._outstanding_bytes = 0
        self._room = asyncio.Condition()
        self._closed = False

    async def submit(
        self, packet: packet_pb2.Packet, deadline: float
    ) -> asyncio.Future[packet_service_pb2.DispatchResult]:
        """Queue `packet`; the future gets its DispatchResult, or the call's error.
        Raises PacketbusError (CANCELLED) once the client is closed, also to a
        caller still waiting for room when it closes."""
        if self._closed:
            raise client_closed()
        size = packet.ByteSize()
        s = self._settings
        async with self._room:
            # Admit one packet even when it alone exceeds the byte budget, or
            # an oversized packet would wait forever instead of being rejected.
            await self._room.wait_for(
                lambda: (
                    self._closed
                    or self._outstanding_packets == 0
                    or (
                        self._outstanding_packets < s.max_outstanding_packets
                        and self._outstanding_bytes + size <= s.max_outstanding_bytes
                    )
                )
            )
            if self._closed:
                raise client_closed()
            self._outstanding_packets += 1
            self._outstanding_bytes += size
        future: asyncio.Future[packet_service_pb2.DispatchResult] = (
            asyncio.get_running_loop().create_future()
        )
        # A caller that timed out no longer awaits its future; reading the
        # outcome here keeps asyncio from logging it as never retrieved.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if self._pending and self._pending_bytes + size > s.max_bytes:
            self._flush()
        self._pending.append(_Item(packet, size, deadline, future))
        self._pending_bytes += size
        if len(self._pending) >= s.max_packets or self._pending_bytes >= s.max_bytes:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(s.max_latency, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        items, self._pending, self._pending_bytes = self._pending, [], 0
        task = asyncio.create_task(self._send_batch(items))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send_batch(self, items: list[_Item]) -> None:
        try:
            async with self._slots:
                deadline = max(item.deadline for item in items)
                try:
                    results = await self._send([item.packet for item in items], deadline)
                except BaseException as exc:
                    # Cancelled (the client stopped): the callers get CANCELLED, not
                    # a CancelledError that would look like their own cancellation.
                    error = exc if isinstance(exc, Exception) else client_closed()
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(error)
                    if not isinstance(exc, Exception):
                        raise
                    return
                for item, result in zip(items, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
        finally:
            async with self._room:
                self._outstanding_packets -= len(items)
                self._outstanding_bytes -= sum(item.size for item in items)
                self._room.notify_all()

    async def flush(self) -> None:
        """Send what is queued and wait until every batch sent so far has its results."""
        self._flush()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def close(self) -> None:
        """Send what is queued and wait for its results; later submits raise."""
        self._closed = True
        async with self._room:
            self._room.notify_all()  # callers waiting for room raise instead
        await self.flush()

    def cancel(self) -> None:
        """Stop at once: queued and in-flight dispatches fail with CANCELLED."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._in_flight:
            task.cancel()
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(client_closed())
        self._pending = []
