"""Export files: stored packets with their chains and the public keys, as JSON lines,
verifiable offline with no server and no Redis.

    {"kind": "keys", "keys": [SigningKey, ...]}
    {"kind": "packet", "packet": StoredPacket}      (one line per packet)

Bytes fields (content, records, signatures, keys) are base64, as in protobuf JSON,
so the verifier checks the exact bytes that were signed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format

from packetbus.v1 import custody_pb2, packet_pb2, packet_service_pb2

from ._custody import content_message, verify_chain


def write_keys(out: IO[str], keys: Iterable[custody_pb2.SigningKey]) -> None:
    doc = {"kind": "keys", "keys": [json_format.MessageToDict(k) for k in keys]}
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")


def write_packet(out: IO[str], stored: packet_service_pb2.StoredPacket) -> None:
    doc = {"kind": "packet", "packet": json_format.MessageToDict(stored)}
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")


def read_keys(path: Path) -> list[custody_pb2.SigningKey]:
    """Keys from an export file's keys line, or from `packetbus keys list` output."""
    doc: Any = json.loads(path.read_text().splitlines()[0])
    return [json_format.ParseDict(k, custody_pb2.SigningKey()) for k in doc["keys"]]


@dataclass
class ExportReport:
    packets: int = 0
    verified: int = 0
    # (what, problem): what names the packet (tracking id) or the line.
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.packets > 0 and not self.failures


def verify_export(
    path: Path, *, trusted_keys: Sequence[custody_pb2.SigningKey] | None = None
) -> ExportReport:
    """Check every packet's chain in the export at `path`.

    With `trusted_keys` (obtained some other way), only those keys count;
    otherwise the keys written in the file are used, which proves the file
    is unaltered but not who wrote it.
    """
    report = ExportReport()
    keys: dict[str, custody_pb2.SigningKey] = {k.key_id: k for k in trusted_keys or ()}
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
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
                if kind != "packet":
                    raise ValueError(f"unknown kind {kind!r}")
                stored = json_format.ParseDict(doc["packet"], packet_service_pb2.StoredPacket())
            except (ValueError, KeyError, TypeError, json_format.ParseError) as exc:
                report.failures.append((where, f"not a valid export line: {exc}"))
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
