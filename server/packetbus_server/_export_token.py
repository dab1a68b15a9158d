"""ExportPackets resume tokens: where an export stopped, so another replica can go on.

A token is ASCII, at most MAX_TOKEN_LENGTH characters:

    e1.<fingerprint>.<section>.<cursor>.<topic>

`fingerprint` (16 hex digits) is a hash of the request's own fields (topic, since,
until, include_*, task_queue, finding_task_id, record_kind), so a token only continues the
export it came from;
`section` is p (stored packets), c (carcel entries) or d (decisions); `cursor` the
stream id of the last item sent in that section of `topic`. An export of a task
queue has section t, the queue in place of `topic`, and a task cursor in the same
"<a>-<b>" shape (see _task_export.cursor_text); of a task's findings, section f,
"_" in place of `topic` (the fingerprint binds the task id) and "<offset>-0"; of a record
kind, section r, "_" in place of `topic` (the fingerprint binds the kind) and "<score>-0"
(_record_export). It is not a secret and not signed:
it names a position, and whatever it names is checked like any other input.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from packetbus.v1 import custody_service_pb2

from ._field_rules import validate_topic
from ._fields import is_stream_id
from ._validation import Violation

# Export order within a topic.
SECTIONS = ("p", "c", "d")
PACKETS, CARCEL, DECISIONS = SECTIONS
# Placed packets' exports (_placed_export): one section each.
TASKS, FINDINGS, RECORDS = "t", "f", "r"
MAX_TOKEN_LENGTH = 512
_TOKEN = re.compile(
    r"e1\.(?P<fingerprint>[0-9a-f]{16})\.(?P<section>[pcdtfr])\."
    r"(?P<ms>[0-9]{1,20})-(?P<seq>[0-9]{1,20})\.(?P<topic>.+)\Z",
    re.ASCII | re.DOTALL,
)


@dataclass(frozen=True)
class Position:
    """After item `cursor` of `section` of `topic`."""

    topic: str
    section: str
    cursor: str


def fingerprint(request: custody_service_pb2.ExportPacketsRequest) -> str:
    """16 hex digits naming the request's fields other than resume_token."""

    def when(ts: timestamp_pb2.Timestamp, present: bool) -> str:
        return f"{ts.seconds}.{ts.nanos}" if present else "-"

    fields: tuple[str, ...] = (
        request.topic,
        when(request.since, request.HasField("since")),
        when(request.until, request.HasField("until")),
        str(int(request.include_carcel_entries)),
        str(int(request.include_decisions)),
    )
    # Only when set, so that the tokens of topic exports stay as they were.
    if request.task_queue:
        fields += (request.task_queue,)
    if request.finding_task_id:
        fields += ("finding", request.finding_task_id)
    if request.record_kind:
        fields += ("record", str(request.record_kind))
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()[:16]


def encode(request_fingerprint: str, position: Position) -> str:
    return f"e1.{request_fingerprint}.{position.section}.{position.cursor}.{position.topic}"


def decode(
    out: list[Violation],
    request: custody_service_pb2.ExportPacketsRequest,
    max_topic_length: int,
) -> Position | None:
    """The position `request.resume_token` names; None (and a violation on
    `resume_token` in `out`) when the server did not make it for this request."""
    token = request.resume_token

    def bad(reason: str, description: str) -> None:
        out.append(Violation("resume_token", reason, description))

    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        bad("RESUME_TOKEN", f"not a resume token (ASCII, at most {MAX_TOKEN_LENGTH} characters)")
        return None
    found = _TOKEN.match(token)
    if found is None:
        bad("RESUME_TOKEN", "not a resume token made by ExportPackets")
        return None
    cursor = f"{int(found['ms'])}-{int(found['seq'])}"
    # What the token holds in place of a topic (_placed_export.source: "_" for findings
    # and records).
    placed = request.finding_task_id or request.record_kind
    source = request.task_queue or request.topic or ("_" if placed else "")
    topic_problems: list[Violation] = []
    validate_topic(topic_problems, "resume_token", found["topic"], max_topic_length)
    if not is_stream_id(cursor) or topic_problems:
        bad("RESUME_TOKEN", "not a resume token made by ExportPackets")
        return None
    section = found["section"]
    if (
        found["fingerprint"] != fingerprint(request)
        or (source and found["topic"] != source)
        or (section == TASKS) != bool(request.task_queue)
        or (section == FINDINGS) != bool(request.finding_task_id)
        or (section == RECORDS) != bool(request.record_kind)
        or (section == CARCEL and not request.include_carcel_entries)
        or (section == DECISIONS and not request.include_decisions)
    ):
        bad(
            "RESUME_TOKEN_MISMATCH",
            "made for another export: topic, task_queue, finding_task_id, record_kind, since, "
            "until and include_* must be as in the request that returned it",
        )
        return None
    return Position(found["topic"], section, cursor)
