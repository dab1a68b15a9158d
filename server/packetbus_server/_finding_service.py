"""FindingService: findings per task, conflict detection and events, escalation to a human."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

import grpc
from google.protobuf import timestamp_pb2

from packetbus.v1 import finding_service_pb2 as pb
from packetbus.v1 import finding_service_pb2_grpc, packet_pb2, packet_service_pb2

from . import _status
from ._admission import admit
from ._clock import StoreClock
from ._conflicts import Conflict, Fact, all_conflicts, conflicts_with, subject_of
from ._custodian import Custodian
from ._derived import DEFAULT_THRESHOLD, conflict_event, room_violations
from ._field_rules import validate_id
from ._finding_escalations import Escalations
from ._finding_export import finding_pages
from ._finding_store import FindingStore, StoredFinding
from ._key_store import KeyStore
from ._limits import Limits
from ._observability import counting
from ._packet_service import PacketService
from ._packet_writes import PacketWrite
from ._packing import fit, message_size, stored_size
from ._page_tokens import seal, unseal
from ._paging import offset_request, page_by_offset
from ._placed_export import Page
from ._placed_packets import FINDING, Place, PlacedPackets
from ._storage_errors import storage_errors
from ._store import PacketStore
from ._validation import Violation

if TYPE_CHECKING:
    from ._policy_service import Governor


def _conflict_message(task_id: str, c: Conflict) -> pb.FindingConflict:
    return pb.FindingConflict(
        task_id=task_id,
        subject=c.first.subject,
        first_finding_id=c.first.finding_id,
        second_finding_id=c.second.finding_id,
        reason=c.reason,
    )


def _finding_size(finding: StoredFinding) -> int:
    """About how many bytes a finding takes as a StoredPacket."""
    return stored_size(len(finding.payload), finding.content_length)


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
        *,
        clock: StoreClock,
        governor: Governor | None = None,
        placed: PlacedPackets | None = None,
    ) -> None:
        self._store = store
        # Notes where each finding packet lives, so GetPacket and VerifyCustody find it.
        self._placed = placed
        if placed is not None:
            placed.serve(FINDING, self._placed_packet)
        # The policy in force judges each posted finding (_governance).
        self._governor = governor
        # The store's clock: times are judged and stamped by it, as every replica does.
        self._clock = clock
        self._packet_store = packet_store
        self._packets = packets
        self._key_store = key_store
        self._custodian = custodian
        self._limits = limits
        # Escalate and ListEscalations (_finding_escalations).
        self._escalations = Escalations(store, packet_store, packets, custodian, limits)

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
        # Named by its tracking id when it has no id of its own (the packet, which may
        # be signed, stays as it was sent).
        finding_id = finding.id or packet.tracking_id
        subject = subject_of(finding.claim, finding.subject)

        async def escalatable(write: PacketWrite) -> None:
            # Refused before anything is stored (and before the policy judges it): a
            # finding that could never be escalated alone, or whose conflict events
            # could not be published.
            too_large = room_violations(
                self._custodian.server_id,
                finding.task_id,
                finding_id,
                subject,
                write.payload,
                self._limits.max_packet_bytes,
            )
            if too_large:
                await _status.abort_invalid(context, "finding too large to escalate", too_large)

        write, now_ns = await admit(
            context,
            packet,
            violations,
            what="finding",
            limits=self._limits,
            key_store=self._key_store,
            custodian=self._custodian,
            clock=self._clock,
            governor=self._governor,
            check_write=escalatable,
        )
        fact = Fact(finding_id, write.fingerprint, finding.refutes, finding.confidence, subject)
        place = Place(FINDING, finding.task_id, finding.task_id, finding_id)
        async with storage_errors(context):
            if self._placed is not None:
                await self._placed.refuse_if_taken(packet.tracking_id, place, context)
            status, earlier = await self._store.post(
                finding.task_id,
                fact,
                write.payload,
                write.content_length,
                now_ns // 1_000_000 + write.ttl_ms,
            )
        counting.posted(counting.FINDING, status, len(write.payload))
        if status == "conflict":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"finding {finding_id!r} of task {finding.task_id!r} is another packet's",
                "FINDING_ID_IN_USE",
            )
        if self._placed is not None:
            async with storage_errors(context):
                await self._placed.note(
                    packet.tracking_id, place, now_ns // 1_000_000 + write.ttl_ms
                )
        conflicts = conflicts_with(fact, earlier, DEFAULT_THRESHOLD)
        # Published on every post, new or repeated: the events' tracking ids are
        # derived from the pair, so a retry stores each event once.
        if conflicts:
            await self._publish(context, finding.task_id, conflicts, packet.dispatched_at)
        payload, content_length = write.payload, write.content_length
        if status == "dup":
            # The original result: the packet first posted (its chain, its stamps),
            # not this resend, which may be stamped and signed anew.
            async with storage_errors(context):
                found = await self._store.get(finding.task_id, [finding_id])
            if found:
                payload, content_length = found[0].payload, found[0].content_length
        stored = self._vouched(payload, content_length)
        messages = [_conflict_message(finding.task_id, c) for c in conflicts]
        # With the finding, in one reply: the rest are DetectConflicts' to list.
        room = self._limits.reply_budget_bytes - stored.ByteSize()
        kept = fit(map(message_size, messages), room)
        return pb.PostFindingResponse(
            finding=stored,
            created=status == "new",
            conflicts=messages[:kept],
            conflicts_truncated=kept < len(messages),
        )

    async def _publish(
        self,
        context: grpc.aio.ServicerContext,
        task_id: str,
        conflicts: Sequence[Conflict],
        when: timestamp_pb2.Timestamp,
    ) -> None:
        events = [
            conflict_event(
                self._custodian.server_id,
                task_id,
                c.first.subject,
                (c.first.finding_id, c.second.finding_id),
                c.reason,
                when,
            )
            for c in conflicts
        ]
        # The server's own packets, for a post findings.post let in.
        response = await self._packets.dispatch(
            packet_service_pb2.DispatchRequest(packets=events), context, checks_sender=False
        )
        failed = [r for r in response.results if r.WhichOneof("outcome") == "error"]
        if failed:
            await context.abort(
                _status.grpc_code(failed[0].error.code),
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
        scope = (request.task_id,)
        start = offset_request(
            violations, unseal(violations, "findings", scope, request.page_token)
        )
        if violations:
            await _status.abort_invalid(context, "invalid task", violations)

        async def read(offset: int, count: int) -> tuple[list[tuple[int, StoredFinding]], int]:
            return await self._store.page(request.task_id, offset, count)

        async with storage_errors(context):
            found, token = await page_by_offset(
                read, start, _finding_size, self._limits.reply_budget_bytes
            )
        return pb.ListFindingsResponse(
            findings=[self._vouched(f.payload, f.content_length) for f in found],
            next_page_token=seal("findings", scope, token),
        )

    def export_pages(self, task_id: str, after: str | None) -> AsyncGenerator[Page, None]:
        """ExportPackets of `task_id`'s findings after cursor `after`, as GetFinding
        shows them (see _finding_export.finding_pages)."""
        return finding_pages(
            self._store, task_id, after, lambda f: _stored(f.payload, f.content_length)
        )

    async def _placed_packet(self, place: Place) -> packet_service_pb2.StoredPacket | None:
        """The finding packet at `place`, as GetFinding shows it (no head yet)."""
        found = await self._store.get(place.scope, [place.item])
        return _stored(found[0].payload, found[0].content_length) if found else None

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
        # Offsets count the conflicts found at one threshold.
        scope = (request.task_id, threshold)
        start = offset_request(
            violations, unseal(violations, "conflicts", scope, request.page_token)
        )
        if not 0 <= threshold <= 1:
            violations.append(Violation("threshold", "RANGE", "must be in [0, 1]"))
        if violations:
            await _status.abort_invalid(context, "invalid conflict check", violations)
        async with storage_errors(context):
            facts = await self._store.facts(request.task_id)
        # Each pair of a task's findings can conflict: a page ends at the budget
        # (the token is an offset: conflicts come in posting order, new ones after).
        conflicts = [_conflict_message(request.task_id, c) for c in all_conflicts(facts, threshold)]

        async def read(offset: int, count: int) -> tuple[list[tuple[int, pb.FindingConflict]], int]:
            rows = list(enumerate(conflicts[offset : offset + count], offset))
            return rows, offset + len(rows)

        found, token = await page_by_offset(
            read, start, message_size, self._limits.reply_budget_bytes, chunk=1000
        )
        return pb.DetectConflictsResponse(
            conflicts=found, next_page_token=seal("conflicts", scope, token)
        )

    async def Escalate(
        self, request: pb.EscalateRequest, context: grpc.aio.ServicerContext
    ) -> pb.EscalateResponse:
        return await self._escalations.escalate(request, context)

    async def ListEscalations(
        self, request: pb.ListEscalationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEscalationsResponse:
        return await self._escalations.list_escalations(request, context)
