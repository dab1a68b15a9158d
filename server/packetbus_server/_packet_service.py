"""PacketService: a thin gRPC layer over the ingest pipeline and the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from google.rpc import code_pb2, status_pb2

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc

from . import _status
from ._access import Permission, allows, binding
from ._access.caller_info import describe_caller
from ._access.gate import recheck
from ._batch_refs import stored_once
from ._clock import StoreClock
from ._custodian import Custodian, check_origin
from ._dispatch_stream import answer_batches
from ._field_rules import validate_topic, validate_tracking_id
from ._fields import is_stream_id
from ._ingest import Accepted, Rejected, accept
from ._key_store import KeyStore
from ._limits import Limits
from ._observability import counting, metrics, tracing
from ._packet_writes import Outcome
from ._storage_errors import storage_errors
from ._store import PacketStore
from ._stored_packets import fill_receipt, stored_packet
from ._subscription import follow_topic
from ._validation import SUPPORTED_SCHEMA_VERSIONS, Violation
from ._worker_ports import WorkerPorts

if TYPE_CHECKING:
    from ._placed_packets import PlacedPackets
    from ._policy_service import Governor


class PacketService(packet_service_pb2_grpc.PacketServiceServicer):
    def __init__(
        self,
        store: PacketStore,
        key_store: KeyStore,
        custodian: Custodian,
        limits: Limits,
        *,
        version: str,
        max_subscribers: int,
        governor: Governor | None = None,
        published_limits: packet_service_pb2.Limits | None = None,
        clock: StoreClock,
        workers: WorkerPorts | None = None,
    ) -> None:
        self._governor = governor
        # GetServerInfo names the workers' own ports (serve --workers; see _worker_ports).
        self._workers = workers
        # The store's clock: expiry and custody times are judged and stamped by it.
        self._clock = clock
        # What GetServerInfo tells: `limits` and the serving settings (stream caps,
        # keepalive) of the ServerConfig this runs under.
        self._published = published_limits or limits.to_proto()
        self._store = store
        self._key_store = key_store
        self._custodian = custodian
        self._limits = limits
        self._version = version
        self._subscribers = asyncio.Semaphore(max_subscribers)
        # Task, finding and record packets (serve_placed): none until the app wires them.
        self._placed: PlacedPackets | None = None

    async def Dispatch(
        self, request: packet_service_pb2.DispatchRequest, context: grpc.aio.ServicerContext
    ) -> packet_service_pb2.DispatchResponse:
        return await self.dispatch(request, context, checks_sender=True)

    # Answers go out serialized (_dispatch_stream.answered), which _handlers accepts.
    def DispatchStream(  # type: ignore[override]
        self,
        requests: AsyncIterator[packet_service_pb2.DispatchStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes | packet_service_pb2.DispatchStreamResponse]:
        # Each batch served as a Dispatch call (_dispatch_stream).
        return answer_batches(
            requests, context, self._stream_batch, self._limits.max_dispatch_stream_batches
        )

    async def _stream_batch(
        self, request: packet_service_pb2.DispatchStreamRequest, context: grpc.aio.ServicerContext
    ) -> packet_service_pb2.DispatchResponse:
        # The stream's credential judged again before each batch is written, not
        # only before its answer goes out: a batch sent after the token expired (or
        # a reload revoked what let the stream in) is refused unwritten, and the
        # stream then ends with that status (_handlers' recheck before the answer).
        await recheck(context)
        return await self.dispatch(request, context, checks_sender=True)

    async def dispatch(
        self,
        request: packet_service_pb2.DispatchRequest | packet_service_pb2.DispatchStreamRequest,
        context: grpc.aio.ServicerContext,
        *,
        checks_sender: bool,
    ) -> packet_service_pb2.DispatchResponse:
        """Dispatch `request`'s packets (a Dispatch call's, or a batch of a
        DispatchStream), each with its own result. `checks_sender`:
        each packet needs topics.publish on its topic and an origin the caller may
        act as (a caller's Dispatch); False for the server's own packets (an
        escalation, a conflict event) sent on behalf of a call another rule let in."""
        if not checks_sender:
            return await self._dispatch(request, context, checks_sender=False)
        # A caller's batch, answered or refused: its time in packetbus_dispatch_seconds.
        via = "unary" if isinstance(request, packet_service_pb2.DispatchRequest) else "stream"
        started = time.perf_counter()
        try:
            return await self._dispatch(request, context, checks_sender=True)
        finally:
            metrics.dispatch_seconds.labels(via).observe(time.perf_counter() - started)

    async def _dispatch(
        self,
        request: packet_service_pb2.DispatchRequest | packet_service_pb2.DispatchStreamRequest,
        context: grpc.aio.ServicerContext,
        *,
        checks_sender: bool,
    ) -> packet_service_pb2.DispatchResponse:
        count = len(request.packets)
        if count == 0:
            await _status.abort_invalid(
                context,
                "empty dispatch",
                [Violation("packets", "REQUIRED", "at least one packet is required")],
            )
        if count > self._limits.max_batch_packets:
            await _status.abort_invalid(
                context,
                "batch too large",
                [
                    Violation(
                        "packets",
                        "BATCH_TOO_LARGE",
                        f"{count} packets in one call; the limit is "
                        f"{self._limits.max_batch_packets}",
                    )
                ],
            )

        tracer = tracing.active
        started_ns = time.time_ns() if tracer is not None else 0
        response = packet_service_pb2.DispatchResponse()
        results = [response.results.add() for _ in range(count)]
        now_ns = self._clock.now_ns()
        accepted: list[tuple[int, Accepted]] = []
        senders = binding.SenderCheck() if checks_sender else None
        # Refusals are few: kept to be counted once, at the end, by reason.
        refused_here: list[status_pb2.Status] = []
        for i, packet in enumerate(request.packets):
            outcome = accept(packet, self._limits, now_ns)
            if isinstance(outcome, Rejected):
                results[i].tracking_id = packet.tracking_id
                results[i].error.CopyFrom(
                    _status.bad_request("packet rejected", outcome.violations)
                )
                refused_here.append(results[i].error)
                continue
            # Who may send it, once it is known to be well formed, before anything
            # is looked up, governed or stored: topics.publish on its topic, and its
            # origin the caller's own agent id or one it may act for. Each packet
            # its own answer (DESIGN 2.1); a refused one leaves no trace.
            refusal = senders.refusal(packet.topic, packet.origin, i) if senders else None
            if refusal is not None:
                results[i].tracking_id = packet.tracking_id
                results[i].error.CopyFrom(refusal)
                refused_here.append(refusal)
            else:
                accepted.append((i, outcome))

        signed = [(i, a) for i, a in accepted if a.packet.chain_of_custody]
        if signed:
            async with storage_errors(context):
                keys = await self._key_store.get_many(
                    [a.packet.chain_of_custody[0].key_id for _, a in signed]
                )
            refused = set()
            for i, a in signed:
                problem = check_origin(a.packet, a.content, keys)
                if problem is not None:
                    results[i].tracking_id = a.packet.tracking_id
                    results[i].error.CopyFrom(
                        _status.status(problem.code.value[0], problem.message)
                    )
                    refused_here.append(results[i].error)
                    refused.add(i)
            accepted = [(i, a) for i, a in accepted if i not in refused]

        # Governance: validate -> govern -> sign -> persist. With no policy in
        # force this is one attribute check.
        if self._governor is not None and accepted:
            accepted = await self._governor.judge(accepted, results, now_ns, context)

        # The server's two entries per packet stored once per call, as one signed
        # batch the packets refer to (_batch_refs).
        pairs = [(a.packet, a.content) for _, a in accepted]
        writes = stored_once([a for _, a in accepted], self._custodian.seal_batch(pairs, now_ns))
        async with storage_errors(context):
            stored = await self._store.write(writes, time_remaining=context.time_remaining())

        decided_before: list[tuple[int, str, str]] = []
        new = new_bytes = duplicates = conflicts = 0
        for (i, _), write, result in zip(accepted, writes, stored, strict=True):
            results[i].tracking_id = write.tracking_id
            if result.outcome is Outcome.DUPLICATE and not result.cursor[:1].isdigit():
                # A policy rejected or held this packet in an earlier dispatch.
                decided_before.append((i, write.topic, write.tracking_id))
            elif result.outcome is Outcome.CONFLICT:
                conflicts += 1
                results[i].error.CopyFrom(
                    _status.with_reason(
                        code_pb2.ALREADY_EXISTS,
                        f"tracking_id {write.tracking_id} is already used by a different packet",
                        "TRACKING_ID_IN_USE",
                    )
                )
            else:
                if result.outcome is Outcome.STORED:
                    new += 1
                    new_bytes += len(write.payload)
                else:
                    duplicates += 1
                fill_receipt(results[i].receipt, write.topic, result.cursor, result.expires_at_ms)
        # Once per batch (the metrics' cost stays off the per-packet path).
        counting.stored(counting.PACKET, new, new_bytes)
        counting.deduplicated(duplicates + len(decided_before))
        counting.rejected_as("ALREADY_EXISTS", conflicts)
        if refused_here:
            counting.rejected(refused_here)
        if decided_before and self._governor is not None:
            await self._governor.report(results, decided_before, context)
        if tracer is not None:
            tracer.dispatched(
                context,
                [
                    (p, r.error.message if r.HasField("error") else None)
                    for p, r in zip(request.packets, results, strict=True)
                ],
                started_ns,
            )
        return response

    async def GetPacket(
        self, request: packet_service_pb2.GetPacketRequest, context: grpc.aio.ServicerContext
    ) -> packet_service_pb2.GetPacketResponse:
        return packet_service_pb2.GetPacketResponse(
            packet=await self.load(request.tracking_id, context)
        )

    async def load(
        self,
        tracking_id: str,
        context: grpc.aio.ServicerContext,
        *,
        read_as: Permission | None = Permission.TOPICS_SUBSCRIBE,
    ) -> packet_service_pb2.StoredPacket:
        """The stored packet with a freshly signed head, or the RPC fails with why not.

        `read_as`: the permission the caller needs on the packet's topic (and, for
        topics.subscribe, an inbox read only by its agent); None: the caller was
        let in by another rule. A task, finding or record packet (_placed_packets)
        needs instead the permission its own Get call needs, on its queue, task or
        record kind. A caller without it is answered NOT_FOUND, as if
        the packet were not there: a tracking id names no topic, so a refusal
        would tell an outsider that a packet exists under an id it guessed (and
        on which topic).
        """
        violations = validate_tracking_id(tracking_id)
        if violations:
            await _status.abort_invalid(context, "invalid tracking id", violations)
        async with storage_errors(context):
            found = await self._store.get(tracking_id, time_remaining=context.time_remaining())
            placed = (
                await self._placed.get(tracking_id)
                if found is None and self._placed is not None
                else None
            )
        if placed is not None:
            # A task, finding or record packet: read with the permission its own Get
            # call needs (GetTask's tasks.read on its queue, ...), whatever `read_as`.
            place, stored = placed
            if read_as is not None and not allows(place.permission, place.resource):
                placed = None
        if found is not None and self._may_read(found.topic, read_as):
            stored = stored_packet(
                found.topic, found.cursor, found.expires_at_ms, found.payload, found.content_length
            )
        elif placed is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no packet with tracking_id {tracking_id} (never stored, or expired)",
            )
            raise AssertionError("context.abort always raises")
        self.attach_head(stored)
        return stored

    def serve_placed(self, placed: PlacedPackets) -> None:
        """Answer for task, finding and record packets too, found in `placed`."""
        self._placed = placed

    @staticmethod
    def _may_read(topic: str, read_as: Permission | None) -> bool:
        if read_as is None:
            return True
        if not allows(read_as, topic):
            return False
        return read_as is not Permission.TOPICS_SUBSCRIBE or binding.inbox_refusal(topic) is None

    def attach_head(self, stored: packet_service_pb2.StoredPacket) -> None:
        """Vouch, with a signature, for the chain as it is now."""
        self._custodian.vouch(stored)

    async def Subscribe(  # type: ignore[override]
        self, request: packet_service_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[packet_service_pb2.SubscribeResponse | bytes]:
        violations: list[Violation] = []
        validate_topic(violations, "topic", request.topic, self._limits.max_topic_length)
        start = request.WhichOneof("start")
        if start == "after_cursor" and not is_stream_id(request.after_cursor):
            violations.append(
                Violation(
                    "after_cursor",
                    "CURSOR_FORMAT",
                    "after_cursor must be a cursor from a receipt, like 1700000000000-0",
                )
            )
        batch = request.max_batch_packets or self._limits.default_subscribe_batch_packets
        if batch > self._limits.max_subscribe_batch_packets:
            violations.append(
                Violation(
                    "max_batch_packets",
                    "BATCH_TOO_LARGE",
                    f"max_batch_packets must be at most {self._limits.max_subscribe_batch_packets}",
                )
            )
        if violations:
            await _status.abort_invalid(context, "invalid subscription", violations)

        if self._subscribers.locked():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "this server has reached its subscription limit; try another replica or later",
            )
        async with (
            self._subscribers,
            storage_errors(context, retry_hint="resume after your last cursor"),
        ):
            async for response in follow_topic(
                self._store, self._clock, self._limits, request, batch, context
            ):
                yield response

    async def GetServerInfo(
        self, request: packet_service_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> packet_service_pb2.GetServerInfoResponse:
        return packet_service_pb2.GetServerInfoResponse(
            version=self._version,
            supported_schema_versions=SUPPORTED_SCHEMA_VERSIONS,
            limits=self._published,
            server_id=self._custodian.server_id,
            workers=None
            if self._workers is None
            else self._workers.describe(assign=request.assign_worker),
            caller=describe_caller(),
        )
