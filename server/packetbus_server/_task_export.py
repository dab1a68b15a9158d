"""ExportPackets of a task queue: its task packets in the queue's order, resumable.

`queue_pages` reads the queue (TaskService serves it as `export_pages`; the
request and the replies: _placed_export).

A task is not on a topic's log, so it has no stream id to resume after. Its place
is its index score (scripts/lib/order.lua: unique, in posting order) and, for the
ties left by tasks posted before scores were unique, how many tasks of that score
came before it in the index's order (by task id), itself included. `cursor_text`
writes both as "<score>-<count>", shaped like a stream id, so the export token
(_export_token) carries it as it carries a topic's cursor.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

from packetbus.v1 import packet_service_pb2

from ._placed_export import Page
from ._task_store import TaskRecord, TaskStore

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
