"""RecordService: swarm records (session summaries, swarm registries, remediation scans)."""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import grpc

from packetbus.v1 import packet_pb2, packet_service_pb2, record_service_pb2_grpc
from packetbus.v1 import record_service_pb2 as pb

from . import _status
from ._access import Permission, require
from ._admission import admit
from ._clock import StoreClock
from ._custodian import Custodian
from ._field_rules import validate_tracking_id
from ._fields import utf8_length
from ._key_store import KeyStore
from ._limits import Limits
from ._observability import counting
from ._packing import fit, stored_size
from ._page_tokens import seal, unseal
from ._placed_export import Page
from ._placed_packets import RECORD, Place, PlacedPackets
from ._record_export import record_pages
from ._record_store import RecordStore, StoredRecord
from ._storage_errors import storage_errors
from ._validation import Violation

if TYPE_CHECKING:
    from ._policy_service import Governor

_DEFAULT_PAGE = 100
# The contents field of each kind, and the kind's name in keys.
_KINDS = {
    pb.RECORD_KIND_SESSION_SUMMARY: ("session_summary", "session"),
    pb.RECORD_KIND_SWARM_REGISTRY: ("swarm_registry", "swarm"),
    pb.RECORD_KIND_REMEDIATION_SCAN: ("remediation_scan", "remediation"),
}
_BY_FIELD = {field: kind for kind, (field, _) in _KINDS.items()}
# ASCII digits only: `\d` also takes other scripts' digits.
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_TOKEN = re.compile(r"[0-9]{1,20}:[0-9a-f-]{36}\Z")
_SHORT = 255
_MAX_ITEMS = 1000


def _record_size(record: StoredRecord) -> int:
    """About how many bytes a record takes as a StoredPacket."""
    return stored_size(len(record.payload), record.content_length)


def _stored(record: StoredRecord) -> packet_service_pb2.StoredPacket:
    return packet_service_pb2.StoredPacket(
        packet=packet_pb2.Packet.FromString(record.payload),
        content=record.payload[: record.content_length],
    )


def _text(out: list[Violation], path: str, value: str, *, required: bool = False) -> None:
    if required and not value:
        out.append(Violation(path, "REQUIRED", "is required"))
    elif utf8_length(value) > _SHORT:
        out.append(Violation(path, "LENGTH", f"must be at most {_SHORT} bytes (UTF-8)"))


def _date(out: list[Violation], path: str, value: str) -> None:
    if not value:
        return
    if not _DATE.match(value):
        out.append(Violation(path, "DATE_FORMAT", "must be YYYY-MM-DD"))
        return
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        out.append(Violation(path, "DATE_RANGE", "must be a calendar date (YYYY-MM-DD)"))


def _many(out: list[Violation], path: str, count: int) -> None:
    if count > _MAX_ITEMS:
        out.append(Violation(path, "LENGTH", f"at most {_MAX_ITEMS} items"))


def check_contents(packet: packet_pb2.Packet) -> list[Violation]:
    """The record rules the packet's own validation does not know."""
    out: list[Violation] = []
    kind = packet.WhichOneof("contents")
    if kind == "session_summary":
        s = packet.session_summary
        _text(out, "packet.session_summary.label", s.label, required=True)
        _date(out, "packet.session_summary.date", s.date)
        _many(out, "packet.session_summary.agents", len(s.agents))
        _many(out, "packet.session_summary.metrics", len(s.metrics))
    elif kind == "swarm_registry":
        r = packet.swarm_registry
        _text(out, "packet.swarm_registry.swarm_id", r.swarm_id, required=True)
        _text(out, "packet.swarm_registry.coordinator", r.coordinator)
        _many(out, "packet.swarm_registry.members", len(r.members))
        for i, m in enumerate(r.members):
            _text(out, f"packet.swarm_registry.members[{i}].agent_id", m.agent_id, required=True)
    elif kind == "remediation_scan":
        scan = packet.remediation_scan
        _text(out, "packet.remediation_scan.scan_type", scan.scan_type, required=True)
        _date(out, "packet.remediation_scan.date", scan.date)
        _many(out, "packet.remediation_scan.violations", len(scan.violations))
        for path, n in (
            ("items_scanned", scan.items_scanned),
            ("items_remediated", scan.items_remediated),
        ):
            if n < 0:
                out.append(Violation(f"packet.remediation_scan.{path}", "RANGE", "must be >= 0"))
    else:
        out.append(
            Violation(
                "packet.contents",
                "REQUIRED",
                "a record's packet holds a session_summary, swarm_registry or remediation_scan",
            )
        )
    return out


class RecordService(record_service_pb2_grpc.RecordServiceServicer):
    def __init__(
        self,
        store: RecordStore,
        key_store: KeyStore,
        custodian: Custodian,
        limits: Limits,
        *,
        clock: StoreClock,
        governor: Governor | None = None,
        placed: PlacedPackets | None = None,
    ) -> None:
        self._store = store
        # Notes where each record packet lives, so GetPacket and VerifyCustody find it.
        self._placed = placed
        if placed is not None:
            placed.serve(RECORD, self._placed_packet)
        # The policy in force judges each record (_governance).
        self._governor = governor
        # The store's clock: times are judged and stamped by it, as every replica does.
        self._clock = clock
        self._key_store = key_store
        self._custodian = custodian
        self._limits = limits
        self._default_ttl = {
            pb.RECORD_KIND_SESSION_SUMMARY: limits.session_summary_ttl_seconds,
            pb.RECORD_KIND_SWARM_REGISTRY: limits.swarm_registry_ttl_seconds,
            pb.RECORD_KIND_REMEDIATION_SCAN: limits.remediation_scan_ttl_seconds,
        }

    async def PutRecord(
        self, request: pb.PutRecordRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutRecordResponse:
        packet = request.packet
        field = packet.WhichOneof("contents") or ""
        if field in _BY_FIELD:
            # The rule's in-service part (permissions.RULES): records.write on the
            # kind, named as its contents field, before the request is looked at.
            await require(context, Permission.RECORDS_WRITE, field)
        violations = check_contents(packet)
        if not 0 <= request.retention_seconds <= self._limits.max_record_ttl_seconds:
            violations.append(
                Violation(
                    "retention_seconds",
                    "RANGE",
                    f"must be 0..{self._limits.max_record_ttl_seconds}",
                )
            )
        write, now_ns = await admit(
            context,
            packet,
            violations,
            what="record",
            limits=self._limits,
            key_store=self._key_store,
            custodian=self._custodian,
            clock=self._clock,
            governor=self._governor,
            request_fields=(f"retention {request.retention_seconds}",),
        )
        kind = _BY_FIELD[packet.WhichOneof("contents") or ""]
        _, key_kind = _KINDS[kind]
        retention = request.retention_seconds or self._default_ttl[kind]
        now_ms = now_ns // 1_000_000
        # Its read permission is granted on the contents field's name.
        place = Place(RECORD, _KINDS[kind][0], key_kind, packet.tracking_id)
        async with storage_errors(context):
            if self._placed is not None:
                await self._placed.refuse_if_taken(packet.tracking_id, place, context)
            status, earlier = await self._store.put(
                key_kind,
                packet.tracking_id,
                write.fingerprint,
                write.payload,
                write.content_length,
                now_ms=now_ms,
                expires_ms=now_ms + retention * 1000,
            )
        counting.posted(counting.RECORD, status, len(write.payload))
        if status == "conflict":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"record {packet.tracking_id} is another packet",
                "TRACKING_ID_IN_USE",
            )
        if self._placed is not None:
            async with storage_errors(context):
                await self._placed.note(packet.tracking_id, place, now_ms + retention * 1000)
        stored = (
            self._stored(earlier)
            if earlier is not None
            else self._stored(StoredRecord(packet.tracking_id, write.payload, write.content_length))
        )
        return pb.PutRecordResponse(
            kind=kind, record_id=packet.tracking_id, record=stored, created=status == "new"
        )

    def export_pages(self, kind_name: str, after: str | None) -> AsyncGenerator[Page, None]:
        """ExportPackets of the records of `kind_name` (a RecordKind as its contents
        field is named, "session_summary") after cursor `after`, as GetRecord shows
        them (no head yet: see _record_export.record_pages)."""
        key_kind = next(k for field, k in _KINDS.values() if field == kind_name)
        return record_pages(self._store, key_kind, after, _stored)

    async def _kind(
        self, context: grpc.aio.ServicerContext, kind: int, violations: list[Violation]
    ) -> str:
        if kind not in _KINDS:
            violations.append(Violation("kind", "REQUIRED", "name a record kind"))
        if violations:
            await _status.abort_invalid(context, "invalid record request", violations)
        return _KINDS[kind][1]  # type: ignore[index]

    async def _placed_packet(self, place: Place) -> packet_service_pb2.StoredPacket | None:
        """The record packet at `place`, as GetRecord shows it (no head yet)."""
        found = await self._store.get(place.scope, place.item)
        return None if found is None else _stored(found)

    def _stored(self, record: StoredRecord) -> packet_service_pb2.StoredPacket:
        """The record's packet with a signed head, so a reader can tell its chain is whole."""
        stored = _stored(record)
        self._custodian.vouch(stored)
        return stored

    async def GetRecord(
        self, request: pb.GetRecordRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRecordResponse:
        violations = [
            Violation("record_id", v.rule, v.description)
            for v in validate_tracking_id(request.record_id)
        ]
        key_kind = await self._kind(context, request.kind, violations)
        async with storage_errors(context):
            found = await self._store.get(key_kind, request.record_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no record {request.record_id}")
        assert found is not None
        return pb.GetRecordResponse(record=self._stored(found))

    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecordsResponse:
        violations: list[Violation] = []
        if not 0 <= request.page_size <= self._limits.max_record_page:
            violations.append(
                Violation("page_size", "RANGE", f"must be 0..{self._limits.max_record_page}")
            )
        scope = (request.kind,)
        after = unseal(violations, "records", scope, request.page_token)
        if after and not _TOKEN.match(after):
            violations.append(Violation("page_token", "PAGE_TOKEN", "not from a listing"))
        key_kind = await self._kind(context, request.kind, violations)
        count = request.page_size or _DEFAULT_PAGE
        budget = self._limits.reply_budget_bytes
        async with storage_errors(context):
            found, token = await self._store.page(key_kind, after, count)
            # More than one reply holds: read the page again, as many as fit (the
            # store's token then follows the last of them). Rarely needed, and
            # always ends: the count only shrinks, and one record always fits.
            while (fits := fit((_record_size(r) for r in found), budget)) < len(found):
                count = fits
                found, token = await self._store.page(key_kind, after, count)
        return pb.ListRecordsResponse(
            records=[self._stored(r) for r in found],
            next_page_token=seal("records", scope, token) if len(found) == count else "",
        )
