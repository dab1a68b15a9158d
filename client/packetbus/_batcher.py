"""Automatic batching of single-packet dispatches, with flow control.

One gRPC call per packet costs ~50x more per packet than a repeated field of
them (DESIGN.md section 4), so `Client.dispatch` queues packets here and sends
them in batches bounded by count and bytes.

Lingering only under load (as NATS and Kafka producers do): a packet submitted
while no batch is in flight is sent at once (at the end of the current event
loop turn, so packets submitted together still share a call); packets that
arrive while a batch is in flight wait for it and go out together as soon as it
completes, or after `max_latency` (then beside it, up to `max_concurrent_batches`),
or when they fill a batch. So a lone packet costs one round trip, not a batching
window, and a heavy load still makes large batches.

This is the hot path of `dispatch()`: no lock or condition round trip while
there is room, one timer per batch for the callers' deadlines (not one
`wait_for` per packet), and results set in one pass per batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from packetbus.v1 import packet_pb2, packet_service_pb2

from ._config import BatchSettings
from ._errors import PacketbusError, client_closed

SendBatch = Callable[
    [Sequence[packet_pb2.Packet], float], Awaitable[Sequence[packet_service_pb2.DispatchResult]]
]
Result = asyncio.Future[packet_service_pb2.DispatchResult]


@dataclass(slots=True)
class _Item:
    packet: packet_pb2.Packet
    size: int
    deadline: float
    future: Result


@dataclass(slots=True)
class _RoomWaiter:
    size: int
    future: asyncio.Future[None]


def not_acknowledged(packet: packet_pb2.Packet) -> PacketbusError:
    """What a dispatch whose deadline passed before its result came raises."""
    return PacketbusError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"packet {packet.tracking_id} not acknowledged in time (it may have been "
        "stored); dispatching the same packet again is safe",
        outcome_unknown=True,
    )


def wrong_answer(sent: int, answered: int) -> PacketbusError:
    """What a dispatch gets when its call's answer has not one result per packet."""
    return PacketbusError(
        grpc.StatusCode.INTERNAL,
        f"the server answered {answered} results for {sent} packets (it may have "
        "stored them); dispatching the same packets again is safe",
        outcome_unknown=True,
    )


def _fail(items: list[_Item], error: BaseException) -> None:
    """Fail the dispatches of `items` still waiting (not timed out or cancelled)."""
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


# How long after its deadline a packet whose batch is being sent waits for the
# call's own outcome before the timer fails it: the call ends at that deadline
# with its own error (UNAVAILABLE never sent, a refusal, DEADLINE_EXCEEDED), which
# says more, and more truly, than "not acknowledged in time". A safety net only.
_SEND_GRACE_SECONDS = 1.0


class _Deadlines:
    """One timer per batch: at the earliest deadline of its packets still waiting,
    fail those whose deadline passed. Once the call is under way (`sending`), the
    packets whose deadline is the call's own are left to the call's outcome
    (within _SEND_GRACE_SECONDS); packets with earlier deadlines still fail at
    theirs."""

    __slots__ = ("_handle", "_items", "_sent_until")

    def __init__(self, items: list[_Item]) -> None:
        self._items = items
        self._handle: asyncio.TimerHandle | None = None
        # inf: no call under way yet, every packet fails at its own deadline.
        self._sent_until = float("inf")
        self._arm(min(item.deadline for item in items))

    def sending(self, deadline: float) -> None:
        """The batch's call runs until `deadline` (time.monotonic())."""
        self._sent_until = deadline

    def _due(self, item: _Item) -> float:
        if item.deadline >= self._sent_until:
            return item.deadline + _SEND_GRACE_SECONDS
        return item.deadline

    def _arm(self, deadline: float) -> None:
        delay = max(0.0, deadline - time.monotonic())
        self._handle = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        now = time.monotonic()
        later = float("inf")
        for item in self._items:
            if item.future.done():
                continue
            due = self._due(item)
            if due <= now:
                item.future.set_exception(not_acknowledged(item.packet))
            else:
                later = min(later, due)
        self._handle = None
        if later != float("inf"):
            self._arm(later)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Batcher:
    def __init__(self, send: SendBatch, settings: BatchSettings) -> None:
        self._send = send
        self._settings = settings
        self._pending: list[_Item] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False  # a send at the end of this loop turn is scheduled
        self._sending = 0  # batches handed to a task and not yet answered
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_concurrent_batches)
        self._outstanding_packets = 0
        self._outstanding_bytes = 0
        self._room_waiters: deque[_RoomWaiter] = deque()
        self._closed = False

    async def submit(self, packet: packet_pb2.Packet, deadline: float) -> Result:
        """Queue `packet`; the future gets its DispatchResult, or the call's error,
        or DEADLINE_EXCEEDED at `deadline`. Raises PacketbusError (CANCELLED) once
        the client is closed, also to a caller still waiting for room when it closes."""
        if self._closed:
            raise client_closed()
        size = packet.ByteSize()
        if self._room_waiters or not self._has_room(size):
            await self._wait_for_room(size)  # reserves the room it waited for
            if self._closed:
                self._release(1, size)
                raise client_closed()
        else:
            self._outstanding_packets += 1
            self._outstanding_bytes += size
        loop = asyncio.get_running_loop()
        future: Result = loop.create_future()
        s = self._settings
        if self._pending and self._pending_bytes + size > s.max_bytes:
            self._flush()
        self._pending.append(_Item(packet, size, deadline, future))
        self._pending_bytes += size
        if len(self._pending) >= s.max_packets or self._pending_bytes >= s.max_bytes:
            self._flush()
        elif self._sending == 0:
            if not self._soon:
                self._soon = True
                loop.call_soon(self._send_soon)
        elif self._timer is None:
            self._timer = loop.call_later(s.max_latency, self._flush)
        return future

    def _has_room(self, size: int) -> bool:
        # Admit one packet even when it alone exceeds the byte budget, or an
        # oversized packet would wait forever instead of being rejected.
        s = self._settings
        return self._outstanding_packets == 0 or (
            self._outstanding_packets < s.max_outstanding_packets
            and self._outstanding_bytes + size <= s.max_outstanding_bytes
        )

    async def _wait_for_room(self, size: int) -> None:
        """Wait in line (first come, first served) until `_release` grants this
        packet its room."""
        waiter = _RoomWaiter(size, asyncio.get_running_loop().create_future())
        self._room_waiters.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                if waiter.future.exception() is None:  # granted, then cancelled: give back
                    self._release(1, size)
            elif waiter in self._room_waiters:
                # Not yet passed over by _release (which drops a cancelled waiter
                # it meets before this task resumes).
                self._room_waiters.remove(waiter)
            raise

    def _release(self, packets: int, size: int) -> None:
        self._outstanding_packets -= packets
        self._outstanding_bytes -= size
        while self._room_waiters and self._has_room(self._room_waiters[0].size):
            waiter = self._room_waiters.popleft()
            if waiter.future.done():
                # Cancelled in this loop turn, its task not yet resumed: it takes no
                # room (granting would raise InvalidStateError here and strand the
                # waiters behind it).
                continue
            self._outstanding_packets += 1
            self._outstanding_bytes += waiter.size
            waiter.future.set_result(None)

    def _send_soon(self) -> None:
        self._soon = False
        if self._sending == 0:
            self._flush()
        elif self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self._settings.max_latency, self._flush
            )

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        items, self._pending, self._pending_bytes = self._pending, [], 0
        self._sending += 1
        task = asyncio.create_task(self._send_batch(items, _Deadlines(items)))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send_batch(self, items: list[_Item], deadlines: _Deadlines) -> None:
        try:
            async with self._slots:
                deadline = max(item.deadline for item in items)
                deadlines.sending(deadline)
                try:
                    results = await self._send([item.packet for item in items], deadline)
                except BaseException as exc:
                    # Cancelled (the client stopped): the callers get CANCELLED, not
                    # a CancelledError that would look like their own cancellation.
                    _fail(items, exc if isinstance(exc, Exception) else client_closed())
                    if not isinstance(exc, Exception):
                        raise
                    return
                if len(results) != len(items):
                    # Not this client's server, or a broken one: the callers get an
                    # error now, not a future that never completes (the deadline
                    # timer stops with this task).
                    _fail(items, wrong_answer(len(items), len(results)))
                    return
                for item, result in zip(items, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(result)
        finally:
            deadlines.stop()
            self._sending -= 1
            self._release(len(items), sum(item.size for item in items))
            # What queued up behind this call goes now, together.
            if self._pending and not self._closed:
                self._flush()

    async def flush(self) -> None:
        """Send what is queued and wait until every batch sent so far has its results."""
        self._flush()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def close(self) -> None:
        """Send what is queued and wait for its results; later submits raise."""
        self._closed = True
        self._fail_room_waiters()  # callers waiting for room raise instead
        await self.flush()

    def _fail_room_waiters(self) -> None:
        while self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(client_closed())

    def cancel(self) -> None:
        """Stop at once: queued and in-flight dispatches fail with CANCELLED."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fail_room_waiters()
        for task in self._in_flight:
            task.cancel()
        for item in self._pending:  # an error each: raised in as many callers
            if not item.future.done():
                item.future.set_exception(client_closed())
        self._pending = []
