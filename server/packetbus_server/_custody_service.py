"""CustodyService: keys, agent identities, verification and export of chains of custody."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

import grpc

from packetbus import _custody, _ed25519
from packetbus.v1 import (
    custody_pb2,
    custody_service_pb2,
    custody_service_pb2_grpc,
    policy_service_pb2,
)

from . import _access, _export_token, _status
from ._access import Permission
from ._access.gate import deny
from ._carcel_service import entry_message, record_size
from ._carcel_store import CarcelStore
from ._clock import StoreClock
from ._cursors import cursor_millis
from ._custodian import principal_name
from ._field_rules import validate_agent_id, validate_timestamp, validate_topic
from ._key_store import KeyStore, Registration
from ._limits import Limits
from ._packet_service import PacketService
from ._packing import FIRST_READ, message_size, packs, read_count
from ._placed_export import Page, check, export_replies, source
from ._policy_store import DecisionRow, PolicyStore
from ._storage_errors import storage_errors
from ._store import PacketStore
from ._stored_packets import entry_size, stored_packet
from ._validation import Violation

_EXPORT_BATCH = 200
# Placed packets' export pages of a name after a cursor (TaskService.export_pages,
# FindingService.export_pages, RecordService.export_pages).
PlacedPages = Callable[[str, str | None], AsyncGenerator[Page, None]]
# The largest sequence part of a stream id: "<ms - 1>-<this>" is just before ms.
_MAX_SEQUENCE = 2**64 - 1


def _decision(row: DecisionRow) -> policy_service_pb2.PolicyDecisionRecord:
    record = policy_service_pb2.PolicyDecisionRecord(
        id=row.id,
        topic=row.topic,
        tracking_id=row.tracking_id,
        decision=row.kind,
        rule_id=row.rule_id,
        reason=row.reason,
        policy_version=row.version,
        actor=row.actor,
    )
    record.decided_at.FromMilliseconds(cursor_millis(row.id))
    return record


class CustodyService(custody_service_pb2_grpc.CustodyServiceServicer):
    def __init__(
        self,
        store: PacketStore,
        key_store: KeyStore,
        packets: PacketService,
        limits: Limits,
        *,
        carcel: CarcelStore | None = None,
        policy: PolicyStore | None = None,
        clock: StoreClock,
    ) -> None:
        self._carcel = carcel
        # The store's clock: times are judged and stamped by it, as every replica does.
        self._clock = clock
        self._policy = policy
        self._store = store
        self._key_store = key_store
        self._packets = packets
        self._limits = limits
        self._placed_pages: dict[str, PlacedPages] = {}

    def serve_placed(self, section: str, pages: PlacedPages) -> None:
        """Export the placed packets of `section` (_placed_export: TASKS, FINDINGS, RECORDS)
        with `pages` (their service registers it)."""
        self._placed_pages[section] = pages

    async def GetSigningKeys(
        self,
        request: custody_service_pb2.GetSigningKeysRequest,
        context: grpc.aio.ServicerContext,
    ) -> custody_service_pb2.GetSigningKeysResponse:
        async with storage_errors(context):
            keys = await self._key_store.all()
        ordered = sorted(
            keys.values(), key=lambda k: (k.owner_kind, k.owner, k.valid_from.ToNanoseconds())
        )
        return custody_service_pb2.GetSigningKeysResponse(keys=ordered)

    async def RegisterAgentKey(
        self,
        request: custody_service_pb2.RegisterAgentKeyRequest,
        context: grpc.aio.ServicerContext,
    ) -> custody_service_pb2.RegisterAgentKeyResponse:
        violations: list[Violation] = []
        validate_agent_id(violations, "agent_id", request.agent_id)
        problem = _ed25519.public_key_problem(request.public_key)
        if problem:
            violations.append(Violation("public_key", "PUBLIC_KEY", problem))
        if len(request.proof) != _ed25519.SIGNATURE_BYTES:
            violations.append(
                Violation("proof", "SIGNATURE_LENGTH", f"must be {_ed25519.SIGNATURE_BYTES} bytes")
            )
        if request.endorsing_key_id and len(request.endorsement) != _ed25519.SIGNATURE_BYTES:
            violations.append(
                Violation(
                    "endorsement", "SIGNATURE_LENGTH", f"must be {_ed25519.SIGNATURE_BYTES} bytes"
                )
            )
        if violations:
            await _status.abort_invalid(context, "invalid key registration", violations)

        message = _custody.agent_key_message(request.agent_id, request.public_key)
        if not _ed25519.verify(request.public_key, message, request.proof):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "proof does not verify: sign the registration message with the key being "
                "registered",
            )
        if request.endorsing_key_id:
            async with storage_errors(context):
                found = await self._key_store.get_many([request.endorsing_key_id])
            endorser = found.get(request.endorsing_key_id)
            if endorser is None or endorser.owner != request.agent_id:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"key {request.endorsing_key_id} is not a key of agent {request.agent_id!r}",
                )
                raise AssertionError("context.abort always raises")
            if not _ed25519.verify(endorser.public_key, message, request.endorsement):
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"endorsement does not verify with key {request.endorsing_key_id}",
                )

        key = custody_pb2.SigningKey(
            key_id=_custody.key_id_for(request.public_key),
            public_key=request.public_key,
            owner_kind=custody_pb2.KEY_OWNER_KIND_AGENT,
            owner=request.agent_id,
        )
        key.valid_from.FromNanoseconds(self._clock.now_ns())
        async with storage_errors(context):
            outcome = await self._key_store.register_agent(
                key,
                endorsing_key_id=request.endorsing_key_id,
                principal=principal_name(),
                may_act=_access.may_act_as(request.agent_id),
            )
            if outcome is Registration.EXISTS:
                key = (await self._key_store.get_many([key.key_id]))[key.key_id]
        if outcome is Registration.BOUND:
            # The agent's keys belong to another principal (issue 14: no first-come
            # hijack): keys.manage alone does not let a caller add one.
            principal = _access.caller()
            assert principal is not None  # only an authenticated caller is ever refused
            await deny(context, principal, _access.Permission.AGENTS_ACT_FOR, request.agent_id)
        if outcome is Registration.TAKEN:
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"key {key.key_id} is already registered to another owner",
                "KEY_ID_IN_USE",
            )
        if outcome is Registration.NEEDS_ENDORSEMENT:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"agent {request.agent_id!r} already has a key; endorse the new one with it "
                "(endorsing_key_id, endorsement)",
            )
        return custody_service_pb2.RegisterAgentKeyResponse(key=key)

    async def VerifyCustody(
        self,
        request: custody_service_pb2.VerifyCustodyRequest,
        context: grpc.aio.ServicerContext,
    ) -> custody_service_pb2.VerifyCustodyResponse:
        # audit.export on the packet's topic, once it is read (NOT_FOUND without it:
        # see PacketService.load).
        stored = await self._packets.load(
            request.tracking_id, context, read_as=Permission.AUDIT_EXPORT
        )
        chain = stored.packet.chain_of_custody
        head = stored.custody_head if stored.HasField("custody_head") else None
        async with storage_errors(context):
            keys = await self._key_store.get_many(
                [e.key_id for e in chain] + ([head.key_id] if head else [])
            )
        report = _custody.verify_chain(
            tracking_id=request.tracking_id,
            content=stored.content,
            chain=chain,
            keys=keys,
            head=head,
        )
        return custody_service_pb2.VerifyCustodyResponse(
            verified=report.verified,
            entries=[
                custody_service_pb2.EntryVerdict(
                    index=e.index,
                    verdict=e.verdict,  # type: ignore[arg-type]
                    detail=e.detail,
                    key_id=e.key_id,
                    action=e.action,
                    actor=e.actor,
                    principal=e.principal,
                )
                for e in report.entries
            ],
            head_verdict=report.head_verdict,  # type: ignore[arg-type]
            packet=stored,
        )

    async def ExportPackets(
        self,
        request: custody_service_pb2.ExportPacketsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[custody_service_pb2.ExportPacketsResponse]:
        # Here, not at the gate: which permission depends on what is exported.
        placed = source(request)
        if placed is not None:
            await _access.require(context, placed.permission, placed.name)
        else:
            await _access.require(context, Permission.AUDIT_EXPORT, request.topic)
        violations: list[Violation] = []
        if placed is not None:
            check(violations, request, self._limits.max_topic_length)
        elif request.topic:
            validate_topic(violations, "topic", request.topic, self._limits.max_topic_length)
        # Checked before ToMilliseconds, which raises on an out-of-range Timestamp.
        since_ok = not request.HasField("since") or validate_timestamp(
            violations, "since", request.since
        )
        until_ok = not request.HasField("until") or validate_timestamp(
            violations, "until", request.until
        )
        if not (since_ok and until_ok):
            await _status.abort_invalid(context, "invalid export", violations)
        since_ms = request.since.ToMilliseconds() if request.HasField("since") else 0
        until_ms = request.until.ToMilliseconds() if request.HasField("until") else None
        if since_ms < 0:
            violations.append(Violation("since", "RANGE", "must not be before 1970"))
        if until_ms is not None and until_ms < since_ms:
            violations.append(Violation("until", "RANGE", "must not be before since"))
        position = (
            _export_token.decode(violations, request, self._limits.max_topic_length)
            if request.resume_token
            else None
        )
        if violations:
            await _status.abort_invalid(context, "invalid export", violations)
        mark = _export_token.fingerprint(request)
        if placed is not None:
            pages_of = self._placed_pages.get(placed.section)
            if pages_of is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not exported by this server")
                raise AssertionError("context.abort always raises")
            after = position.cursor if position is not None else None
            async with aclosing(pages_of(placed.name, after)) as pages:
                budget = self._limits.reply_budget_bytes
                vouch = self._packets.attach_head
                async for response, last in export_replies(
                    context, pages, vouch, budget, since_ms, until_ms
                ):
                    response.resume_token = _export_token.encode(
                        mark, _export_token.Position(placed.slot, placed.section, last)
                    )
                    yield response
            return
        # Stream ids start with their ms: the range is a pair of ids.
        start = f"{since_ms - 1}-{_MAX_SEQUENCE}" if since_ms > 0 else "0-0"
        high = f"{until_ms}-{_MAX_SEQUENCE}" if until_ms is not None else "+"
        async with storage_errors(context):
            # By name, so that a resumed export (maybe on another replica) walks the
            # topics in the same order and skips exactly those already done.
            topics = [request.topic] if request.topic else sorted(await self._store.topics())
        if position is not None:
            topics = [position.topic, *(t for t in topics if t > position.topic)]
        wanted = {
            _export_token.PACKETS: True,
            _export_token.CARCEL: request.include_carcel_entries and self._carcel is not None,
            _export_token.DECISIONS: request.include_decisions and self._policy is not None,
        }
        for topic in topics:
            for section in _export_token.SECTIONS:
                if not wanted[section]:
                    continue
                after = start
                if position is not None and topic == position.topic:
                    if _export_token.SECTIONS.index(section) < _export_token.SECTIONS.index(
                        position.section
                    ):
                        continue
                    if section == position.section:
                        after = position.cursor
                if section == _export_token.PACKETS:
                    parts = self._export_packets(context, topic, after, until_ms)
                elif section == _export_token.CARCEL:
                    parts = self._export_carcel(context, topic, after, until_ms)
                else:
                    parts = self._export_decisions(context, topic, after, high)
                async for response, last in parts:
                    response.resume_token = _export_token.encode(
                        mark, _export_token.Position(topic, section, last)
                    )
                    yield response

    async def _export_packets(
        self, context: grpc.aio.ServicerContext, topic: str, cursor: str, until_ms: int | None
    ) -> AsyncIterator[tuple[custody_service_pb2.ExportPacketsResponse, str]]:
        """Stored packets after `cursor`, each reply with its last packet's cursor."""
        budget = self._limits.reply_budget_bytes
        count = FIRST_READ
        while True:
            async with storage_errors(context):
                page = await self._store.read_range(topic, cursor, count=count)
            if page.last_cursor is None:
                return
            cursor = page.last_cursor
            # About one reply's worth per read: large packets a few at a time.
            count = read_count(page.entries, entry_size, budget, _EXPORT_BATCH)
            batch = []
            for e in page.entries:
                if until_ms is not None and cursor_millis(e.cursor) > until_ms:
                    break
                stored = stored_packet(
                    topic, e.cursor, e.expires_at_ms, e.payload, e.content_length
                )
                self._packets.attach_head(stored)
                batch.append(stored)
            for part in packs(batch, message_size, budget):
                yield (
                    custody_service_pb2.ExportPacketsResponse(packets=part),
                    part[-1].receipt.cursor,
                )
            if until_ms is not None and cursor_millis(cursor) > until_ms:
                return

    async def _export_carcel(
        self, context: grpc.aio.ServicerContext, topic: str, after: str, until_ms: int | None
    ) -> AsyncIterator[tuple[custody_service_pb2.ExportPacketsResponse, str]]:
        assert self._carcel is not None
        cursor: str | None = None if after == "0-0" else after
        budget = self._limits.reply_budget_bytes
        count = FIRST_READ
        while True:
            async with storage_errors(context):
                records = await self._carcel.page(topic, cursor, count)
            if not records:
                return
            cursor = records[-1].id
            count = read_count(records, record_size, budget, _EXPORT_BATCH)
            entries = []
            for record in records:
                if until_ms is not None and record.carceled_at_ms > until_ms:
                    break
                entry = entry_message(record)
                self._packets.attach_head(entry.packet)
                entries.append(entry)
            for part in packs(entries, message_size, budget):
                yield custody_service_pb2.ExportPacketsResponse(carcel_entries=part), part[-1].id
            if len(entries) < len(records):
                return

    async def _export_decisions(
        self, context: grpc.aio.ServicerContext, topic: str, start: str, high: str
    ) -> AsyncIterator[tuple[custody_service_pb2.ExportPacketsResponse, str]]:
        assert self._policy is not None
        low = start if start == "0-0" else f"({start}"
        while True:
            async with storage_errors(context):
                rows = await self._policy.decisions(topic, low, high, _EXPORT_BATCH)
            if not rows:
                return
            low = f"({rows[-1].id}"
            decisions = [_decision(row) for row in rows]
            for part in packs(decisions, message_size, self._limits.reply_budget_bytes):
                yield custody_service_pb2.ExportPacketsResponse(decisions=part), part[-1].id
