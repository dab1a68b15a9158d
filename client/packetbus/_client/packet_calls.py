"""Client calls on packets themselves: dispatch (batched), fetch, follow, server health."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import cast

from grpc_health.v1 import health_pb2, health_pb2_grpc

from packetbus import _tracing
from packetbus.v1 import packet_pb2, packet_service_pb2, packet_service_pb2_grpc

from .._errors import PacketbusError
from .core import ClientCore
from .packet_defaults import fill_defaults, tracked
from .subscription import LATEST, GapHandler, StartPosition, Subscription


class PacketCalls(ClientCore):
    """Dispatch, fetch and subscribe; the server's info and health."""

    async def dispatch(
        self, packet: packet_pb2.Packet, *, timeout: float | None = None
    ) -> packet_service_pb2.Receipt:
        """Store one packet (batched with others behind the scenes) and return its receipt.

        Fills the tracking id, schema version and dispatch time in place when
        they are missing. Raises `PacketbusError` when the packet is rejected
        (INVALID_ARGUMENT with field violations, ALREADY_EXISTS) or the call fails.
        Concurrent dispatches are not ordered relative to each other; await each
        one, or use `dispatch_batch`, when order matters. With OpenTelemetry and a
        span current, a producer span covers the send and the packet carries its
        context (README "Traces").
        """
        with _tracing.producing(tracked(packet)):
            return await self._dispatch_one(packet, timeout)

    async def _dispatch_one(
        self, packet: packet_pb2.Packet, timeout: float | None
    ) -> packet_service_pb2.Receipt:
        fill_defaults(packet, self._config.identity)
        # The batcher fails the future with DEADLINE_EXCEEDED at the deadline; a
        # caller cancelled meanwhile cancels only its own future.
        future = await self._batcher.submit(packet, self._deadline(timeout))
        result = await future
        if result.WhichOneof("outcome") == "error":
            raise PacketbusError.from_status(result.error)
        return result.receipt

    async def dispatch_batch(
        self, packets: Sequence[packet_pb2.Packet], *, timeout: float | None = None
    ) -> list[packet_service_pb2.DispatchResult]:
        """Store `packets` in one call; one result per packet, in order.

        A rejected packet is reported in its own result (its ``error``), not
        raised; `PacketbusError` is raised only when the call as a whole fails.
        With OpenTelemetry and a span current, a producer span per packet.
        """
        traced = _tracing.current()  # looked up once per call, not per packet
        with contextlib.ExitStack() as spans:
            for packet in packets:
                if traced:
                    spans.enter_context(_tracing.producing(tracked(packet)))
                fill_defaults(packet, self._config.identity)
            return list(await self._send_batch(packets, self._deadline(timeout)))

    async def _send_batch(
        self, packets: Sequence[packet_pb2.Packet], deadline: float
    ) -> Sequence[packet_service_pb2.DispatchResult]:
        # dispatch_batch stays a unary call: its batches are the caller's own, large
        # enough that the per-call cost is spread thin, and awaited one call each;
        # the stream pays off for dispatch()'s small, frequent batches.
        stub = self._dispatchers[self._turn % len(self._dispatchers)]
        self._turn += 1
        return await self._send_on(stub, packets, deadline)

    async def _send_dispatched(
        self, packets: Sequence[packet_pb2.Packet], deadline: float
    ) -> Sequence[packet_service_pb2.DispatchResult]:
        """A batch of dispatch(): on its connection's DispatchStream, if it has one."""
        if not self._streams:
            return await self._send_batch(packets, deadline)
        stream = self._streams[self._turn % len(self._streams)]
        self._turn += 1
        return await stream.send(packets, deadline)

    async def _send_on(
        self,
        stub: packet_service_pb2_grpc.PacketServiceStub,
        packets: Sequence[packet_pb2.Packet],
        deadline: float,
    ) -> Sequence[packet_service_pb2.DispatchResult]:
        """One unary Dispatch call over `stub`, retried within `deadline`."""
        request = packet_service_pb2.DispatchRequest(packets=packets)
        response = await self._unary(
            lambda remaining: stub.Dispatch(request, timeout=remaining), deadline
        )
        return cast(Sequence[packet_service_pb2.DispatchResult], response.results)

    async def flush(self) -> None:
        """Wait until every packet handed to `dispatch` so far has its result."""
        await self._batcher.flush()

    async def get_packet(
        self, tracking_id: str, *, timeout: float | None = None
    ) -> packet_service_pb2.StoredPacket:
        """Fetch a stored packet; NOT_FOUND when it was never stored or has expired."""
        request = packet_service_pb2.GetPacketRequest(tracking_id=tracking_id)
        response = await self._call(self._stub.GetPacket, request, timeout)
        return cast(packet_service_pb2.StoredPacket, response.packet)

    async def server_info(
        self, *, timeout: float | None = None
    ) -> packet_service_pb2.GetServerInfoResponse:
        return await self._call(
            self._stub.GetServerInfo, packet_service_pb2.GetServerInfoRequest(), timeout
        )

    async def health(self, *, service: str = "", timeout: float | None = None) -> str:
        """The server's grpc.health.v1 status name: "SERVING" only while its store answers."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._call(stub.Check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def subscribe(
        self,
        topic: str,
        *,
        start: StartPosition = LATEST,
        after: str | None = None,
        max_batch_packets: int = 0,
        timeout: float | None = None,
        on_gap: GapHandler | None = None,
    ) -> Subscription:
        """Follow `topic`: an async iterator of StoredPacket, in stored order.

        Starts at `start` (EARLIEST or LATEST), or right after cursor `after`.
        After a lost connection it resumes after the last packet it yielded, so
        nothing is skipped or repeated. `timeout` bounds the whole subscription
        (None: until closed).

        Packets it can no longer deliver (removed by retention, or expired,
        before it got to them) are never skipped silently: iteration raises
        `SubscriptionGapError` (DATA_LOSS, with the `SubscriptionGap`), after
        which iterating again continues past the gap; or, with `on_gap`, that
        callback gets the gap and iteration goes on.
        """
        return Subscription(
            self._stub,
            topic,
            start=start,
            after=after,
            max_batch_packets=max_batch_packets,
            deadline=None if timeout is None else time.monotonic() + timeout,
            retry=self._config.retry,
            on_gap=on_gap,
        )
