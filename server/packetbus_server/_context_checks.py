"""Request validation for ContextService: names, sizes, TTLs and ids of context calls.

Each check appends Violations (field path, reason, message) to `out` and never
raises; the servicer aborts INVALID_ARGUMENT with all of them at once (_status).
"""

from __future__ import annotations

import re

from packetbus.v1 import context_service_pb2 as pb

from ._field_rules import validate_agent_id, validate_safe_integer
from ._fields import utf8_length
from ._limits import Limits
from ._validation import Violation

MAX_SCOPE_LENGTH = 200
MAX_NAME_LENGTH = 512
MAX_CONTENT_TYPE_LENGTH = 255
_PRINTABLE = re.compile(r"[^\s\x00-\x1f\x7f]+\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def printable(out: list[Violation], path: str, value: str, max_length: int) -> None:
    """`value` at `path`: required, 1..`max_length` UTF-8 bytes, no whitespace or controls."""
    if not value:
        out.append(Violation(path, "REQUIRED", "is required"))
    elif utf8_length(value) > max_length:
        out.append(Violation(path, "LENGTH", f"must be 1..{max_length} bytes (UTF-8)"))
    elif not _PRINTABLE.match(value):
        out.append(Violation(path, "CHARSET", "must not contain whitespace or control characters"))


def where(out: list[Violation], prefix: str, scope: str, name: str) -> None:
    """A document's scope and name, at `<prefix>scope` and `<prefix>name`."""
    printable(out, f"{prefix}scope", scope, MAX_SCOPE_LENGTH)
    printable(out, f"{prefix}name", name, MAX_NAME_LENGTH)


def ttl_ms(limits: Limits, out: list[Violation], path: str, ttl: int, default: int) -> int:
    """A TTL in seconds (0: `default` seconds) as milliseconds; at most
    `limits.max_context_ttl_seconds`."""
    if ttl < 0 or ttl > limits.max_context_ttl_seconds:
        out.append(Violation(path, "RANGE", f"must be 0..{limits.max_context_ttl_seconds}"))
    return (ttl or default) * 1000


def check_header(limits: Limits, h: pb.PutContextHeader) -> list[Violation]:
    """What is wrong with an upload's header (the first PutContext message)."""
    out: list[Violation] = []
    where(out, "header.", h.scope, h.name)
    if h.HasField("expected_version"):
        validate_safe_integer(out, "header.expected_version", h.expected_version)
    ttl_ms(limits, out, "header.ttl_seconds", h.ttl_seconds, 0)
    if utf8_length(h.content_type) > MAX_CONTENT_TYPE_LENGTH:
        out.append(Violation("header.content_type", "LENGTH", "must be at most 255 bytes"))
    if not 0 <= h.size <= limits.max_context_bytes:
        out.append(
            Violation("header.size", "RANGE", f"must be 0..{limits.max_context_bytes} bytes")
        )
    if len(h.sha256) != 32:
        out.append(Violation("header.sha256", "LENGTH", "must be a SHA-256 (32 bytes)"))
    validate_agent_id(out, "header.author", h.author)
    if h.upload_id and not _UUID.match(h.upload_id):
        out.append(Violation("header.upload_id", "UUID_FORMAT", "must be a lowercase UUID"))
    return out


def check_key(out: list[Violation], key: str) -> None:
    """A global map key: 1..255 printable bytes."""
    printable(out, "key", key, 255)


def check_entry(limits: Limits, out: list[Violation], entry: pb.LogEntry, ttl: int) -> int:
    """A memory or trace entry and its TTL in seconds: the TTL in milliseconds
    (0: `limits.default_log_ttl_seconds`)."""
    if not _UUID.match(entry.entry_id):
        out.append(Violation("entry.entry_id", "UUID_FORMAT", "must be a lowercase UUID"))
    if entry.ByteSize() > limits.max_log_entry_bytes:
        out.append(Violation("entry", "LENGTH", f"at most {limits.max_log_entry_bytes} bytes"))
    return ttl_ms(limits, out, "ttl_seconds", ttl, limits.default_log_ttl_seconds)


def check_limit(limits: Limits, out: list[Violation], limit: int) -> None:
    """A log listing's limit: 0..`limits.max_log_entries` (0: all, a page at a time)."""
    if not 0 <= limit <= limits.max_log_entries:
        out.append(Violation("limit", "RANGE", f"must be 0..{limits.max_log_entries}"))
