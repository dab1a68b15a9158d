"""PullResponse bytes written directly: a delivery's packet is stored serialized, and
parsing it only for gRPC to serialize it again cost more than the rest of a delivery.

Fields go out in field-number order with proto3 defaults omitted, exactly as the
generated classes serialize them; tests/test_pull_wire.py holds the two to byte
equality, so a contract change not mirrored here fails it.
"""

from __future__ import annotations

from collections.abc import Sequence

from packetbus._wire import length_delimited, timestamp_ms, varint


def receipt(topic: str, cursor: str, stored_ms: int, expires_ms: int) -> bytes:
    return b"".join(
        (
            length_delimited(1, topic.encode()),
            length_delimited(2, cursor.encode()),
            timestamp_ms(3, stored_ms),
            timestamp_ms(4, expires_ms),
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
            timestamp_ms(3, lease_ends_ms),
            length_delimited(4, stored),
        )
    )


def settle_result(
    delivery_id: str,
    settlement: int,
    code: int,
    message: str = "",
    *,
    carcel_id: str = "",
    lease_ends_ms: int = 0,
    status: bytes | None = None,
) -> bytes:
    """A SettleResult; its status is always present (empty when OK), as the server
    answers every settlement with one. `status`: the serialized google.rpc.Status
    when it carries details (then `code` and `message` are those in it)."""
    if status is None:
        status = b"".join(
            (
                b"\x08" + varint(code) if code else b"",
                length_delimited(2, message.encode()) if message else b"",
            )
        )
    return b"".join(
        (
            length_delimited(1, delivery_id.encode()),
            b"\x10" + varint(settlement) if settlement else b"",
            length_delimited(3, status),
            length_delimited(4, carcel_id.encode()) if carcel_id else b"",
            timestamp_ms(5, lease_ends_ms) if lease_ends_ms else b"",
        )
    )


def pull_response(deliveries: Sequence[bytes], settled: Sequence[bytes]) -> bytes:
    """A PullResponse of serialized Deliveries and SettleResults."""
    return b"".join(
        [
            *(length_delimited(1, d) for d in deliveries),
            *(length_delimited(2, s) for s in settled),
        ]
    )
