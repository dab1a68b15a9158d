"""What reading a topic's log gives: entries, pages, the horizon of what has left the
log, a packet found by tracking id, and the parsing of the store's replies into them.

Apart from the store (_store) because readers of a log (_gaps, _packet_service)
work with these shapes without touching Redis, and the parsing is pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._cursors import cursor_millis, newest_cursor
from ._replies import text


def location_topic(value: bytes | str) -> str:
    """The topic a location key (pb:loc:{<tid>}) names: the bare topic, or on a single
    Redis a record kept in it (scripts/lib/records.lua): NUL, 32 bytes of fingerprint,
    the marker, a space, the topic."""
    raw = value.encode() if isinstance(value, str) else value
    if raw[:1] == b"\0":
        return raw[33:].partition(b" ")[2].decode()
    return raw.decode()


# Not frozen: made for every packet a reader reads, where a frozen dataclass's
# __init__ (object.__setattr__ per field) costs four times as much, and expanded in
# place (PacketStore._expanded) by the read that made it. Subscribers that share a
# page (PacketStore.follow) only read it, apart from `wire`, a cache of one value.
@dataclass(slots=True)
class LogEntry:
    cursor: str
    expires_at_ms: int
    payload: bytes
    content_length: int
    # Stored-once entries (_batch_refs): the batch reference and tracking id the
    # reader needs to put the server's entries back ("" when the entry is full).
    ref: bytes = b""
    tracking_id: bytes = b""
    # The entry as a serialized StoredPacket of its topic (_subscribe_wire), once
    # made: every subscriber sharing the page sends the same bytes.
    wire: bytes = b""


@dataclass(frozen=True, slots=True)
class LogPage:
    """Entries read from a topic's log, the expired ones left out.

    `last_cursor` is the last entry read, expired or not (None when nothing
    was read): a reader continues after it, or it would read the expired
    entries again forever.
    """

    entries: list[LogEntry]
    last_cursor: str | None


@dataclass(frozen=True, slots=True)
class Horizon:
    """What has left a topic's log, as its horizon key (``pb:{topic}:horizon``) records it.

    Entries leave a log only as a prefix (trimmed below a rising threshold, or
    the whole log expiring), so everything up to these cursors is gone. Empty
    strings mean nothing of that kind is known to have gone.
    """

    # The newest entry removed by retention.
    trimmed: str
    # The newest entry lost when the log expired as a whole.
    expired: str
    # The topic has a horizon at all. Without one (data older than the
    # horizon, or a topic idle past it) losses may have gone unrecorded.
    known: bool


@dataclass(frozen=True, slots=True)
class FollowPage:
    """Entries after a cursor and the topic's horizon, read in one atomic step."""

    # Publications, in order, the expired ones included: whether a reader
    # missed them or they were never its news is the reader's to judge.
    entries: list[LogEntry]
    # The last entry read, requeues for consumer groups included (None when
    # nothing was read): a reader continues after it.
    last_cursor: str | None
    # Fewer entries than asked for: the reader has reached the log's end.
    complete: bool
    horizon: Horizon


@dataclass(frozen=True, slots=True)
class FoundPacket:
    topic: str
    cursor: str
    expires_at_ms: int
    # Content, then the whole chain: the entries stored with the packet, then
    # its hops since (deliveries, acks, ...).
    payload: bytes
    content_length: int


def publications(
    raw: Iterable[tuple[Any, dict[bytes, bytes]]],
) -> tuple[list[LogEntry], str | None]:
    """The packets published in log entries, expired or not, and the last entry id read.

    An entry with field g is a carceled packet requeued for one consumer group:
    not a new publication, so fan-out readers never see it.
    """
    entries = []
    cursor = None
    for entry_id, fields in raw:
        cursor = text(entry_id)
        if b"g" not in fields:
            expires_at_ms = cursor_millis(cursor) + int(fields[b"t"])
            entries.append(
                LogEntry(
                    cursor,
                    expires_at_ms,
                    fields[b"p"],
                    int(fields[b"n"]),
                    fields.get(b"b", b""),
                    fields.get(b"i", b""),
                )
            )
    return entries, cursor


def unexpired_page(raw: Any, now_ms: int) -> LogPage:
    """A page of the log from XRANGE/XREAD entries; packets past their TTL at
    `now_ms` (the store's clock) are not returned, whether or not the log has been
    trimmed yet."""
    entries, cursor = publications(raw)
    return LogPage([e for e in entries if e.expires_at_ms > now_ms], cursor)


def entry_fields(flat: list[bytes]) -> dict[bytes, bytes]:
    # A script returns an entry's fields as a flat list, not as redis-py's mapping.
    return dict(zip(flat[::2], flat[1::2], strict=True))


def follow_horizon(trimmed: bytes, expired: bytes, last: bytes, held: int) -> Horizon:
    # A log that holds no entry has lost the newest one a dispatch appended,
    # whether it expired as a whole or was trimmed empty.
    lost_last = text(last) if held == 0 else ""
    return Horizon(
        trimmed=text(trimmed), expired=newest_cursor(text(expired), lost_last), known=bool(last)
    )
