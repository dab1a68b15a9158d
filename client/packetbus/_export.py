"""Export files: stored packets with their chains and the public keys, as JSON lines,
verifiable offline with no server and no Redis.

    {"kind": "keys", "keys": [SigningKey, ...]}
    {"kind": "packet", "packet": StoredPacket}      (one line per packet: a topic's
                                                     or, exported by task queue or task
                                                     id, a task's or a finding's)
    {"kind": "carcel", "entry": CarcelEntry}        (one per carcel entry: its packet's
                                                     chain is verified like a packet's)
    {"kind": "decision", "decision": PolicyDecisionRecord}   (governance decisions)

Bytes fields (content, records, signatures, keys) are base64, as in protobuf JSON,
so the verifier checks the exact bytes that were signed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format

from packetbus.v1 import (
    carcel_service_pb2,
    custody_pb2,
    custody_service_pb2,
    packet_pb2,
    packet_service_pb2,
    policy_service_pb2,
)

from ._custody import content_message, verify_chain


def export_request(
    topic: str = "",
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    include_carcel_entries: bool = False,
    include_decisions: bool = False,
    task_queue: str = "",
    finding_task_id: str = "",
    record_kind: int = 0,
) -> custody_service_pb2.ExportPacketsRequest:
    """An ExportPackets request; naive datetimes are taken as UTC. With
    `task_queue`, the export is that queue's task packets; with `finding_task_id`,
    that task's finding packets; with `record_kind` (a RecordKind value), that
    kind's record packets (the other fields then unset, as the server requires:
    see ExportPacketsRequest)."""
    request = custody_service_pb2.ExportPacketsRequest(
        topic=topic,
        include_carcel_entries=include_carcel_entries,
        include_decisions=include_decisions,
        task_queue=task_queue,
        finding_task_id=finding_task_id,
        record_kind=record_kind,  # type: ignore[arg-type]
    )
    for name, when in (("since", since), ("until", until)):
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            getattr(request, name).FromDatetime(when)
    return request


def write_keys(out: IO[str], keys: Iterable[custody_pb2.SigningKey]) -> None:
    doc = {"kind": "keys", "keys": [json_format.MessageToDict(k) for k in keys]}
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")


def write_packet(out: IO[str], stored: packet_service_pb2.StoredPacket) -> None:
    doc = {"kind": "packet", "packet": json_format.MessageToDict(stored)}
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")


def write_carcel_entry(out: IO[str], entry: carcel_service_pb2.CarcelEntry) -> None:
    doc = {"kind": "carcel", "entry": json_format.MessageToDict(entry)}
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")


def write_decision(out: IO[str], decision: policy_service_pb2.PolicyDecisionRecord) -> None:
    doc = {"kind": "decision", "decision": json_format.MessageToDict(decision)}
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")


# A line that no longer parses still names its packet, when its tracking id can be read.
_TRACKING_ID = re.compile(r'"trackingId":\s*"([^"]{1,64})"')


def read_keys(path: Path) -> list[custody_pb2.SigningKey]:
    """Keys from an export file's keys line, or from `packetbus keys list` output."""
    doc: Any = json.loads(path.read_text().splitlines()[0])
    return [json_format.ParseDict(k, custody_pb2.SigningKey()) for k in doc["keys"]]


@dataclass
class ExportReport:
    # Chains checked: stored packets and carceled ones.
    packets: int = 0
    verified: int = 0
    carcel_entries: int = 0
    decisions: int = 0
    # (what, problem): what names the packet (tracking id) or the line.
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.packets > 0 and not self.failures


def verify_export(
    path: Path,
    *,
    trusted_keys: Sequence[custody_pb2.SigningKey] | None = None,
    progress: Callable[[int], object] | None = None,
) -> ExportReport:
    """Check every packet's chain in the export at `path`. `progress`, if given, is
    called with each line's length in bytes once it is read (a progress bar's update).

    With `trusted_keys` (obtained some other way), only those keys count;
    otherwise the keys written in the file are used, which proves the file
    is unaltered but not who wrote it.
    """
    report = ExportReport()
    keys: dict[str, custody_pb2.SigningKey] = {k.key_id: k for k in trusted_keys or ()}
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if progress is not None:
                # An export is ASCII JSON (json.dumps escapes the rest): characters are bytes.
                progress(len(line) if line.isascii() else len(line.encode()))
            where = f"line {number}"
            try:
                doc: Any = json.loads(line)
                kind = doc["kind"]
                if kind == "keys":
                    if trusted_keys is None:
                        for raw in doc["keys"]:
                            key = json_format.ParseDict(raw, custody_pb2.SigningKey())
                            keys[key.key_id] = key
                    continue
                if kind == "decision":
                    json_format.ParseDict(
                        doc["decision"], policy_service_pb2.PolicyDecisionRecord()
                    )
                    report.decisions += 1
                    continue
                if kind == "carcel":
                    entry = json_format.ParseDict(doc["entry"], carcel_service_pb2.CarcelEntry())
                    stored = entry.packet
                    where = f"carcel entry {entry.id}, {where}"
                    report.carcel_entries += 1
                elif kind == "packet":
                    stored = json_format.ParseDict(doc["packet"], packet_service_pb2.StoredPacket())
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except (ValueError, KeyError, TypeError, json_format.ParseError) as exc:
                found = _TRACKING_ID.search(line)
                name = f"{found.group(1)} ({where})" if found else where
                report.failures.append((name, f"not a valid export line: {exc}"))
                continue
            report.packets += 1
            problems = _check(stored, keys)
            if problems:
                name = f"{stored.packet.tracking_id or where} ({where})"
                report.failures.extend((name, p) for p in problems)
            else:
                report.verified += 1
    return report


def _check(
    stored: packet_service_pb2.StoredPacket, keys: dict[str, custody_pb2.SigningKey]
) -> list[str]:
    chain = stored.packet.chain_of_custody
    result = verify_chain(
        tracking_id=stored.packet.tracking_id,
        content=stored.content,
        chain=chain,
        keys=keys,
        head=stored.custody_head if stored.HasField("custody_head") else None,
    )
    problems = result.failures()
    # The readable packet must say what the signed content says.
    try:
        signed = packet_pb2.Packet.FromString(stored.content)
    except Exception:
        return [*problems, "the content bytes do not parse as a packet"]
    if content_message(stored.packet) != signed:
        problems.append("the packet's fields differ from its signed content")
    return problems
