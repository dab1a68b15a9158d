"""The ingest pipeline for one packet: validate, then normalize, then hand to the store.

This is where "no schema, no dispatch" is enforced: a packet that breaks any
rule never reaches Redis.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from packetbus.v1 import packet_pb2

from ._limits import Limits
from ._store import PacketWrite
from ._validation import Violation, validate_packet


@dataclass(frozen=True, slots=True)
class Rejected:
    violations: list[Violation]


def prepare(packet: packet_pb2.Packet, limits: Limits, now_ns: int) -> PacketWrite | Rejected:
    """Validate `packet` and turn it into a write, or say every reason it is rejected.

    The fingerprint is taken over the packet as the sender sent it, before
    the server fills anything in, so a sender's retry of the same packet always
    matches, even when the server's defaults or clock moved in between.
    """
    received = packet.SerializeToString(deterministic=True)
    violations = validate_packet(packet, limits, size=len(received))
    if violations:
        return Rejected(violations)
    payload = received
    if not packet.ttl_seconds or not packet.HasField("dispatched_at"):
        if not packet.ttl_seconds:
            packet.ttl_seconds = limits.default_ttl_seconds
        if not packet.HasField("dispatched_at"):
            packet.dispatched_at.FromNanoseconds(now_ns)
        payload = packet.SerializeToString(deterministic=True)
    return PacketWrite(
        tracking_id=packet.tracking_id,
        topic=packet.topic,
        fingerprint=hashlib.sha256(received).hexdigest(),
        ttl_ms=packet.ttl_seconds * 1000,
        payload=payload,
    )
