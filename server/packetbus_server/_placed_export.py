"""ExportPackets of packets that are in no topic's log: a task queue's tasks
(task_queue), a task id's findings (finding_task_id) or a record kind's records
(record_kind).

`source` names what a request exports, `check` judges such a request, and
`export_replies` makes the stream's replies from pages of (cursor, packet) read by
the owning service (TaskService.export_pages, FindingService.export_pages,
RecordService.export_pages).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from packetbus.v1 import custody_service_pb2, packet_service_pb2, record_service_pb2

from ._access import Permission
from ._export_token import FINDINGS, RECORDS, TASKS
from ._field_rules import validate_id, validate_topic
from ._packing import message_size, packs
from ._storage_errors import storage_errors
from ._validation import Violation

# A page of exported packets: each one's resume cursor ("<a>-<b>") and the packet
# (chain so far, no head).
Page = list[tuple[str, packet_service_pb2.StoredPacket]]


@dataclass(frozen=True)
class Source:
    """What an export reads: `section` of `name`, needing `permission` on `name`;
    `slot` is what its resume token holds in place of a topic."""

    section: str
    name: str
    permission: Permission
    slot: str


def source(request: custody_service_pb2.ExportPacketsRequest) -> Source | None:
    """The placed packets `request` exports; None for topics."""
    if request.task_queue:
        return Source(TASKS, request.task_queue, Permission.TASKS_READ, request.task_queue)
    if request.finding_task_id:
        # A task id may hold what a token must not (non-ASCII, '.'): the token's
        # fingerprint binds it instead, and the slot is a fixed "_".
        return Source(FINDINGS, request.finding_task_id, Permission.FINDINGS_READ, "_")
    if request.record_kind:
        # Named as records.read is granted (_access.permissions: its contents field,
        # "session_summary"); "" for an unknown kind, which `check` refuses.
        name = record_kind_name(request.record_kind)
        return Source(RECORDS, name, Permission.RECORDS_READ, "_")
    return None


def record_kind_name(kind: int) -> str:
    """A RecordKind as its contents field is named (RECORD_KIND_SESSION_SUMMARY:
    "session_summary"); "" for UNSPECIFIED or a value this server does not know."""
    value = record_service_pb2.RecordKind.DESCRIPTOR.values_by_number.get(kind)
    if value is None or not kind:
        return ""
    return value.name.removeprefix("RECORD_KIND_").lower()


def check(
    out: list[Violation], request: custody_service_pb2.ExportPacketsRequest, max_length: int
) -> None:
    """Violations of an export of placed packets, added to `out`: the name (a queue
    as TaskService takes it, TOPIC_FORMAT; a task id as FindingService does; a known
    record kind, reason ENUM), and every other source field unset (reason
    EXCLUSIVE). Why exclusive: a request reads one log, so its resume token is one
    position in it."""
    fields = ["topic", "include_carcel_entries", "include_decisions"]
    if request.task_queue:
        validate_topic(out, "task_queue", request.task_queue, max_length)
        fields += ["finding_task_id", "record_kind"]
    elif request.finding_task_id:
        validate_id(out, "finding_task_id", request.finding_task_id)
        fields.append("record_kind")
    elif not record_kind_name(request.record_kind):
        out.append(Violation("record_kind", "ENUM", "not a record kind this server knows"))
    if not request.task_queue:
        # Neither a finding nor a record is exported by time.
        fields += [n for n in ("since", "until") if request.HasField(n)]
    alone = (
        "must be unset here: an export reads topics, one task queue, one task's findings "
        "or one record kind"
    )
    for name in fields:
        if name in ("since", "until") or getattr(request, name):
            out.append(Violation(name, "EXCLUSIVE", alone))


async def export_replies(
    context: grpc.aio.ServicerContext,
    pages: AsyncIterator[Page],
    vouch: Callable[[packet_service_pb2.StoredPacket], None],
    budget: int,
    since_ms: int,
    until_ms: int | None,
) -> AsyncIterator[tuple[custody_service_pb2.ExportPacketsResponse, str]]:
    """ExportPackets replies of `pages`' packets stored in [since_ms, until_ms] (unix
    ms; None: no end; a packet with no stored time is always in), each packet
    vouched for (a signed head) and each reply at most `budget` bytes, with its last
    packet's cursor. The store's errors end the call (storage_errors)."""
    while True:
        async with storage_errors(context):
            page = await anext(pages, None)
        if page is None:
            return
        kept = []
        for cursor, stored in page:
            if stored.receipt.HasField("stored_at"):
                at = stored.receipt.stored_at.ToMilliseconds()
                if at < since_ms or (until_ms is not None and at > until_ms):
                    continue
            vouch(stored)
            kept.append((cursor, stored))
        for part in packs(kept, lambda item: message_size(item[1]), budget):
            packets = [stored for _, stored in part]
            yield custody_service_pb2.ExportPacketsResponse(packets=packets), part[-1][0]
