"""CarcelService: list, read, requeue and purge carceled packets."""

from __future__ import annotations

import hashlib
import uuid

import grpc

from packetbus import _custody
from packetbus.v1 import carcel_service_pb2 as pb
from packetbus.v1 import carcel_service_pb2_grpc, packet_pb2

from . import _status
from ._carcel_store import CarcelRecord, CarcelStore, RequeueOutcome
from ._clock import StoreClock
from ._custodian import ChainEnd, Custodian, Hop, chain_end
from ._field_rules import validate_topic
from ._fields import is_stream_id
from ._limits import Limits
from ._packing import stored_size
from ._page_tokens import seal, unseal
from ._paging import page_across, page_request
from ._storage_errors import storage_errors
from ._store import PacketStore
from ._stored_packets import stored_packet
from ._validation import Violation, validate_packet

_SIGN_ROUNDS = 5


def record_size(record: CarcelRecord) -> int:
    """About how many bytes a carcel record takes as a CarcelEntry."""
    return (
        stored_size(len(record.stored) + sum(map(len, record.hops)), record.content_length)
        + len(record.reason)
        + len(record.detail)
        + len(record.source)
        + len(record.rule_id)
        + len(record.policy_version)
    )


def entry_message(record: CarcelRecord) -> pb.CarcelEntry:
    entry = pb.CarcelEntry(
        id=record.id,
        topic=record.topic,
        reason=record.reason,
        detail=record.detail,
        source=record.source,
        delivery_count=record.delivery_count,
        rule_id=record.rule_id,
        policy_version=record.policy_version,
    )
    entry.carceled_at.FromMilliseconds(record.carceled_at_ms)
    if is_stream_id(record.cursor):  # from a topic's log
        stored = stored_packet(
            record.topic,
            record.cursor,
            int(record.cursor.split("-")[0]) + record.ttl_ms,
            record.payload,
            record.content_length,
        )
    else:  # from a task queue ("task:<id>") or a policy ("policy"): no place in a log;
        # its TTL counts from the move
        stored = stored_packet(
            record.topic,
            "",
            record.carceled_at_ms + record.ttl_ms,
            record.payload,
            record.content_length,
            stored_at_ms=record.carceled_at_ms,
        )
    entry.packet.CopyFrom(stored)
    return entry


class CarcelService(carcel_service_pb2_grpc.CarcelServiceServicer):
    def __init__(
        self,
        store: CarcelStore,
        packets: PacketStore,
        custodian: Custodian,
        limits: Limits,
        *,
        clock: StoreClock,
    ) -> None:
        self._store = store
        # The store's clock: times are judged and stamped by it, as every replica does.
        self._clock = clock
        self._packets = packets
        self._custodian = custodian
        self._limits = limits

    def _check(self, topic: str, entry_id: str | None) -> list[Violation]:
        violations: list[Violation] = []
        validate_topic(violations, "topic", topic, self._limits.max_topic_length)
        if entry_id is not None and not is_stream_id(entry_id):
            violations.append(
                Violation(
                    "id", "CARCEL_ID_FORMAT", "must be a carcel entry id, like 1700000000000-0"
                )
            )
        return violations

    async def ListCarcelEntries(
        self, request: pb.ListCarcelEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCarcelEntriesResponse:
        violations: list[Violation] = []
        if request.topic:
            validate_topic(violations, "topic", request.topic, self._limits.max_topic_length)
        scope = (request.topic, request.reason)
        token = unseal(violations, "carcel", scope, request.page_token)
        page = page_request(violations, request.page_size, token, request.topic)
        if violations:
            await _status.abort_invalid(context, "invalid carcel listing", violations)

        async with storage_errors(context):
            topics = [request.topic] if request.topic else sorted(await self._packets.topics())
            records, token = await page_across(
                topics,
                page,
                self._store.page,
                lambda r: not request.reason or r.reason == request.reason,
                record_size,
                self._limits.reply_budget_bytes,
            )
        return pb.ListCarcelEntriesResponse(
            entries=[entry_message(r) for r in records],
            next_page_token=seal("carcel", scope, token),
        )

    async def _load(
        self, context: grpc.aio.ServicerContext, topic: str, entry_id: str
    ) -> CarcelRecord:
        violations = self._check(topic, entry_id)
        if violations:
            await _status.abort_invalid(context, "invalid carcel entry", violations)
        async with storage_errors(context):
            record = await self._store.get(topic, entry_id)
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no carcel entry {entry_id} on topic {topic!r} (requeued, purged or expired)",
            )
            raise AssertionError("context.abort always raises")
        return record

    async def GetCarcelEntry(
        self, request: pb.GetCarcelEntryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCarcelEntryResponse:
        record = await self._load(context, request.topic, request.id)
        return pb.GetCarcelEntryResponse(entry=entry_message(record))

    async def RequeueCarcelEntry(
        self, request: pb.RequeueCarcelEntryRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequeueCarcelEntryResponse:
        record = await self._load(context, request.topic, request.id)
        if record.rule_id:
            # Requeuing would let it past the policy that refused it.
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"entry {record.id} was refused by policy rule {record.rule_id!r}: it is not "
                "requeued; once the policy allows it, dispatch it again with a new tracking_id",
                "REFUSED_BY_POLICY",
            )
        # Re-validated as it would be dispatched: a packet let in under older
        # rules does not re-enter without meeting today's.
        content = packet_pb2.Packet.FromString(record.stored[: record.content_length])
        signed = packet_pb2.Packet.FromString(record.stored)
        if signed.schema_version == "1.1":
            content.chain_of_custody.extend(signed.chain_of_custody[:1])
        violations = validate_packet(content, self._limits)
        if violations:
            await _status.abort_invalid(
                context, "the carceled packet no longer passes validation", violations
            )
        end = chain_end(record.stored, record.content_length, record.hops)
        digest = hashlib.sha256(record.stored[: record.content_length]).digest()
        # Names this call to the script: its own retries (a reply lost on the way from
        # the store) answer as its first run did, while any other call, sent again or
        # at the same time, finds the entry gone (NOT_FOUND): one caller requeued it.
        call_id = uuid.uuid4().hex
        for _ in range(_SIGN_ROUNDS):
            signed_hops = self._custodian.sign_hops(
                [
                    Hop(
                        record.tracking_id,
                        digest,
                        end,
                        _custody.REQUEUED,
                        counterpart=record.source,
                        reason=f"requeued from the carcel ({record.reason})",
                    )
                ],
                self._clock.now_ns(),
            )
            hop = signed_hops[0] if signed_hops else None
            requeue = (
                self._store.requeue_task
                if record.source.startswith("queue:")
                else self._store.requeue
            )
            async with storage_errors(context):
                result = await requeue(
                    request.topic,
                    record,
                    end.hops,
                    hop.entry if hop else b"",
                    hop.hash if hop else b"",
                    call_id,
                )
            if result.outcome is RequeueOutcome.OK:
                return pb.RequeueCarcelEntryResponse(cursor=result.value)
            if result.outcome is RequeueOutcome.STALE:
                end = ChainEnd(end.ingest_entries, int(result.value), result.last_hash)
                continue
            if result.outcome is RequeueOutcome.GONE:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"carcel entry {request.id} was requeued or purged meanwhile",
                )
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot requeue: it came from {result.value!r}, which no longer exists",
                "SOURCE_GONE",
            )
        await context.abort(
            grpc.StatusCode.ABORTED, "the packet's chain kept changing; requeue again"
        )
        raise AssertionError("context.abort always raises")

    async def PurgeCarcelEntries(
        self, request: pb.PurgeCarcelEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeCarcelEntriesResponse:
        violations = self._check(request.topic, None)
        most = self._limits.max_batch_packets
        if len(request.ids) > most:
            # Counted before any id is read: an oversized request costs only its read.
            violations.append(
                Violation("ids", "BATCH_TOO_LARGE", f"at most {most} per call: purge the rest next")
            )
        for i, entry_id in enumerate(request.ids[:most]):
            if not is_stream_id(entry_id):
                violations.append(
                    Violation(f"ids[{i}]", "CARCEL_ID_FORMAT", "must be a carcel entry id")
                )
        if violations:
            await _status.abort_invalid(context, "invalid purge", violations)
        async with storage_errors(context):
            purged = await self._store.purge(request.topic, list(request.ids))
        return pb.PurgeCarcelEntriesResponse(purged=purged)
