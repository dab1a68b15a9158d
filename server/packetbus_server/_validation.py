"""No schema, no dispatch: the rules every packet must pass before Redis sees it.

`validate_packet` reports every violation of a packet at once, each with the
field path (protobuf field names from the packet root, e.g. ``finding.confidence``
or ``chain_of_custody[2].signature``) and a stable rule id, so a sender can fix
all of them in one round trip.
"""

from __future__ import annotations

from packetbus.v1 import packet_pb2, speech_act_pb2

from ._content_rules import check_context, check_custody, check_finding, check_raw, check_task
from ._field_rules import (
    CANONICAL_UUID,
    MAX_SHORT_TEXT,
    check_identifier,
    check_text,
    check_timestamp,
    validate_topic,
)
from ._json_data import check_json_data
from ._limits import Limits
from ._trace_context import validate_trace_context
from ._violation import Violation as Violation  # where the validators import it from

SUPPORTED_SCHEMA_VERSIONS: tuple[str, ...] = ("1.0", "1.1")
# Packets of this version carry their origin agent's signature.
SIGNED_SCHEMA_VERSION = "1.1"

_KNOWN_SPEECH_ACTS = frozenset(speech_act_pb2.SpeechAct.values()) - {
    speech_act_pb2.SPEECH_ACT_UNSPECIFIED
}


def validate_packet(
    packet: packet_pb2.Packet, limits: Limits, *, size: int | None = None
) -> list[Violation]:
    """Return every rule `packet` breaks; an empty list means it may be stored.

    `size` is the packet's serialized length when the caller already has it.
    """
    out: list[Violation] = []

    if size is None:
        size = packet.ByteSize()
    if size > limits.max_packet_bytes:
        out.append(
            Violation(
                "",
                "PACKET_TOO_LARGE",
                f"packet is {size} bytes serialized; the limit is {limits.max_packet_bytes}",
            )
        )

    if not packet.tracking_id:
        out.append(Violation("tracking_id", "REQUIRED", "is required"))
    elif not CANONICAL_UUID.match(packet.tracking_id):
        out.append(
            Violation(
                "tracking_id",
                "UUID_FORMAT",
                "must be a UUID in canonical lowercase form (8-4-4-4-12 hex digits)",
            )
        )

    check_identifier(out, "origin", packet.origin, limits.max_origin_length, required=True)

    if packet.HasField("dispatched_at"):
        check_timestamp(out, "dispatched_at", packet.dispatched_at)

    version = packet.schema_version
    supported = ", ".join(SUPPORTED_SCHEMA_VERSIONS)
    if not version:
        out.append(
            Violation(
                "schema_version",
                "REQUIRED",
                f"is required; supported: {supported}",
            )
        )
    elif version not in SUPPORTED_SCHEMA_VERSIONS:
        out.append(
            Violation(
                "schema_version",
                "SCHEMA_VERSION_UNSUPPORTED",
                f"{version[:32]!r} is not supported; supported: {supported}",
            )
        )
    elif version == SIGNED_SCHEMA_VERSION:
        if len(packet.chain_of_custody) != 1:
            out.append(
                Violation(
                    "chain_of_custody",
                    "CUSTODY_REQUIRED",
                    f"schema_version {SIGNED_SCHEMA_VERSION} requires a chain_of_custody of "
                    f"exactly the origin's signed 'originated' entry; "
                    f"got {len(packet.chain_of_custody)} entries",
                )
            )
        # The content is signed, so the server cannot fill these in.
        if not packet.ttl_seconds:
            out.append(
                Violation(
                    "ttl_seconds", "REQUIRED", f"is required in schema {SIGNED_SCHEMA_VERSION}"
                )
            )
        if not packet.HasField("dispatched_at"):
            out.append(
                Violation(
                    "dispatched_at", "REQUIRED", f"is required in schema {SIGNED_SCHEMA_VERSION}"
                )
            )
    elif packet.chain_of_custody:
        out.append(
            Violation(
                "chain_of_custody",
                "CUSTODY_NOT_ALLOWED",
                f"schema_version {version} packets carry no custody entries of their own "
                f"(the server signs theirs); use {SIGNED_SCHEMA_VERSION} to sign the origin",
            )
        )

    if packet.ttl_seconds and not 1 <= packet.ttl_seconds <= limits.max_ttl_seconds:
        out.append(
            Violation(
                "ttl_seconds",
                "TTL_RANGE",
                f"must be 1..{limits.max_ttl_seconds} "
                f"(0 means the default {limits.default_ttl_seconds}); got {packet.ttl_seconds}",
            )
        )

    act = packet.speech_act
    if act == speech_act_pb2.SPEECH_ACT_UNSPECIFIED:
        out.append(Violation("speech_act", "REQUIRED", "is required"))
    elif act not in _KNOWN_SPEECH_ACTS:
        out.append(Violation("speech_act", "SPEECH_ACT_UNKNOWN", f"{act} is not a known value"))

    validate_topic(out, "topic", packet.topic, limits.max_topic_length)

    for name in ("conversation_id", "reply_with", "in_reply_to", "protocol"):
        value = getattr(packet, name)
        if value:
            check_text(out, name, value, MAX_SHORT_TEXT)
    if packet.HasField("reply_by"):
        check_timestamp(out, "reply_by", packet.reply_by)
    if packet.HasField("trace_context"):
        validate_trace_context(out, packet.trace_context)

    kind = packet.WhichOneof("contents")
    if kind == "task":
        check_task(out, packet.task)
    elif kind == "finding":
        check_finding(out, packet.finding)
    elif kind == "context":
        check_context(out, packet.context)
    elif kind == "raw":
        check_raw(out, packet.raw)
    elif kind == "data":
        check_json_data(out, "data", packet.data)

    if packet.chain_of_custody:
        check_custody(out, packet.chain_of_custody, limits.max_custody_entries)
    return out
