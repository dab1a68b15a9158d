"""`Subscription`: following a topic, resumed after a lost connection, gaps reported."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeAlias, cast

import grpc

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc

from .._config import RetrySettings
from .._errors import CLOSED, PacketbusError, SubscriptionGapError, raise_closed
from .._retry_policy import credential_expired
from .._retrying import Backoff
from .._stopping import ClosedOnExit
from ..stream_start import start_cursor

StartPosition: TypeAlias = packet_service_pb2.StartPosition.ValueType
EARLIEST: StartPosition = packet_service_pb2.START_POSITION_EARLIEST
LATEST: StartPosition = packet_service_pb2.START_POSITION_LATEST

GapHandler: TypeAlias = Callable[[packet_service_pb2.SubscriptionGap], None]
# What a subscription hands out: packets, and the gaps announced before them.
_Item: TypeAlias = packet_service_pb2.StoredPacket | packet_service_pb2.SubscriptionGap


def _items(response: packet_service_pb2.SubscribeResponse | None) -> list[_Item]:
    """What a response hands out, in order: its gap (which comes before its packets), then them."""
    if response is None:
        return []
    gap = [response.gap] if response.HasField("gap") else []
    return [*gap, *response.packets]


class Subscription(ClosedOnExit):
    """An async iterator over a topic's packets; `cursor` is the last one yielded, or
    the end of the last gap it reported."""

    def __init__(
        self,
        stub: packet_service_pb2_grpc.PacketServiceStub,
        topic: str,
        *,
        start: StartPosition,
        after: str | None,
        max_batch_packets: int,
        deadline: float | None,
        retry: RetrySettings,
        on_gap: GapHandler | None = None,
    ) -> None:
        self._stub = stub
        self._topic = topic
        self._start = start
        self.cursor: str | None = after
        self._max_batch = max_batch_packets
        self._deadline = deadline
        self._retry = retry
        self._on_gap = on_gap
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._buffer: list[_Item] = []  # last first
        self._closed = False

    def _request(self) -> packet_service_pb2.SubscribeRequest:
        if self.cursor is not None:
            return packet_service_pb2.SubscribeRequest(
                topic=self._topic, after_cursor=self.cursor, max_batch_packets=self._max_batch
            )
        return packet_service_pb2.SubscribeRequest(
            topic=self._topic, start_position=self._start, max_batch_packets=self._max_batch
        )

    def __aiter__(self) -> AsyncIterator[packet_service_pb2.StoredPacket]:
        return self

    async def __anext__(self) -> packet_service_pb2.StoredPacket:
        while True:
            while not self._buffer:
                if self._closed:
                    raise StopAsyncIteration
                self._buffer = _items(await self._next_batch())
                self._buffer.reverse()
            item = self._buffer.pop()
            if isinstance(item, packet_service_pb2.StoredPacket):
                self.cursor = item.receipt.cursor
                return item
            self._pass_gap(item)

    def _pass_gap(self, gap: packet_service_pb2.SubscriptionGap) -> None:
        # Past the gap first: a caller that catches the error and iterates
        # again (or a reconnect) continues after it, and is not told twice.
        self.cursor = gap.resume_after_cursor
        if self._on_gap is None:
            raise SubscriptionGapError(gap)
        self._on_gap(gap)

    async def _next_batch(self) -> packet_service_pb2.SubscribeResponse | None:
        backoff = Backoff(self._retry)
        failing_since: float | None = None
        while True:
            if self._call is None:
                timeout = None if self._deadline is None else self._deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise PacketbusError(grpc.StatusCode.DEADLINE_EXCEEDED, "subscription ended")
            try:
                if self._call is None:
                    self._call = self._stub.Subscribe(self._request(), timeout=timeout)
                    if self.cursor is None:
                        # Opened at a position: where it starts is where it resumes,
                        # should it drop before delivering anything (stream_start).
                        self.cursor = start_cursor(await self._call.initial_metadata())
                response = await self._call.read()
            except CLOSED as exc:
                if self._closed:  # close() from another task cancels the read
                    return None
                self._call = None
                raise_closed(exc)
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return None
                self._call = None
                # Opened again after a lost connection, or with the current token
                # once the one it was opened with expired.
                if exc.code() != grpc.StatusCode.UNAVAILABLE and not credential_expired(exc):
                    raise PacketbusError.from_rpc_error(exc, changes=False) from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self._retry.reconnect_window:
                    raise PacketbusError.from_rpc_error(exc, changes=False) from None
                await asyncio.sleep(backoff.next_delay())
                continue
            if response is grpc.aio.EOF:
                self._call = None
                if self._closed:
                    return None
                continue
            return cast(packet_service_pb2.SubscribeResponse, response)

    async def close(self) -> None:
        self._closed = True
        self._buffer = []
        if self._call is not None:
            self._call.cancel()
            self._call = None
