"""The ingest pipeline for one packet: validate, normalize, then (after custody) a write.

This is where "no schema, no dispatch" is enforced: a packet that breaks any
rule never reaches Redis. The servicer runs, per batch: `accept` on every
packet, the origin check of schema "1.1" packets, the server's custody seal,
then `to_write`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from packetbus import _custody, _wire
from packetbus.v1 import packet_pb2

from ._limits import Limits
from ._store import PacketWrite
from ._validation import Violation, validate_packet


@dataclass(frozen=True, slots=True)
class Rejected:
    violations: list[Violation]


@dataclass(frozen=True, slots=True)
class Accepted:
    packet: packet_pb2.Packet
    # Over the packet exactly as received: a sender's retry of the same packet
    # always matches, even when the server's defaults or clock moved since.
    fingerprint: str
    # What custody entries sign: the packet without its chain, as stored.
    content: bytes


def accept(packet: packet_pb2.Packet, limits: Limits, now_ns: int) -> Accepted | Rejected:
    """Validate `packet` and fill the server's defaults, or say every reason it is rejected."""
    received = packet.SerializeToString(deterministic=True)
    violations = validate_packet(packet, limits, size=len(received))
    if violations:
        return Rejected(violations)
    # A signed ("1.1") packet arrives complete (validation checks it): its
    # content is signed, so nothing may be filled in.
    changed = False
    if not packet.ttl_seconds:
        packet.ttl_seconds = limits.default_ttl_seconds
        changed = True
    if not packet.HasField("dispatched_at"):
        packet.dispatched_at.FromNanoseconds(now_ns)
        changed = True
    if packet.chain_of_custody:
        content = _custody.content_bytes(packet)
    else:
        content = packet.SerializeToString(deterministic=True) if changed else received
    return Accepted(packet, hashlib.sha256(received).hexdigest(), content)


def to_write(accepted: Accepted, server_entries: Sequence[bytes]) -> PacketWrite:
    """The stored form: content bytes, then the chain (the sender's entries, then the server's)."""
    packet = accepted.packet
    own = packet.chain_of_custody
    entries = [*(e.SerializeToString() for e in own), *server_entries] if own else server_entries
    return PacketWrite(
        tracking_id=packet.tracking_id,
        topic=packet.topic,
        fingerprint=accepted.fingerprint,
        ttl_ms=packet.ttl_seconds * 1000,
        payload=_wire.with_chain(accepted.content, entries),
        content_length=len(accepted.content),
    )
