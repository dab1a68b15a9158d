"""The rules for single fields that every request shares: topics, ids and agent ids,
consumer group names, tracking ids, integers that reach a script, timestamps and
free text; each appends its Violations to the caller's list.

Apart from the packet's own rules (_validation) because every service checks its
requests' fields with them, not only Dispatch; a packet's contents are checked in
_content_rules.
"""

from __future__ import annotations

import re

from google.protobuf import timestamp_pb2

from ._fields import (
    MAX_AGENT_ID_BYTES,
    MAX_INBOX_TOPIC_LENGTH,
    MAX_SAFE_INTEGER,
    inbox_topic_prefixed,
    utf8_length,
)
from ._violation import Violation

# Canonical lowercase form only: one UUID must have exactly one spelling, or
# the idempotency key would not be one.
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# Topics become Redis hash tags ({topic}), so braces can never appear.
_TOPIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*\Z")
# Printable, no whitespace: ids are shown in logs and used in keys.
_IDENTIFIER = re.compile(r"[^\s\x00-\x1f\x7f]+\Z")
_NO_CONTROL = re.compile(r"[^\x00-\x1f\x7f]*\Z")

# Timestamp's own documented range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799

MAX_SHORT_TEXT = 255


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
    check_identifier(out, path, value, MAX_SHORT_TEXT, required=True)


def validate_agent_id(out: list[Violation], path: str, agent_id: str) -> None:
    """Agent ids (a packet's origin, a key's owner): as other ids, at most
    MAX_AGENT_ID_BYTES, the bound every inbox topic is sized for."""
    check_identifier(out, path, agent_id, MAX_AGENT_ID_BYTES, required=True)


def validate_safe_integer(out: list[Violation], path: str, value: int) -> None:
    """Integers that reach a Lua script: 0..2^53-1 (Lua numbers are doubles)."""
    if not 0 <= value <= MAX_SAFE_INTEGER:
        out.append(Violation(path, "RANGE", f"must be 0..{MAX_SAFE_INTEGER}; got {value}"))


def validate_tracking_id(tracking_id: str) -> list[Violation]:
    if CANONICAL_UUID.match(tracking_id):
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
def printable_identifier(value: str) -> bool:
    if value.isprintable():
        return bool(value) and " " not in value
    return _IDENTIFIER.match(value) is not None


def no_control(value: str) -> bool:
    return value.isprintable() or _NO_CONTROL.match(value) is not None


def check_identifier(
    out: list[Violation], path: str, value: str, max_length: int, *, required: bool
) -> None:
    if not value:
        if required:
            out.append(Violation(path, "REQUIRED", "is required"))
        return
    size = utf8_length(value)
    if size > max_length:
        out.append(Violation(path, "LENGTH", f"must be 1..{max_length} bytes (UTF-8); got {size}"))
    elif not printable_identifier(value):
        out.append(Violation(path, "CHARSET", "must not contain whitespace or control characters"))


def check_text(out: list[Violation], path: str, value: str, max_length: int) -> None:
    if not value:
        return
    if utf8_length(value) > max_length:
        out.append(Violation(path, "LENGTH", f"must be at most {max_length} bytes (UTF-8)"))
    elif not no_control(value):
        out.append(Violation(path, "CHARSET", "must not contain control characters"))


def validate_timestamp(out: list[Violation], path: str, ts: timestamp_pb2.Timestamp) -> bool:
    """Whether `ts` is in Timestamp's own range (years 1..9999, nanos 0..999,999,999);
    outside it, ToDatetime/ToMilliseconds raise or give nonsense."""
    before = len(out)
    check_timestamp(out, path, ts)
    return len(out) == before


def check_timestamp(out: list[Violation], path: str, ts: timestamp_pb2.Timestamp) -> None:
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        out.append(
            Violation(
                path,
                "TIMESTAMP_RANGE",
                "must be a valid timestamp between years 1 and 9999",
            )
        )
