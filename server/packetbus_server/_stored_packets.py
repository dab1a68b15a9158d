"""A stored packet as the services answer it: its Receipt and its StoredPacket, and
about how many bytes one takes in a reply.

Apart from PacketService (_packet_service) because every service that hands out
packets (custody export, carcel, tasks, findings, policy) builds the same replies.
"""

from __future__ import annotations

from packetbus.v1 import packet_pb2, packet_service_pb2

from ._cursors import cursor_millis
from ._log_pages import LogEntry
from ._packing import stored_size


def fill_receipt(
    receipt: packet_service_pb2.Receipt,
    topic: str,
    cursor: str,
    expires_at_ms: int,
    stored_at_ms: int | None = None,
) -> None:
    """Fill `receipt` in place: building sub-messages and copying them in costs
    several times more, per packet, in a batch's response. A packet with no place
    in a topic's log (a task) has no cursor and gives its `stored_at_ms`."""
    receipt.topic = topic
    receipt.cursor = cursor
    stored_s, stored_ms = divmod(
        cursor_millis(cursor) if stored_at_ms is None else stored_at_ms, 1000
    )
    receipt.stored_at.seconds = stored_s
    receipt.stored_at.nanos = stored_ms * 1_000_000
    expires_s, expires_ms = divmod(expires_at_ms, 1000)
    receipt.expires_at.seconds = expires_s
    receipt.expires_at.nanos = expires_ms * 1_000_000


def stored_packet(
    topic: str,
    cursor: str,
    expires_at_ms: int,
    payload: bytes,
    content_length: int,
    *,
    stored_at_ms: int | None = None,
) -> packet_service_pb2.StoredPacket:
    stored = packet_service_pb2.StoredPacket(
        packet=packet_pb2.Packet.FromString(payload), content=payload[:content_length]
    )
    fill_receipt(stored.receipt, topic, cursor, expires_at_ms, stored_at_ms)
    return stored


def entry_size(entry: LogEntry) -> int:
    """About how many bytes a log entry takes as a StoredPacket."""
    return stored_size(len(entry.payload), entry.content_length)
