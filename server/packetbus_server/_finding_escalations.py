"""Escalation to a human: FindingService's Escalate (an ESCALATE packet carrying the
findings, dispatched on the caller's behalf) and ListEscalations (the escalations
topic read back).

Apart from the findings themselves (_finding_service) because escalations live on
a topic (through PacketService and the packet store), not in the finding store;
FindingService's two RPCs hand over to `Escalations`.
"""

from __future__ import annotations

import grpc

from packetbus.v1 import finding_service_pb2 as pb
from packetbus.v1 import packet_pb2, packet_service_pb2

from . import _status
from ._access import binding
from ._custodian import Custodian
from ._derived import ESCALATIONS_TOPIC, MAX_ESCALATION_REASON_BYTES
from ._derived import escalation as derived_escalation
from ._field_rules import validate_agent_id, validate_id
from ._fields import is_stream_id, utf8_length
from ._finding_store import FindingStore
from ._limits import Limits
from ._packet_service import PacketService
from ._packing import FIRST_READ, ITEM_OVERHEAD, message_size, read_count
from ._page_tokens import seal, unseal
from ._storage_errors import storage_errors
from ._store import PacketStore
from ._stored_packets import entry_size
from ._validation import Violation

# The most escalations one read of the topic asks for.
_PAGE = 500


class Escalations:
    """Escalate and ListEscalations, for FindingService."""

    def __init__(
        self,
        store: FindingStore,
        packet_store: PacketStore,
        packets: PacketService,
        custodian: Custodian,
        limits: Limits,
    ) -> None:
        self._store = store
        self._packet_store = packet_store
        self._packets = packets
        self._custodian = custodian
        self._limits = limits

    async def escalate(
        self, request: pb.EscalateRequest, context: grpc.aio.ServicerContext
    ) -> pb.EscalateResponse:
        """Escalate: an ESCALATE packet carrying the named findings, dispatched to the
        escalations topic on the caller's behalf."""
        violations: list[Violation] = []
        validate_id(violations, "task_id", request.task_id)
        validate_agent_id(violations, "origin", request.origin)
        if not request.reason:
            violations.append(Violation("reason", "REQUIRED", "say why a human is needed"))
        elif utf8_length(request.reason) > MAX_ESCALATION_REASON_BYTES:
            violations.append(
                Violation(
                    "reason", "LENGTH", f"at most {MAX_ESCALATION_REASON_BYTES} bytes (UTF-8)"
                )
            )
        if not request.finding_ids:
            violations.append(Violation("finding_ids", "REQUIRED", "at least one finding"))
        if violations:
            await _status.abort_invalid(context, "invalid escalation", violations)
        await binding.require_acting(context, request.origin, "origin")
        async with storage_errors(context):
            found = await self._store.get(request.task_id, list(request.finding_ids))
        missing = set(request.finding_ids) - {f.finding_id for f in found}
        if missing:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no finding {sorted(missing)[0]!r} of task {request.task_id!r}",
            )
        escalation = derived_escalation(
            self._custodian.server_id,
            request.task_id,
            request.origin,
            request.reason,
            request.finding_ids,
            [f.payload for f in found],
        )
        # The escalation carries the findings whole: any one fits (PostFinding saw to
        # it), but several together may not, which is the caller's to split.
        size = escalation.ByteSize()
        if size > self._limits.max_packet_bytes:
            await _status.abort_invalid(
                context,
                "escalation too large",
                [
                    Violation(
                        "finding_ids",
                        "ESCALATION_TOO_LARGE",
                        f"the escalation packet carrying these {len(found)} findings would be "
                        f"{size} bytes; the packet limit is {self._limits.max_packet_bytes}: "
                        "escalate fewer findings per call",
                    )
                ],
            )
        # The server's packet on the caller's behalf: findings.post let the call in,
        # and its origin is bound above; the escalations topic is not the caller's.
        response = await self._packets.dispatch(
            packet_service_pb2.DispatchRequest(packets=[escalation]), context, checks_sender=False
        )
        # Dispatch judged it by the policy in force, the caller as its origin
        # (_governance): a rejection fails the call with the rule (its ErrorInfo),
        # a hold answers the packet as held.
        [result] = response.results
        outcome = result.WhichOneof("outcome")
        if outcome == "error":
            await _status.abort_with(context, result.error)
        if outcome == "held":
            held = packet_service_pb2.StoredPacket(packet=escalation)
            held.receipt.topic = ESCALATIONS_TOPIC
            return pb.EscalateResponse(escalation=held, held=result.held)
        stored = await self._packets.load(escalation.tracking_id, context, read_as=None)
        return pb.EscalateResponse(escalation=stored)

    async def list_escalations(
        self, request: pb.ListEscalationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEscalationsResponse:
        """ListEscalations: the escalations topic's packets (of one task when asked),
        with signed heads, a reply budget per page."""
        violations: list[Violation] = []
        scope = (request.task_id,)
        after = unseal(violations, "escalations", scope, request.page_token)
        if after and not is_stream_id(after):
            violations.append(
                Violation("page_token", "PAGE_TOKEN", "is not a token from a previous response")
            )
        if violations:
            await _status.abort_invalid(context, "invalid escalation listing", violations)
        out: list[packet_service_pb2.StoredPacket] = []
        cursor = after or "0-0"
        budget, total, count = self._limits.reply_budget_bytes, 0, FIRST_READ
        async with storage_errors(context):
            while True:
                page = await self._packet_store.read_range(ESCALATIONS_TOPIC, cursor, count=count)
                count = read_count(page.entries, entry_size, budget, _PAGE)
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
                    total += message_size(stored) + ITEM_OVERHEAD
                    if out and total > budget:
                        # The next page starts after the last one returned.
                        return pb.ListEscalationsResponse(
                            escalations=out,
                            next_page_token=seal("escalations", scope, out[-1].receipt.cursor),
                        )
                    out.append(stored)
                if page.last_cursor is None:
                    break
                cursor = page.last_cursor
        return pb.ListEscalationsResponse(escalations=out)
