"""PullResponse bytes written directly: a delivery's packet is stored serialized, and
parsing it only for gRPC to serialize it again cost more than the rest of a delivery.

Fields go out in field-number order with proto3 defaults omitted, exactly as the
generated classes serialize them; tests/test_pull_wire.py holds the two to byte
equality, so a contract change not mirrored here fails it.
"""

from __future__ import annotations

from collections.abc import Sequence

from packetbus._wire import length_delimited, timestamp, varint
from packetbus.v1 import consumer_group_service_pb2 as pb

_MS = 1_000_000


def receipt(topic: str, cursor: str, stored_ms: int, expires_ms: int) -> bytes:
    return b"".join(
        (
            length_delimited(1, topic.encode()),
            length_delimited(2, cursor.encode()),
            timestamp(3, stored_ms * _MS),
            timestamp(4, expires_ms * _MS),
        )
    )


def delivery(
    ident: str,
    count: int,
    lease_ends_ms: int,
    *,
    packet: bytes,
    receipt_bytes: bytes,
    content: bytes,
) -> bytes:
    """A Delivery; `packet` is the serialized Packet (content, then its chain)."""
    stored = b"".join(
        (
            length_delimited(1, packet),
            length_delimited(2, receipt_bytes),
            length_delimited(3, content) if content else b"",
        )
    )
    return b"".join(
        (
            length_delimited(1, ident.encode()),
            b"\x10" + varint(count) if count else b"",
            timestamp(3, lease_ends_ms * _MS),
            length_delimited(4, stored),
        )
    )


def pull_response(deliveries: Sequence[bytes], settled: Sequence[pb.SettleResult]) -> bytes:
    return b"".join(
        [
            *(length_delimited(1, d) for d in deliveries),
            *(length_delimited(2, s.SerializeToString(deterministic=True)) for s in settled),
        ]
    )
