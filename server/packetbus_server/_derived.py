"""Packets the server derives from a finding: the escalation that carries it and the
conflict events published about it on `findings.conflicts`.

Each wraps what the client sent, so it is larger than the finding's packet: a
finding that passed the packet limit could make an escalation, or an event, that
does not. PostFinding therefore builds the largest packet of each kind the finding
can ever be part of alone (the longest reason and origin an Escalate request
accepts, the longest other finding id, the latest timestamp) and refuses the
finding when one would pass the limit: every accepted finding can be escalated on
its own, and its conflicts published, exactly as computed here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format, message, timestamp_pb2

from packetbus.v1 import custody_pb2, packet_pb2, speech_act_pb2

from ._conflicts import confidence_reason
from ._field_rules import MAX_SHORT_TEXT
from ._validation import Violation

CONFLICTS_TOPIC = "findings.conflicts"
ESCALATIONS_TOPIC = "escalations"
DEFAULT_THRESHOLD = 0.3
# The longest reason an Escalate request may give, in UTF-8 bytes.
MAX_ESCALATION_REASON_BYTES = 1024
# Conflict events and escalations are kept as long as the bus keeps anything.
_EVENT_TTL_SECONDS = 86400
_EVENT_NAMESPACE = uuid.UUID("8f0c1c1e-4bb1-4a57-9c55-7a3e1f5f6a01")
# Its own, so no escalation's id can be a conflict event's.
_ESCALATION_NAMESPACE = uuid.uuid5(_EVENT_NAMESPACE, "escalations")
# The latest time a Timestamp holds (9999-12-31T23:59:59.999999999Z): the longest.
_LATEST = timestamp_pb2.Timestamp(seconds=253402300799, nanos=999_999_999)


# The longest reason a published conflict has ("opposite claims" is shorter).
_LONGEST_CONFLICT_REASON = confidence_reason(1.0, 1.0, DEFAULT_THRESHOLD)


def server_packet(server_id: str, topic: str, act: int, data: dict[str, Any]) -> packet_pb2.Packet:
    packet = packet_pb2.Packet(
        tracking_id=str(uuid.uuid4()),
        origin=server_id,
        schema_version="1.0",
        speech_act=act,  # type: ignore[arg-type]
        topic=topic,
        ttl_seconds=_EVENT_TTL_SECONDS,
    )
    packet.data.update(data)
    return packet


def escalation(
    server_id: str,
    task_id: str,
    origin: str,
    reason: str,
    finding_ids: Sequence[str],
    payloads: Sequence[bytes],
) -> packet_pb2.Packet:
    """The ESCALATE packet carrying findings (their stored packets, as JSON), with a
    tracking id derived from the request, so the same escalation again (a retry after
    a lost reply) is the same packet: stored once, answered with the original."""
    packet = server_packet(
        server_id,
        ESCALATIONS_TOPIC,
        speech_act_pb2.SPEECH_ACT_ESCALATE,
        {
            "task_id": task_id,
            "reason": reason,
            "findings": [
                json_format.MessageToDict(packet_pb2.Packet.FromString(p)) for p in payloads
            ],
        },
    )
    packet.origin = origin
    packet.tracking_id = str(
        uuid.uuid5(_ESCALATION_NAMESPACE, "\n".join([task_id, origin, reason, *finding_ids]))
    )
    return packet


def conflict_event(
    server_id: str,
    task_id: str,
    subject: str,
    pair: tuple[str, str],
    reason: str,
    when: timestamp_pb2.Timestamp,
) -> packet_pb2.Packet:
    """The event published on `findings.conflicts` for findings `pair` (earlier, later)."""
    event = server_packet(
        server_id,
        CONFLICTS_TOPIC,
        speech_act_pb2.SPEECH_ACT_INFORM,
        {
            "task_id": task_id,
            "subject": subject,
            "first_finding_id": pair[0],
            "second_finding_id": pair[1],
            "reason": reason,
        },
    )
    # Derived from the pair, so a retry of the post stores each event once; the
    # time is the later finding's, so a retry publishes the very same packet.
    event.tracking_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{task_id}\n{pair[0]}\n{pair[1]}"))
    event.dispatched_at.CopyFrom(when)
    return event


def _at_latest(node: message.Message) -> None:
    """Set every Timestamp present in `node` to the latest one: as JSON (how an
    escalation carries a finding) a time takes 0, 3, 6 or 9 fractional digits, so
    the finding's own custody times would otherwise make its room depend on the
    nanoseconds it was signed at."""
    for field, value in node.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.full_name == timestamp_pb2.Timestamp.DESCRIPTOR.full_name:
            for stamp in value if field.is_repeated else [value]:
                stamp.CopyFrom(_LATEST)
        elif field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for child in value.values():
                    _at_latest(child)
        else:
            for child in value if field.is_repeated else [value]:
                _at_latest(child)


def _longest(payload: bytes) -> bytes:
    """The stored finding `payload` with every time at its longest, the times inside
    its signed custody records (varints of 1 to 5 bytes for the nanoseconds) too."""
    packet = packet_pb2.Packet.FromString(payload)
    _at_latest(packet)
    for entry in packet.chain_of_custody:
        record = custody_pb2.CustodyRecord.FromString(entry.record)
        _at_latest(record)
        entry.record = record.SerializeToString()
    return packet.SerializeToString()


def room_violations(
    server_id: str,
    task_id: str,
    finding_id: str,
    subject: str,
    payload: bytes,
    max_packet_bytes: int,
) -> list[Violation]:
    """Why a finding (its stored `payload`) is too large to be escalated alone, or
    for its conflict events to be published: [] when both always fit. Its times are
    taken at their longest, so the answer does not depend on the nanoseconds the
    finding was signed at (the test of this bound found its edge moving by them)."""
    longest_id = "x" * MAX_SHORT_TEXT
    payload = _longest(payload)
    sizes = {
        "its escalation alone": escalation(
            server_id,
            task_id,
            longest_id,
            "x" * MAX_ESCALATION_REASON_BYTES,
            [finding_id],
            [payload],
        ).ByteSize(),
        "its conflict event": conflict_event(
            server_id,
            task_id,
            subject,
            (longest_id, finding_id),
            _LONGEST_CONFLICT_REASON,
            _LATEST,
        ).ByteSize(),
    }
    return [
        Violation(
            "packet",
            "FINDING_TOO_LARGE",
            f"{what} can be a packet of {size} bytes; the packet limit is "
            f"{max_packet_bytes}: a finding must leave room for its escalation "
            f"(reason up to {MAX_ESCALATION_REASON_BYTES} bytes) and conflict events",
        )
        for what, size in sizes.items()
        if size > max_packet_bytes
    ]
