"""The ingest pipeline for one packet: validate, normalize, then (after custody) a write.

This is where "no schema, no dispatch" is enforced: a packet that breaks any
rule never reaches Redis. The servicer runs, per batch: `accept` on every
packet, the origin check of schema "1.1" packets, the server's custody seal,
then `to_write`.
"""

from __future__ import annotations

import dataclasses
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
    # Over what the sender means (see `fingerprint`): a sender's retry, or the
    # same packet rebuilt after a crash, matches even when it was stamped again.
    fingerprint: str
    # What custody entries sign: the packet without its chain, as stored.
    content: bytes


def fingerprint(packet: packet_pb2.Packet) -> str:
    """The idempotency fingerprint of `packet` as received: 64 hex digits.

    A SHA-256 over every field but tracking_id, dispatched_at, trace_context
    and chain_of_custody (why: below): origin, schema version,
    TTL (as sent: 0 is not the default's number, so a retry matches whichever
    replica's default it meets), speech act, topic, the conversation fields
    (reply_by included: a deadline is meant) and the contents, unknown fields
    too. The same key with an equal fingerprint is the same write (the original
    result answers); with another, ALREADY_EXISTS.
    """
    # Not part of what a packet means. dispatched_at is stamped when a packet is
    # built: the CLI, and a producer that rebuilds the packet after a crash, stamp it
    # again. The chain of custody holds signatures over those stamps, made again with
    # every build. The trace context says where a send came from (a retry under
    # another span carries another), not what the packet means. The tracking id is where the fingerprint is kept, not what it
    # compares: Dispatch and PutRecord look it up by the tracking id (so it is equal
    # anyway); a task and a named finding are looked up by their own id, and a
    # client that fills the tracking id in fills a new one each run.
    if packet.chain_of_custody:
        meant = packet_pb2.Packet()
        meant.CopyFrom(packet)
        meant.ClearField("tracking_id")
        meant.ClearField("dispatched_at")
        meant.ClearField("trace_context")
        meant.ClearField("chain_of_custody")
        return hashlib.sha256(meant.SerializeToString(deterministic=True)).hexdigest()
    # Unsigned (most packets): the fields are set aside and put back, which
    # costs about half of copying the packet (its contents may be large).
    tracking_id = packet.tracking_id
    stamped = packet.HasField("dispatched_at")
    seconds, nanos = packet.dispatched_at.seconds, packet.dispatched_at.nanos
    traced = packet.HasField("trace_context")
    trace = (packet.trace_context.traceparent, packet.trace_context.tracestate)
    packet.ClearField("tracking_id")
    packet.ClearField("dispatched_at")
    if traced:
        packet.ClearField("trace_context")
    try:
        return hashlib.sha256(packet.SerializeToString(deterministic=True)).hexdigest()
    finally:
        packet.tracking_id = tracking_id
        if stamped:
            packet.dispatched_at.SetInParent()
            packet.dispatched_at.seconds = seconds
            packet.dispatched_at.nanos = nanos
        if traced:
            packet.trace_context.SetInParent()
            packet.trace_context.traceparent, packet.trace_context.tracestate = trace


def accept(packet: packet_pb2.Packet, limits: Limits, now_ns: int) -> Accepted | Rejected:
    """Validate `packet` and fill the server's defaults, or say every reason it is rejected."""
    received = packet.SerializeToString(deterministic=True)
    violations = validate_packet(packet, limits, size=len(received))
    if violations:
        return Rejected(violations)
    meant = fingerprint(packet)  # before the server's defaults are filled in
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
    return Accepted(packet, meant, content)


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


def with_request_fields(write: PacketWrite, *fields: str) -> PacketWrite:
    """`write` with a fingerprint that also covers what the request carries beside
    the packet and means (a task's max attempts, a record's retention), as sent: the
    same packet under other such fields is ALREADY_EXISTS, not the original result."""
    material = "\n".join([write.fingerprint, *fields]).encode()
    return dataclasses.replace(write, fingerprint=hashlib.sha256(material).hexdigest())
