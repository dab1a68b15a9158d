"""Micro-benchmark of the checks of JSON `data` contents (issue 16).

Times `struct_depth` (the nesting check) against `struct_depth_reference` (the
walk over every Value it replaced, kept verbatim), and `check_json_data` (what
validation runs now: the nesting check and the empty-Value check, VALUE_KIND), on
freshly parsed Structs, as the server sees them. Prints one JSON document: per
case, the packet's serialized bytes and the median (and min) µs per check over
--rounds.

    .venv/bin/python bench/struct_depth_bench.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2

from packetbus.v1.packet_pb2 import Packet
from packetbus.v1.speech_act_pb2 import SpeechAct
from packetbus_server._json_data import check_json_data
from packetbus_server._struct_depth import MAX_STRUCT_DEPTH, struct_depth, struct_depth_reference
from packetbus_server._validation import Violation


def json_contents(i: int) -> dict[str, Any]:
    """dispatch_bench's finding as a JSON object: a ~0.5 KB packet in all."""
    return {
        "id": f"finding-{i:06d}",
        "claim": "Median p99 dispatch latency regressed 18% after the batching change on "
        "the 2-vCPU runners; the slowdown tracks redis AOF fsync stalls.",
        "confidence": 0.82,
        "citations": [
            "https://ci.example.org/runs/48213/artifacts/bench.json",
            "https://ci.example.org/runs/48177/artifacts/bench.json",
        ],
        "worker_id": "worker-07",
        "labels": {"area": "perf", "severity": "medium"},
    }


def packet(data: struct_pb2.Struct) -> Packet:
    p = Packet(
        tracking_id=str(uuid.uuid4()),
        topic="bench.struct-depth",
        origin="bench-researcher-07",
        schema_version="1.0",
        speech_act=SpeechAct.Value("SPEECH_ACT_INFORM"),
        ttl_seconds=900,
        conversation_id="conv-5f1c2a9e",
    )
    p.data.CopyFrom(data)
    return p


def chain(depth: int) -> struct_pb2.Struct:
    """Containers alternating list/struct down to `depth` (root = 1), beside a flat object."""
    root = struct_pb2.Struct()
    root.update({"id": "deep", "n": 1.5, "ok": True})
    node: struct_pb2.Struct | struct_pb2.ListValue = root
    for d in range(2, depth + 1):
        value = node.fields["k"] if isinstance(node, struct_pb2.Struct) else node.values.add()
        if d % 2:
            node = value.struct_value
            node.SetInParent()
        else:
            node = value.list_value
            node.SetInParent()
    return root


def cases() -> dict[str, list[bytes]]:
    """Serialized packets per case (100 distinct ones for the JSON object)."""
    flat = []
    for i in range(100):
        s = struct_pb2.Struct()
        s.update(json_contents(i))
        flat.append(packet(s).SerializeToString())
    rows = struct_pb2.Struct()
    rows.update({"rows": [json_contents(i) for i in range(20)]})
    return {
        "json_object": flat,
        "json_20_rows": [packet(rows).SerializeToString()],
        f"deep_{MAX_STRUCT_DEPTH}": [packet(chain(MAX_STRUCT_DEPTH)).SerializeToString()],
        f"deep_{MAX_STRUCT_DEPTH + 1}_rejected": [
            packet(chain(MAX_STRUCT_DEPTH + 1)).SerializeToString()
        ],
    }


Check = Callable[[list[Violation], str, struct_pb2.Struct], None]


def time_check(check: Check, encoded: list[bytes], rounds: int, per_round: int) -> list[float]:
    """µs per check, one figure per round; each check sees a newly parsed packet."""
    figures = []
    for _ in range(rounds):
        packets = [Packet.FromString(encoded[i % len(encoded)]) for i in range(per_round)]
        start = time.perf_counter()
        for p in packets:
            check([], "data", p.data)
        figures.append((time.perf_counter() - start) / per_round * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=5000)
    args = parser.parse_args()
    checks: dict[str, Check] = {
        "walk_us": struct_depth_reference,
        "check_us": struct_depth,
        "json_data_us": check_json_data,
    }
    result: dict[str, Any] = {}
    for name, encoded in cases().items():
        row: dict[str, Any] = {"packet_bytes": len(encoded[0])}
        for label, check in checks.items():
            figures = time_check(check, encoded, args.rounds, args.per_round)
            row[label] = {
                "median": round(statistics.median(figures), 2),
                "min": round(min(figures), 2),
            }
        row["walk_over_check"] = round(row["walk_us"]["median"] / row["check_us"]["median"], 1)
        result[name] = row
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
