"""ExportPackets of a record kind: its record packets, first stored first, resumable.

A kind's index (pb:{rec:<kind>}:index) scores each record by its insertion order
(scripts/lib/order.lua: unique, only growing), so a record's place is its score;
its resume cursor is "<score>-0", shaped like a stream id so the export token
(_export_token) carries it as it carries a topic's cursor. Records stored while an
export runs come after every score it has sent, so the export reaches them too.
The request and the replies: _placed_export.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from packetbus.v1 import packet_service_pb2

from ._placed_export import Page
from ._record_store import RecordStore, StoredRecord

# Records read per page.
_CHUNK = 100


async def record_pages(
    store: RecordStore,
    key_kind: str,
    after: str | None,
    packet: Callable[[StoredRecord], packet_service_pb2.StoredPacket],
) -> AsyncGenerator[Page, None]:
    """The record packets of `key_kind` (a kind's name in keys, "session") after
    cursor `after` (None: from the first), oldest first, in pages of up to _CHUNK,
    each made by `packet`; an expired record is left out. Raises the store's errors."""
    score = int(after.partition("-")[0]) if after is not None else None
    while True:
        found, last = await store.oldest_after(key_kind, score, _CHUNK)
        if last is None:
            return
        score = last
        if found:
            yield [(f"{at}-0", packet(record)) for at, record in found]
