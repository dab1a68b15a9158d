"""FindingService: findings per task, conflict detection and events, escalation to a human."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2

from packetbus.v1 import finding_service_pb2 as pb
from packetbus.v1 import finding_service_pb2_grpc, packet_pb2, packet_service_pb2, speech_act_pb2

from . import _status
from ._admission import admit
from ._conflicts import Conflict, Fact, all_conflicts, conflicts_with, subject_of
from ._custodian import Custodian
from ._finding_store import FindingStore
from ._key_store import KeyStore
from ._limits import Limits
from ._packet_service import PacketService, storage_errors
from ._store import PacketStore
from ._validation import Violation, validate_agent_id, validate_id

CONFLICTS_TOPIC = "findings.conflicts"
ESCALATIONS_TOPIC = "escalations"
DEFAULT_THRESHOLD = 0.3
# Conflict events and escalations are kept as long as the bus keeps anything.
_EVENT_TTL_SECONDS = 86400
_EVENT_NAMESPACE = uuid.UUID("8f0c1c1e-4bb1-4a57-9c55-7a3e1f5f6a01")
_PAGE = 500


def _conflict_message(task_id: str, c: Conflict) -> pb.FindingConflict:
    return pb.FindingConflict(
        task_id=task_id,
        subject=c.first.subject,
        first_finding_id=c.first.finding_id,
        second_finding_id=c.second.finding_id,
        reason=c.reason,
    )


def _stored(payload: bytes, content_length: int) -> packet_service_pb2.StoredPacket:
    return packet_service_pb2.StoredPacket(
        packet=packet_pb2.Packet.FromString(payload), content=payload[:content_length]
    )


class FindingService(finding_service_pb2_grpc.FindingServiceServicer):
    def __init__(
        self,
        store: FindingStore,
        packet_store: PacketStore,
        packets: PacketService,
        key_store: KeyStore,
        custodian: Custodian,
        limits: Limits,
    ) -> None:
        self._store = store
        self._packet_store = packet_store
        self._packets = packets
        self._key_store = key_store
        self._custodian = custodian
        self._limits = limits

    async def PostFinding(
        self, request: pb.PostFindingRequest, context: grpc.aio.ServicerContext
    ) -> pb.PostFindingResponse:
        packet = request.packet
        violations: list[Violation] = []
        if packet.WhichOneof("contents") != "finding":
            violations.append(
                Violation("packet.finding", "REQUIRED", "a finding's packet holds a Finding")
            )
        finding = packet.finding
        if not finding.task_id:  # its format is the packet's to check
            violations.append(
                Violation("packet.finding.task_id", "REQUIRED", "a finding names its task")
            )
        write, now_ns = await admit(
            context,
            packet,
            violations,
            what="finding",
            limits=self._limits,
            key_store=self._key_store,
            custodian=self._custodian,
        )
        # Named by its tracking id when it has no id of its own (the packet, which may
        # be signed, stays as it was sent).
        finding_id = finding.id or packet.tracking_id
        fact = Fact(
            finding_id,
            write.fingerprint,
            finding.refutes,
            finding.confidence,
            subject_of(finding.claim, finding.subject),
        )
        async with storage_errors(context):
            status, earlier = await self._store.post(
                finding.task_id,
                fact,
                write.payload,
                write.content_length,
                now_ns // 1_000_000 + write.ttl_ms,
            )
        if status == "conflict":
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"finding {finding_id!r} of task {finding.task_id!r} is another packet's",
            )
        conflicts = conflicts_with(fact, earlier, DEFAULT_THRESHOLD)
        # Published on every post, new or repeated: the events' tracking ids are
        # derived from the pair, so a retry stores each event once.
        if conflicts:
            await self._publish(context, finding.task_id, conflicts, packet.dispatched_at)
        return pb.PostFindingResponse(
            finding=self._vouched(write.payload, write.content_length),
            created=status == "new",
            conflicts=[_conflict_message(finding.task_id, c) for c in conflicts],
        )

    def _server_packet(self, topic: str, act: int, data: dict[str, Any]) -> packet_pb2.Packet:
        packet = packet_pb2.Packet(
            tracking_id=str(uuid.uuid4()),
            origin=self._custodian.server_id,
            schema_version="1.0",
            speech_act=act,  # type: ignore[arg-type]
            topic=topic,
            ttl_seconds=_EVENT_TTL_SECONDS,
        )
        packet.data.update(data)
        return packet

    async def _publish(
        self,
        context: grpc.aio.ServicerContext,
        task_id: str,
        conflicts: Sequence[Conflict],
        when: timestamp_pb2.Timestamp,
    ) -> None:
        events = []
        for c in conflicts:
            event = self._server_packet(
                CONFLICTS_TOPIC,
                speech_act_pb2.SPEECH_ACT_INFORM,
                {
                    "task_id": task_id,
                    "subject": c.first.subject,
                    "first_finding_id": c.first.finding_id,
                    "second_finding_id": c.second.finding_id,
                    "reason": c.reason,
                },
            )
            pair = f"{task_id}\n{c.first.finding_id}\n{c.second.finding_id}"
            event.tracking_id = str(uuid.uuid5(_EVENT_NAMESPACE, pair))
            # The time is part of the content: the later finding's, so a retry of its
            # post publishes the very same packet.
            event.dispatched_at.CopyFrom(when)
            events.append(event)
        response = await self._packets.Dispatch(
            packet_service_pb2.DispatchRequest(packets=events), context
        )
        failed = [r for r in response.results if r.WhichOneof("outcome") == "error"]
        if failed:
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"the finding is stored, but a conflict event was not: {failed[0].error.message}"
                "; posting the finding again publishes it",
            )

    async def GetFinding(
        self, request: pb.GetFindingRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFindingResponse:
        violations: list[Violation] = []
        validate_id(violations, "task_id", request.task_id)
        if not request.finding_id:
            violations.append(Violation("finding_id", "REQUIRED", "is required"))
        if violations:
            await _status.abort_invalid(context, "invalid finding", violations)
        async with storage_errors(context):
            found = await self._store.get(request.task_id, [request.finding_id])
        if not found:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no finding {request.finding_id!r} of task {request.task_id!r}",
            )
        return pb.GetFindingResponse(
            finding=self._vouched(found[0].payload, found[0].content_length)
        )

    async def ListFindings(
        self, request: pb.ListFindingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListFindingsResponse:
        violations: list[Violation] = []
        validate_id(violations, "task_id", request.task_id)
        if violations:
            await _status.abort_invalid(context, "invalid task", violations)
        async with storage_errors(context):
            found = await self._store.get(request.task_id)
        return pb.ListFindingsResponse(
            findings=[self._vouched(f.payload, f.content_length) for f in found]
        )

    def _vouched(self, payload: bytes, content_length: int) -> packet_service_pb2.StoredPacket:
        """The finding packet with a signed head, so a reader can tell its chain is whole."""
        stored = _stored(payload, content_length)
        self._custodian.vouch(stored)
        return stored

    async def DetectConflicts(
        self, request: pb.DetectConflictsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetectConflictsResponse:
        violations: list[Violation] = []
        validate_id(violations, "task_id", request.task_id)
        threshold = request.threshold or DEFAULT_THRESHOLD
        if not 0 <= threshold <= 1:
            violations.append(Violation("threshold", "RANGE", "must be in [0, 1]"))
        if violations:
            await _status.abort_invalid(context, "invalid conflict check", violations)
        async with storage_errors(context):
            facts = await self._store.facts(request.task_id)
        return pb.DetectConflictsResponse(
            conflicts=[
                _conflict_message(request.task_id, c) for c in all_conflicts(facts, threshold)
            ]
        )

    async def Escalate(
        self, request: pb.EscalateRequest, context: grpc.aio.ServicerContext
    ) -> pb.EscalateResponse:
        violations: list[Violation] = []
        validate_id(violations, "task_id", request.task_id)
        validate_agent_id(violations, "origin", request.origin)
        if not request.reason:
            violations.append(Violation("reason", "REQUIRED", "say why a human is needed"))
        if not request.finding_ids:
            violations.append(Violation("finding_ids", "REQUIRED", "at least one finding"))
        if violations:
            await _status.abort_invalid(context, "invalid escalation", violations)
        async with storage_errors(context):
            found = await self._store.get(request.task_id, list(request.finding_ids))
        missing = set(request.finding_ids) - {f.finding_id for f in found}
        if missing:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no finding {sorted(missing)[0]!r} of task {request.task_id!r}",
            )
        escalation = self._server_packet(
            ESCALATIONS_TOPIC,
            speech_act_pb2.SPEECH_ACT_ESCALATE,
            {
                "task_id": request.task_id,
                "reason": request.reason,
                "findings": [
                    json_format.MessageToDict(packet_pb2.Packet.FromString(f.payload))
                    for f in found
                ],
            },
        )
        escalation.origin = request.origin
        response = await self._packets.Dispatch(
            packet_service_pb2.DispatchRequest(packets=[escalation]), context
        )
        [result] = response.results
        if result.WhichOneof("outcome") == "error":
            await context.abort(grpc.StatusCode.INTERNAL, result.error.message)
        stored = await self._packets.load(escalation.tracking_id, context)
        return pb.EscalateResponse(escalation=stored)

    async def ListEscalations(
        self, request: pb.ListEscalationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEscalationsResponse:
        out: list[packet_service_pb2.StoredPacket] = []
        cursor = "0-0"
        async with storage_errors(context):
            while True:
                page = await self._packet_store.read_range(ESCALATIONS_TOPIC, cursor, count=_PAGE)
                for e in page.entries:
                    packet = packet_pb2.Packet.FromString(e.payload)
                    task = packet.data.fields.get("task_id")
                    if request.task_id and (task is None or task.string_value != request.task_id):
                        continue
                    stored = packet_service_pb2.StoredPacket(
                        packet=packet, content=e.payload[: e.content_length]
                    )
                    stored.receipt.topic = ESCALATIONS_TOPIC
                    stored.receipt.cursor = e.cursor
                    self._custodian.vouch(stored)
                    out.append(stored)
                if page.last_cursor is None:
                    break
                cursor = page.last_cursor
        return pb.ListEscalationsResponse(escalations=out)
