"""The rules for a packet's contents (a task, finding, context or raw contents) and
for the custody entries it carries, as validate_packet (_validation) applies them.

Apart from _validation so the packet's own fields and schema versions read on their
own there, and each kind of contents has its rules in one place here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from packetbus.v1 import contents_pb2, custody_pb2

from ._field_rules import (
    MAX_SHORT_TEXT,
    check_identifier,
    check_text,
    check_timestamp,
    no_control,
    printable_identifier,
)
from ._fields import utf8_length
from ._json_data import check_json_data
from ._violation import Violation

_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+(\s*;.*)?\Z", re.ASCII)
MAX_CITATION_LENGTH = 2048
MAX_KEY_ID_LENGTH = 128
SIGNATURE_BYTES = 64


def check_task(out: list[Violation], task: contents_pb2.Task) -> None:
    check_identifier(out, "task.id", task.id, MAX_SHORT_TEXT, required=False)
    check_text(out, "task.type", task.type, MAX_SHORT_TEXT)
    check_identifier(
        out, "task.required_capability", task.required_capability, MAX_SHORT_TEXT, required=False
    )
    if task.HasField("deadline"):
        check_timestamp(out, "task.deadline", task.deadline)
    if task.HasField("payload"):
        check_json_data(out, "task.payload", task.payload)


def check_finding(out: list[Violation], finding: contents_pb2.Finding) -> None:
    if finding.id:
        check_identifier(out, "finding.id", finding.id, MAX_SHORT_TEXT, required=False)
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
            elif utf8_length(citation) > MAX_CITATION_LENGTH or not no_control(citation):
                check_text(out, f"finding.citations[{i}]", citation, MAX_CITATION_LENGTH)
    if finding.subject:
        check_text(out, "finding.subject", finding.subject, MAX_SHORT_TEXT)
    worker_id = finding.worker_id
    if worker_id:
        check_identifier(out, "finding.worker_id", worker_id, MAX_SHORT_TEXT, required=False)
    task_id = finding.task_id
    if task_id:
        check_identifier(out, "finding.task_id", task_id, MAX_SHORT_TEXT, required=False)


def check_context(out: list[Violation], context: contents_pb2.Context) -> None:
    check_identifier(out, "context.scope", context.scope, MAX_SHORT_TEXT, required=True)
    check_identifier(out, "context.name", context.name, MAX_SHORT_TEXT, required=True)
    if context.HasField("data"):
        check_json_data(out, "context.data", context.data)


def check_raw(out: list[Violation], raw: contents_pb2.RawContents) -> None:
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


def check_custody(
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
        elif utf8_length(entry.key_id) > MAX_KEY_ID_LENGTH or not printable_identifier(
            entry.key_id
        ):
            out.append(
                Violation(
                    f"{base}.key_id",
                    "KEY_ID_FORMAT",
                    f"must be 1..{MAX_KEY_ID_LENGTH} bytes (UTF-8) of printable characters",
                )
            )
