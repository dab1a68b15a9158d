"""The rules a packet's `trace_context` follows: W3C Trace Context Level 1
(https://www.w3.org/TR/trace-context/, sections 3.2 traceparent and 3.3 tracestate).

Only version 00 of traceparent is accepted (the only one defined): a later
version's layout is not known, and what is stored must be what consumers can
parse. Violations name the field path as `_validation` does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packetbus.v1 import packet_pb2

    from ._validation import Violation

# 3.2.2: version "-" trace-id "-" parent-id "-" trace-flags, lowercase hex.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}\Z")
_ZERO_TRACE_ID = "0" * 32
_ZERO_PARENT_ID = "0" * 16

# 3.3.1.3: key = simple-key / multi-tenant-key; value = 0*255(chr) nblk-chr.
_KEY_CHARS = r"[a-z0-9_\-*/]"
_KEY = re.compile(
    rf"(?:[a-z]{_KEY_CHARS}{{0,255}}|[a-z0-9]{_KEY_CHARS}{{0,240}}@[a-z]{_KEY_CHARS}{{0,13}})\Z"
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z")
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_LENGTH = 512


def traceparent_problem(value: str) -> str | None:
    """Why `value` is not a version-00 traceparent, or None when it is one."""
    match = _TRACEPARENT.match(value)
    if match is None:
        return (
            "must be a W3C traceparent, version 00: 00-<32 lowercase hex trace-id>-"
            "<16 lowercase hex parent-id>-<2 hex trace-flags>"
        )
    if match.group(1) == _ZERO_TRACE_ID:
        return "trace-id must not be all zeros"
    if match.group(2) == _ZERO_PARENT_ID:
        return "parent-id must not be all zeros"
    return None


def trace_id_of(value: str) -> str | None:
    """The trace-id of `value` when it is a valid version-00 traceparent (the rules of
    `traceparent_problem`), else None."""
    return None if traceparent_problem(value) is not None else value[3:35]


def tracestate_problem(value: str) -> str | None:
    """Why `value` is not a W3C tracestate, or None when it is one (or empty)."""
    if len(value) > MAX_TRACESTATE_LENGTH:
        return f"must be at most {MAX_TRACESTATE_LENGTH} characters; got {len(value)}"
    # 3.3.1.1: list-members separated by "," with optional spaces or tabs
    # around them; empty members are allowed and do not count.
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > MAX_TRACESTATE_MEMBERS:
        return f"must have at most {MAX_TRACESTATE_MEMBERS} list-members; got {len(members)}"
    keys: set[str] = set()
    for n, member in enumerate(members):
        key, equals, rest = member.partition("=")
        if not equals or not _KEY.match(key) or not _VALUE.match(rest):
            return (
                f"list-member {n} is not key=value (key: lowercase letters, digits and "
                "_-*/ with an optional tenant@system; value: printable ASCII without , =)"
            )
        if key in keys:
            return f"key {key!r} appears twice"
        keys.add(key)
    return None


def validate_trace_context(out: list[Violation], trace: packet_pb2.TraceContext) -> None:
    """Append the violations of a packet's trace context to `out`: traceparent
    required and well formed, tracestate (optional) well formed."""
    from ._validation import Violation

    if not trace.traceparent:
        out.append(
            Violation(
                "trace_context.traceparent", "REQUIRED", "is required when trace_context is set"
            )
        )
    else:
        problem = traceparent_problem(trace.traceparent)
        if problem:
            out.append(Violation("trace_context.traceparent", "TRACEPARENT_FORMAT", problem))
    if trace.tracestate:
        problem = tracestate_problem(trace.tracestate)
        if problem:
            out.append(Violation("trace_context.tracestate", "TRACESTATE_FORMAT", problem))
