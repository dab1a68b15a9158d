"""No schema, no dispatch: the rules every packet must pass before Redis sees it.

`validate_packet` reports every violation of a packet at once, each with the
field path (protobuf field names from the packet root, e.g. ``finding.confidence``
or ``chain_of_custody[2].signature``) and a stable rule id, so a sender can fix
all of them in one round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from google.protobuf import timestamp_pb2

from packetbus.v1 import contents_pb2, custody_pb2, packet_pb2, speech_act_pb2

from ._fields import (
    MAX_AGENT_ID_BYTES,
    MAX_INBOX_TOPIC_LENGTH,
    MAX_SAFE_INTEGER,
    inbox_topic_prefixed,
    utf8_length,
)
from ._limits import Limits
from ._struct_depth import struct_depth
from ._trace_context import validate_trace_context
from ._violation import Violation as Violation  # where the validators import it from

SUPPORTED_SCHEMA_VERSIONS: tuple[str, ...] = ("1.0", "1.1")
# Packets of this version carry their origin agent's signature.
SIGNED_SCHEMA_VERSION = "1.1"

# Canonical lowercase form only: one UUID must have exactly one spelling, or
# the idempotency key would not be one.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# Topics become Redis hash tags ({topic}), so braces can never appear.
_TOPIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*\Z")
# Printable, no whitespace: ids are shown in logs and used in keys.
_IDENTIFIER = re.compile(r"[^\s\x00-\x1f\x7f]+\Z")
_NO_CONTROL = re.compile(r"[^\x00-\x1f\x7f]*\Z")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+(\s*;.*)?\Z", re.ASCII)

_KNOWN_SPEECH_ACTS = frozenset(speech_act_pb2.SpeechAct.values()) - {
    speech_act_pb2.SPEECH_ACT_UNSPECIFIED
}

# Timestamp's own documented range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799

MAX_SHORT_TEXT = 255
MAX_CITATION_LENGTH = 2048
MAX_KEY_ID_LENGTH = 128
SIGNATURE_BYTES = 64


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
    elif not _UUID.match(packet.tracking_id):
        out.append(
            Violation(
                "tracking_id",
                "UUID_FORMAT",
                "must be a UUID in canonical lowercase form (8-4-4-4-12 hex digits)",
            )
        )

    _identifier(out, "origin", packet.origin, limits.max_origin_length, required=True)

    if packet.HasField("dispatched_at"):
        _timestamp(out, "dispatched_at", packet.dispatched_at)

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
            _text(out, name, value, MAX_SHORT_TEXT)
    if packet.HasField("reply_by"):
        _timestamp(out, "reply_by", packet.reply_by)
    if packet.HasField("trace_context"):
        validate_trace_context(out, packet.trace_context)

    kind = packet.WhichOneof("contents")
    if kind == "task":
        _task(out, packet.task)
    elif kind == "finding":
        _finding(out, packet.finding)
    elif kind == "context":
        _context(out, packet.context)
    elif kind == "raw":
        _raw(out, packet.raw)
    elif kind == "data":
        struct_depth(out, "data", packet.data)

    if packet.chain_of_custody:
        _custody(out, packet.chain_of_custody, limits.max_custody_entries)
    return out


def validate_topic(out: list[Violation], path: str, topic: str, max_length: int) -> None:
    """Topic names: 1..max_length of letters, digits and ``_ . : / -`` (inbox topics,
    ``inbox/...``: up to MAX_INBOX_TOPIC_LENGTH, whichever is more)."""
    if inbox_topic_prefixed(topic):
        max_length = max(max_length, MAX_INBOX_TOPIC_LENGTH)
    if not topic:
        out.append(Violation(path, "REQUIRED", "is required"))
    elif len(topic) > max_length:  # ASCII only (below), so characters are bytes
        out.append(Violation(path, "LENGTH", f"must be at most {max_length} bytes"))
    elif not _TOPIC.match(topic):
        out.append(
            Violation(
                path,
                "TOPIC_FORMAT",
                "must start with a letter, digit or '_' and contain only "
                "letters, digits and _ . : / -",
            )
        )


# Group names become fields of the topic's group registry, beside "<name>:next".
_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
MAX_GROUP_NAME = 128


def validate_group_name(out: list[Violation], path: str, name: str) -> None:
    """Consumer group names: 1..128 of letters, digits and ``_ . -``."""
    if not name:
        out.append(Violation(path, "REQUIRED", "is required"))
    elif len(name) > MAX_GROUP_NAME or not _GROUP_NAME.match(name):
        out.append(
            Violation(
                path,
                "GROUP_NAME_FORMAT",
                f"must be 1..{MAX_GROUP_NAME} letters, digits and _ . - "
                "(starting with a letter, digit or _)",
            )
        )


def validate_id(out: list[Violation], path: str, value: str) -> None:
    """Ids (agents, tasks, capabilities): required, 1-255 bytes (UTF-8) printable, no whitespace."""
    _identifier(out, path, value, MAX_SHORT_TEXT, required=True)


def validate_agent_id(out: list[Violation], path: str, agent_id: str) -> None:
    """Agent ids (a packet's origin, a key's owner): as other ids, at most
    MAX_AGENT_ID_BYTES, the bound every inbox topic is sized for."""
    _identifier(out, path, agent_id, MAX_AGENT_ID_BYTES, required=True)


def validate_safe_integer(out: list[Violation], path: str, value: int) -> None:
    """Integers that reach a Lua script: 0..2^53-1 (Lua numbers are doubles)."""
    if not 0 <= value <= MAX_SAFE_INTEGER:
        out.append(Violation(path, "RANGE", f"must be 0..{MAX_SAFE_INTEGER}; got {value}"))


def validate_tracking_id(tracking_id: str) -> list[Violation]:
    if _UUID.match(tracking_id):
        return []
    return [
        Violation(
            "tracking_id",
            "UUID_FORMAT",
            "must be a UUID in canonical lowercase form (8-4-4-4-12 hex digits)",
        )
    ]


# str.isprintable() is several times faster than the patterns and implies them
# (control characters and every whitespace but " " are not printable), so the
# patterns only decide for the rare text it does not settle.
def _printable_identifier(value: str) -> bool:
    if value.isprintable():
        return bool(value) and " " not in value
    return _IDENTIFIER.match(value) is not None


def _no_control(value: str) -> bool:
    return value.isprintable() or _NO_CONTROL.match(value) is not None


def _identifier(
    out: list[Violation], path: str, value: str, max_length: int, *, required: bool
) -> None:
    if not value:
        if required:
            out.append(Violation(path, "REQUIRED", "is required"))
        return
    size = utf8_length(value)
    if size > max_length:
        out.append(Violation(path, "LENGTH", f"must be 1..{max_length} bytes (UTF-8); got {size}"))
    elif not _printable_identifier(value):
        out.append(Violation(path, "CHARSET", "must not contain whitespace or control characters"))


def _text(out: list[Violation], path: str, value: str, max_length: int) -> None:
    if not value:
        return
    if utf8_length(value) > max_length:
        out.append(Violation(path, "LENGTH", f"must be at most {max_length} bytes (UTF-8)"))
    elif not _no_control(value):
        out.append(Violation(path, "CHARSET", "must not contain control characters"))


def validate_timestamp(out: list[Violation], path: str, ts: timestamp_pb2.Timestamp) -> bool:
    """Whether `ts` is in Timestamp's own range (years 1..9999, nanos 0..999,999,999);
    outside it, ToDatetime/ToMilliseconds raise or give nonsense."""
    before = len(out)
    _timestamp(out, path, ts)
    return len(out) == before


def _timestamp(out: list[Violation], path: str, ts: timestamp_pb2.Timestamp) -> None:
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        out.append(
            Violation(
                path,
                "TIMESTAMP_RANGE",
                "must be a valid timestamp between years 1 and 9999",
            )
        )


def _task(out: list[Violation], task: contents_pb2.Task) -> None:
    _identifier(out, "task.id", task.id, MAX_SHORT_TEXT, required=False)
    _text(out, "task.type", task.type, MAX_SHORT_TEXT)
    _identifier(
        out, "task.required_capability", task.required_capability, MAX_SHORT_TEXT, required=False
    )
    if task.HasField("deadline"):
        _timestamp(out, "task.deadline", task.deadline)
    if task.HasField("payload"):
        struct_depth(out, "task.payload", task.payload)


def _finding(out: list[Violation], finding: contents_pb2.Finding) -> None:
    if finding.id:
        _identifier(out, "finding.id", finding.id, MAX_SHORT_TEXT, required=False)
    if not finding.claim:
        out.append(Violation("finding.claim", "REQUIRED", "is required"))
    c = finding.confidence
    if not 0.0 <= c <= 1.0:  # also false for NaN
        out.append(
            Violation(
                "finding.confidence",
                "CONFIDENCE_RANGE",
                # Not echoed: a finding's fields are packet contents, which the
                # request log must not show (README "Logs").
                "must be in [0, 1]",
            )
        )
    citations = finding.citations
    if citations:
        # The path is only spelled out for a citation that breaks a rule: this
        # runs for every citation of every finding at ingest.
        for i, citation in enumerate(citations):
            if not citation:
                out.append(Violation(f"finding.citations[{i}]", "REQUIRED", "must not be empty"))
            elif utf8_length(citation) > MAX_CITATION_LENGTH or not _no_control(citation):
                _text(out, f"finding.citations[{i}]", citation, MAX_CITATION_LENGTH)
    if finding.subject:
        _text(out, "finding.subject", finding.subject, MAX_SHORT_TEXT)
    worker_id = finding.worker_id
    if worker_id:
        _identifier(out, "finding.worker_id", worker_id, MAX_SHORT_TEXT, required=False)
    task_id = finding.task_id
    if task_id:
        _identifier(out, "finding.task_id", task_id, MAX_SHORT_TEXT, required=False)


def _context(out: list[Violation], context: contents_pb2.Context) -> None:
    _identifier(out, "context.scope", context.scope, MAX_SHORT_TEXT, required=True)
    _identifier(out, "context.name", context.name, MAX_SHORT_TEXT, required=True)
    if context.HasField("data"):
        struct_depth(out, "context.data", context.data)


def _raw(out: list[Violation], raw: contents_pb2.RawContents) -> None:
    if not raw.content_type:
        out.append(Violation("raw.content_type", "REQUIRED", "is required"))
    elif utf8_length(raw.content_type) > MAX_SHORT_TEXT or not _MEDIA_TYPE.match(raw.content_type):
        out.append(
            Violation(
                "raw.content_type",
                "MEDIA_TYPE_FORMAT",
                "must be a media type such as application/json",
            )
        )


def _custody(
    out: list[Violation], chain: Iterable[custody_pb2.CustodyEntry], max_entries: int
) -> None:
    entries = list(chain)
    if len(entries) > max_entries:
        out.append(
            Violation(
                "chain_of_custody",
                "TOO_MANY_ENTRIES",
                f"has {len(entries)} entries; the limit is {max_entries}",
            )
        )
        return
    for i, entry in enumerate(entries):
        base = f"chain_of_custody[{i}]"
        if not entry.record:
            out.append(Violation(f"{base}.record", "REQUIRED", "is required"))
        if len(entry.signature) != SIGNATURE_BYTES:
            out.append(
                Violation(
                    f"{base}.signature",
                    "SIGNATURE_LENGTH",
                    f"must be {SIGNATURE_BYTES} bytes (Ed25519); got {len(entry.signature)}",
                )
            )
        if not entry.key_id:
            out.append(Violation(f"{base}.key_id", "REQUIRED", "is required"))
        elif utf8_length(entry.key_id) > MAX_KEY_ID_LENGTH or not _printable_identifier(
            entry.key_id
        ):
            out.append(
                Violation(
                    f"{base}.key_id",
                    "KEY_ID_FORMAT",
                    f"must be 1..{MAX_KEY_ID_LENGTH} bytes (UTF-8) of printable characters",
                )
            )
