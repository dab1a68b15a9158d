"""ExportPackets of a task queue: its task packets in the queue's order, resumable.

`check_queue_export` judges the request, `queue_pages` reads the queue (TaskService
serves it as `export_pages`), `export_replies` makes the stream's replies.

A task is not on a topic's log, so it has no stream id to resume after. Its place
is its index score (scripts/lib/order.lua: unique, in posting order) and, for the
ties left by tasks posted before scores were unique, how many tasks of that score
came before it in the index's order (by task id), itself included. `cursor_text`
writes both as "<score>-<count>", shaped like a stream id, so the export token
(_export_token) carries it as it carries a topic's cursor.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import grpc

from packetbus.v1 import custody_service_pb2, packet_service_pb2

from ._packet_service import storage_errors
from ._packing import message_size, packs
from ._task_store import TaskRecord, TaskStore
from ._validation import Violation, validate_topic

# Tasks read per index page (each read brings their packets).
_CHUNK = 100


def cursor_text(score: int, count: int) -> str:
    """The token's cursor for the `count`-th task (from 1) of index score `score`."""
    return f"{score}-{count}"


def parse_cursor(cursor: str) -> tuple[int, int]:
    """(score, count) of a cursor made by `cursor_text` (checked by the caller
    as "<digits>-<digits>")."""
    score, _, count = cursor.partition("-")
    return int(score), int(count)


def check_queue_export(
    out: list[Violation], request: custody_service_pb2.ExportPacketsRequest, max_length: int
) -> None:
    """Violations of an export of `request.task_queue` (set): the queue's name (as
    TaskService takes it), and topic and include_* unset (reason EXCLUSIVE), added to
    `out`. Why exclusive: a request reads one kind of log, so its resume token is
    one position in it."""
    validate_topic(out, "task_queue", request.task_queue, max_length)
    alone = "must be unset with task_queue: an export reads topics or one task queue"
    for name in ("topic", "include_carcel_entries", "include_decisions"):
        if getattr(request, name):
            out.append(Violation(name, "EXCLUSIVE", alone))


# A page of exported tasks: each task's cursor and its packet (chain so far, no head).
Page = list[tuple[str, packet_service_pb2.StoredPacket]]


async def queue_pages(
    store: TaskStore,
    queue: str,
    after: str | None,
    *,
    before_read: Callable[[str], Awaitable[None]],
    packet: Callable[[TaskRecord], packet_service_pb2.StoredPacket],
) -> AsyncGenerator[Page, None]:
    """The task packets of `queue` after cursor `after` (None: from the first), in
    pages of up to _CHUNK; a task gone between the index read and its own read is
    left out. `before_read(queue)` runs first (the settler counts run-out leases,
    so chains are as a reader of the queue sees them). Raises the store's errors."""
    await before_read(queue)
    skip_score, skip = parse_cursor(after) if after is not None else (-1, 0)
    # (skip_score, "") is before every task of that score: ids are never empty.
    last: tuple[int, str] | None = (skip_score, "") if after is not None else None
    # Counted from the first task of `skip_score` on, those already sent included.
    score, count = -1, 0
    while True:
        rows = await store.task_page(queue, last, _CHUNK)
        if not rows:
            return
        records = await store.get_many(queue, [task_id for _, task_id in rows])
        page: Page = []
        for row, record in zip(rows, records, strict=True):
            last = row
            count = count + 1 if row[0] == score else 1
            score = row[0]
            if record is None or (score == skip_score and count <= skip):
                continue
            page.append((cursor_text(score, count), packet(record)))
        if page:
            yield page


async def export_replies(
    context: grpc.aio.ServicerContext,
    pages: AsyncIterator[Page],
    vouch: Callable[[packet_service_pb2.StoredPacket], None],
    budget: int,
    since_ms: int,
    until_ms: int | None,
) -> AsyncIterator[tuple[custody_service_pb2.ExportPacketsResponse, str]]:
    """ExportPackets replies of `pages`' tasks posted in [since_ms, until_ms] (unix
    ms; None: no end), each packet vouched for (a signed head) and each reply at most
    `budget` bytes, with its last task's cursor. The store's errors end the call
    (storage_errors)."""
    while True:
        async with storage_errors(context):
            page = await anext(pages, None)
        if page is None:
            return
        kept = []
        for cursor, stored in page:
            posted = stored.receipt.stored_at.ToMilliseconds()
            if posted >= since_ms and (until_ms is None or posted <= until_ms):
                vouch(stored)
                kept.append((cursor, stored))
        for part in packs(kept, lambda item: message_size(item[1]), budget):
            packets = [stored for _, stored in part]
            yield custody_service_pb2.ExportPacketsResponse(packets=packets), part[-1][0]
