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

from google.protobuf.timestamp_pb2 import Timestamp

from packetbus import _custody, _wire
from packetbus.v1 import packet_pb2

from ._limits import Limits
from ._packet_writes import PacketWrite
from ._validation import Violation, validate_packet


@dataclass(frozen=True, slots=True)
class Rejected:
    violations: list[Violation]


# Not frozen: made for every packet at ingest, as _packet_writes.PacketWrite.
@dataclass(slots=True)
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
    # Copies, not the values: a submessage may hold unknown fields of its own, and
    # the packet must be left exactly as it came (its bytes are stored and signed).
    stamp: Timestamp | None = None
    if packet.HasField("dispatched_at"):
        stamp = Timestamp()
        stamp.CopyFrom(packet.dispatched_at)
        packet.ClearField("dispatched_at")
    trace: packet_pb2.TraceContext | None = None
    if packet.HasField("trace_context"):
        trace = packet_pb2.TraceContext()
        trace.CopyFrom(packet.trace_context)
        packet.ClearField("trace_context")
    packet.ClearField("tracking_id")
    try:
        return hashlib.sha256(packet.SerializeToString(deterministic=True)).hexdigest()
    finally:
        packet.tracking_id = tracking_id
        if stamp is not None:
            packet.dispatched_at.CopyFrom(stamp)
        if trace is not None:
            packet.trace_context.CopyFrom(trace)


# Tags (field number << 3 | 2, one byte) of the top-level fields the fingerprint
# leaves out: tracking_id (1), dispatched_at (3), trace_context (13).
_NOT_MEANT_TAGS = frozenset((0x0A, 0x1A, 0x6A))
# The first tag byte of field 14: every field from here on is meant.
_LAST_NOT_MEANT_FIELD_END = 14 << 3


def fingerprint_of_received(received: bytes) -> str | None:
    """`fingerprint` of a packet WITHOUT a chain of custody, from its deterministic
    serialization `received`: None when it has an unknown field of a group wire
    type before its contents (`fingerprint` decides those).

    A message's serialization is its fields' encodings one after another, each
    independent of the others, so leaving a field's bytes out of the hash is
    exactly serializing the packet without that field; `fingerprint` clears and
    restores three fields and serializes again (issue 16). Known fields are
    written in field-number order and unknown ones after them, and no unknown
    field has a tag of _NOT_MEANT_TAGS (those parse as the known fields), so
    nothing after the first field numbered above 13 is left out: the walk
    stops there.
    """
    digest = hashlib.sha256()
    view = memoryview(received)
    end = len(received)
    i = kept_from = 0
    while i < end:
        # The tag: a varint of the field number and wire type.
        tag = received[i]
        if tag >= _LAST_NOT_MEANT_FIELD_END:  # field 14 or above (a multi-byte tag too)
            break
        start = i
        i += 1
        wire_type = tag & 7
        if wire_type == 2:
            length = shift = 0
            while True:
                byte = received[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
            i += length
            if tag in _NOT_MEANT_TAGS:
                digest.update(view[kept_from:start])
                kept_from = i
        elif wire_type == 0:
            while received[i] >= 0x80:
                i += 1
            i += 1
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        else:  # a group (3, 4): an unknown field only; rare enough to serialize again
            return None
    digest.update(view[kept_from:])
    return digest.hexdigest()


def accept(packet: packet_pb2.Packet, limits: Limits, now_ns: int) -> Accepted | Rejected:
    """Validate `packet` and fill the server's defaults, or say every reason it is rejected."""
    received = packet.SerializeToString(deterministic=True)
    violations = validate_packet(packet, limits, size=len(received))
    if violations:
        return Rejected(violations)
    # Before the server's defaults are filled in.
    meant = (None if packet.chain_of_custody else fingerprint_of_received(received)) or fingerprint(
        packet
    )
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


def to_write(
    accepted: Accepted,
    server_entries: Sequence[bytes],
    *,
    batch_id: str = "",
    batch: bytes = b"",
    leaf: int = 0,
) -> PacketWrite:
    """The stored form: content bytes, then the chain (the sender's entries, then the
    server's). In the stored-once form (_batch_refs) the server's ingest entries are
    not in it (`server_entries` empty) but leaf `leaf` of sealed batch `batch`
    (encoded), stored once as `batch_id`."""
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
        batch_id=batch_id,
        batch=batch,
        leaf=leaf,
    )


def with_request_fields(write: PacketWrite, *fields: str) -> PacketWrite:
    """`write` with a fingerprint that also covers what the request carries beside
    the packet and means (a task's max attempts, a record's retention), as sent: the
    same packet under other such fields is ALREADY_EXISTS, not the original result."""
    material = "\n".join([write.fingerprint, *fields]).encode()
    return dataclasses.replace(write, fingerprint=hashlib.sha256(material).hexdigest())
