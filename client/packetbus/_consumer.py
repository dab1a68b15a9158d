"""A consumer in a consumer group: leased deliveries in, settlements (ack, nack, extend) out.

One Pull stream carries both ways. Settlements made while a request is being
written wait and go out together, so acks cost one message per batch, not per
packet. A broken stream is opened again with backoff; settlements still
unconfirmed when it broke are sent again as unary calls, which answer for
deliveries wherever they were made. So are settlements made when no stream
can carry them: before iterating, after the stream failed, after close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2

from packetbus.v1 import consumer_group_service_pb2 as pb
from packetbus.v1 import consumer_group_service_pb2_grpc, packet_service_pb2

from ._config import RetrySettings
from ._errors import CLOSED, PacketbusError, client_closed, own_cancellation
from ._retry_policy import credential_expired
from ._settling import (
    SETTLEMENTS_PER_REQUEST,
    Outgoing,
    Settling,
    settle_by_unary,
    unary_settle,
)
from ._stopping import ClosedOnExit

log = logging.getLogger("packetbus.consumer")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One leased delivery: `packet` is the StoredPacket, its chain of custody ending
    with this delivery. Settle it with `ack`, `nack` or `extend` before the lease
    (`lease_expires_at`) runs out, or it is delivered again."""

    delivery_id: str
    delivery_count: int
    lease_expires_at: timestamp_pb2.Timestamp
    packet: packet_service_pb2.StoredPacket
    _consumer: Consumer = field(repr=False, compare=False)

    def ack(self) -> Settling:
        return self._consumer.ack(self)

    def nack(self, *, delay_seconds: int = 0, reason: str = "") -> Settling:
        return self._consumer.nack(self, delay_seconds=delay_seconds, reason=reason)

    def extend(self) -> Settling:
        return self._consumer.extend(self)


# A stream that ends with one of these is opened again (with backoff): the server
# went away or broke, not the request. Safe, as every settlement may be repeated
# and every delivery is leased. A dead connection surfaces as UNAVAILABLE, or as
# INTERNAL when grpc was writing to it.
_RECONNECT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

_KINDS = {
    pb.SETTLEMENT_ACK: "ack",
    pb.SETTLEMENT_NACK: "nack",
    pb.SETTLEMENT_EXTEND: "extend",
}


class Consumer(ClosedOnExit):
    """An async iterator of Delivery from one consumer group, for one consumer.

    Use it as ``async with client.consume(topic, group, consumer="w1") as c:``
    and ``async for delivery in c: ...; delivery.ack()``. Closing it sends the
    settlements made so far, then ends the stream; deliveries not settled by
    then come back to the group when their leases run out.
    """

    def __init__(
        self,
        stub: consumer_group_service_pb2_grpc.ConsumerGroupServiceStub,
        subscription: pb.PullSubscription,
        *,
        retry: RetrySettings,
        backoff: Callable[[], Callable[[], float]],
    ) -> None:
        self._stub = stub
        self._subscription = subscription
        self._retry = retry
        self._new_backoff = backoff
        self._outgoing = Outgoing()
        self._waiting: dict[tuple[str, str], list[asyncio.Future[pb.SettleResult]]] = {}
        # The nacks awaiting confirmation, to send again as they were.
        self._nacks: dict[str, pb.Nacked] = {}
        self._unsent = asyncio.Event()
        self._buffer: list[Delivery] = []
        self._queue: asyncio.Queue[list[Delivery] | BaseException] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        # Counts Pull calls that ended: each call's request iterator knows its number.
        self._stream = 0
        self._closing = False
        self._closed = False
        # Unary settlements made when no stream could carry them (see _settle_now).
        self._late: set[asyncio.Task[None]] = set()
        # Delivery ids whose settlement ended unconfirmed after it may have gone out:
        # their Settling raises with outcome_unknown set.
        self._unknown: set[str] = set()

    @property
    def topic(self) -> str:
        return self._subscription.topic

    @property
    def group(self) -> str:
        return self._subscription.group

    # -- settlements ------------------------------------------------------------------

    def _future(self, kind: str, ident: str) -> asyncio.Future[pb.SettleResult]:
        future: asyncio.Future[pb.SettleResult] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((kind, ident), []).append(future)
        self._unsent.set()
        return future

    def _no_stream(self) -> bool:
        """No Pull stream will carry a settlement made now: none was opened yet, it
        failed, or the consumer closed. Its future would never resolve there."""
        return self._closed or self._reader is None or self._reader.done()

    def _settle_now(self, kind: str, ids: list[str], nacks: list[pb.Nacked]) -> Settling:
        """Send one settlement as a unary call, in a task of its own: it goes out
        whether or not the caller awaits it, and close() waits for it."""
        if not ids:
            return Settling([])
        settling, send = settle_by_unary(
            self._stub, self._subscription, kind, ids, nacks, self._retry
        )
        task = asyncio.create_task(send, name=f"packetbus-settle-{kind}")
        self._late.add(task)
        task.add_done_callback(self._late.discard)
        return settling

    def ack(self, *deliveries: Delivery | str) -> Settling:
        """Ack deliveries (or delivery ids): done with them, for good."""
        ids = [d if isinstance(d, str) else d.delivery_id for d in deliveries]
        if self._no_stream():
            return self._settle_now("ack", ids, [])
        self._outgoing.acks.extend(ids)
        return Settling([self._future("ack", i) for i in ids], self._unknown)

    def nack(
        self, *deliveries: Delivery | str, delay_seconds: int = 0, reason: str = ""
    ) -> Settling:
        """Give deliveries back: delivered again after `delay_seconds` (or, after the
        group's last attempt, moved to the carcel with `reason`)."""
        ids = [d if isinstance(d, str) else d.delivery_id for d in deliveries]
        nacks = [pb.Nacked(delivery_id=i, delay_seconds=delay_seconds, reason=reason) for i in ids]
        if self._no_stream():
            return self._settle_now("nack", ids, nacks)
        self._outgoing.nacks.extend(nacks)
        self._nacks.update((n.delivery_id, n) for n in nacks)
        return Settling([self._future("nack", i) for i in ids], self._unknown)

    def release(self, *deliveries: Delivery | str) -> Settling:
        """Give deliveries back without counting the attempt: for deliveries not
        looked at. They are delivered again at once, with the same delivery count;
        past the group's max_delivery_attempts releases of one packet (at least 10),
        a release counts the attempt as a nack does (PullRequest's Nacked.release)."""
        ids = [d if isinstance(d, str) else d.delivery_id for d in deliveries]
        nacks = [pb.Nacked(delivery_id=i, release=True) for i in ids]
        if self._no_stream():
            return self._settle_now("nack", ids, nacks)
        self._outgoing.nacks.extend(nacks)
        self._nacks.update((n.delivery_id, n) for n in nacks)
        return Settling([self._future("nack", i) for i in ids], self._unknown)

    def extend(self, *deliveries: Delivery | str) -> Settling:
        """Renew leases for a full ack deadline from now."""
        ids = [d if isinstance(d, str) else d.delivery_id for d in deliveries]
        if self._no_stream():
            return self._settle_now("extend", ids, [])
        self._outgoing.extends.extend(ids)
        return Settling([self._future("extend", i) for i in ids], self._unknown)

    def _resolve(self, result: pb.SettleResult) -> None:
        key = (_KINDS.get(result.settlement, ""), result.delivery_id)
        futures = self._waiting.get(key)
        if not futures:
            return
        future = futures.pop(0)
        if not futures:
            del self._waiting[key]
            if key[0] == "nack":
                self._nacks.pop(key[1], None)
        if not future.done():
            future.set_result(result)

    async def _requests(self, stream: int) -> AsyncIterator[pb.PullRequest]:
        yield pb.PullRequest(subscription=self._subscription)
        while True:
            await self._unsent.wait()
            if stream != self._stream:
                # A broken stream's request iterator lives on (gRPC does not cancel
                # it): what it took now would be written to a finished call and lost.
                return
            self._unsent.clear()
            out, self._outgoing = self._outgoing, Outgoing()
            for request in out.requests():
                # A stream that broke meanwhile gets no more: what it did not take
                # is still unconfirmed, and _resend_unconfirmed sends it again.
                if stream != self._stream:
                    return
                yield request
            if self._closing:
                # Half-close: the server confirms what was sent, then ends the stream.
                return

    def _end_stream(self) -> None:
        """Forget the Pull call that ended: its request iterator stops taking settlements."""
        self._call = None
        self._stream += 1
        self._unsent.set()  # wakes it to see that, and end, not wait forever

    def _resend_unconfirmed(self) -> None:
        """Queue every settlement not yet confirmed to be sent (again) on the next stream."""
        out = Outgoing()
        for (kind, ident), futures in self._waiting.items():
            if not futures:
                continue
            if kind == "ack":
                out.acks.append(ident)
            elif kind == "extend":
                out.extends.append(ident)
            else:
                out.nacks.append(self._nacks.get(ident) or pb.Nacked(delivery_id=ident))
        self._outgoing = out
        if out:
            self._unsent.set()

    async def _settle_unary(self) -> None:
        """Send unconfirmed settlements as unary calls (after a stream broke)."""
        self._outgoing = Outgoing()
        pending = [k for k, v in self._waiting.items() if v]
        acks = [i for kind, i in pending if kind == "ack"]
        extends = [i for kind, i in pending if kind == "extend"]
        # Each nack as it was asked for (a release must stay a release).
        nacks = [
            self._nacks.get(i) or pb.Nacked(delivery_id=i) for kind, i in pending if kind == "nack"
        ]
        topic, group = self._subscription.topic, self._subscription.group
        most = SETTLEMENTS_PER_REQUEST  # per call: the server refuses more
        calls = [
            unary_settle(
                self._stub,
                topic,
                group,
                kind,
                ids[start : start + most],
                kind_nacks[start : start + most],
                self._retry,
            )
            for kind, ids, kind_nacks in (
                ("ack", acks, []),
                ("nack", [n.delivery_id for n in nacks], nacks),
                ("extend", extends, []),
            )
            for start in range(0, len(ids), most)
        ]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("settling after a broken stream failed: %s", outcome)
                continue
            for result in outcome.results:
                self._resolve(result)

    # -- deliveries --------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        while not self._buffer:
            batch = await self._next_batch()
            if batch is None:
                raise StopAsyncIteration
            self._buffer = list(reversed(batch))
        return self._buffer.pop()

    async def batches(self) -> AsyncIterator[list[Delivery]]:
        """Deliveries as they arrive, a batch at a time."""
        while True:
            if self._buffer:
                batch, self._buffer = list(reversed(self._buffer)), []
            else:
                got = await self._next_batch()
                if got is None:
                    return
                batch = got
            if batch:
                yield batch

    async def _next_batch(self) -> list[Delivery] | None:
        if self._closed:
            return None
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later read fails the same way
            raise item
        return item

    async def _read(self) -> None:
        """Read the stream (reopening it after UNAVAILABLE): settlement results are
        resolved here, deliveries queued for the iterator. Reading never waits for
        the iterator, so awaiting a settlement cannot block on it."""
        backoff = self._new_backoff()
        failing_since: float | None = None
        try:
            while True:
                if self._call is None:
                    self._call = self._stub.Pull(self._requests(self._stream))
                try:
                    response = await self._call.read()
                except grpc.aio.AioRpcError as exc:
                    self._end_stream()
                    if exc.code() not in _RECONNECT and not credential_expired(exc):
                        raise PacketbusError.from_rpc_error(exc, changes=False) from None
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > self._retry.reconnect_window:
                        raise PacketbusError.from_rpc_error(exc, changes=False) from None
                    # Whatever the lost stream did not confirm goes out again first
                    # on the next one (a settlement already done is answered as done).
                    self._resend_unconfirmed()
                    await asyncio.sleep(backoff())
                    continue
                if response is grpc.aio.EOF:
                    self._end_stream()
                    if self._closing:
                        return
                    self._resend_unconfirmed()
                    continue
                failing_since = None
                for result in response.settled:
                    self._resolve(result)
                if not response.deliveries:
                    continue
                if self._closing:
                    # Arrived while closing: not handed out, given back at once.
                    self.release(*(d.delivery_id for d in response.deliveries))
                    continue
                self._queue.put_nowait(
                    [
                        Delivery(
                            d.delivery_id, d.delivery_count, d.lease_expires_at, d.packet, self
                        )
                        for d in response.deliveries
                    ]
                )
        except PacketbusError as exc:
            self._queue.put_nowait(exc)
        except CLOSED as exc:
            # The client's channel is closed: the iterator must not wait for more.
            # (Cancelled by close(), the queue is not read anymore either.)
            self._end_stream()
            self._queue.put_nowait(client_closed())
            if own_cancellation(exc):
                raise

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every settlement made so far is confirmed (or `timeout` passes)."""
        futures: list[asyncio.Future[Any]] = [f for fs in self._waiting.values() for f in fs]
        futures += self._late
        if futures:
            await asyncio.wait(futures, timeout=timeout)

    async def close(self, timeout: float = 10.0) -> None:
        """Send and confirm the settlements made so far, then end the stream.

        Deliveries received but never handed out are released: back to the
        group at once, their attempt not counted.
        """
        if self._closed:
            return
        self._closing = True
        unseen = list(self._buffer)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, BaseException):
                unseen.extend(item)
        self._buffer = []
        reading = self._reader is not None and not self._reader.done()
        if unseen:
            self.release(*unseen)
        self._unsent.set()  # wakes the request stream, which then half-closes
        if reading and self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        if self._waiting:
            # Deliveries that came in after the half-close, or settlements the
            # stream did not confirm: settled by unary calls instead.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._settle_unary(), timeout)
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._late:  # settlements sent as unary calls (see _no_stream)
            await asyncio.wait(self._late, timeout=timeout)
        for (_, ident), futures in self._waiting.items():
            if any(not f.done() for f in futures):
                # Sent on a stream, or by a unary call, with no answer: it may be done.
                self._unknown.add(ident)
            for future in futures:
                if not future.done():
                    future.set_result(
                        pb.SettleResult(
                            delivery_id=ident,
                            status={
                                "code": code_pb2.CANCELLED,
                                "message": "the consumer closed before the server confirmed",
                            },
                        )
                    )
        self._waiting.clear()
