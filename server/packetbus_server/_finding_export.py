"""ExportPackets of a task's findings: its finding packets in posting order, resumable.

A task's findings are a list in posting order that only grows (FindingStore.page
reads it by offset), so a finding's place is its offset; its resume cursor is
"<offset>-0", shaped like a stream id so the export token (_export_token) carries
it as it carries a topic's cursor. The request and the replies: _placed_export.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from packetbus.v1 import packet_service_pb2

from ._finding_store import FindingStore, StoredFinding
from ._placed_export import Page

# Findings read per page.
_CHUNK = 100


async def finding_pages(
    store: FindingStore,
    task_id: str,
    after: str | None,
    packet: Callable[[StoredFinding], packet_service_pb2.StoredPacket],
) -> AsyncGenerator[Page, None]:
    """The finding packets of `task_id` after cursor `after` (None: from the first),
    in pages of up to _CHUNK, each made by `packet`. Raises the store's errors."""
    start = int(after.partition("-")[0]) + 1 if after is not None else 0
    while True:
        found, following = await store.page(task_id, start, _CHUNK)
        if following == start:
            return
        start = following
        if found:
            yield [(f"{offset}-0", packet(finding)) for offset, finding in found]
