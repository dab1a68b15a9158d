"""Generate the custody test vectors in protos/packetbus/v1/custody_test_vectors.json.

    python scripts/generate_custody_vectors.py            # rewrite the file
    python scripts/generate_custody_vectors.py --check    # exit 1 if the committed file is stale

The vectors are made by the Python implementation (client/packetbus/_custody.py,
_ed25519.py, _merkle.py, _wire.py; the server's _custodian.py and _sealed_batch.py)
from fixed seeds and times, and every byte string is lowercase hex. What each
section means is in protos/packetbus/v1/CUSTODY.md; tests/test_custody_vectors.py
checks every vector against the implementation, and CI runs ``--check``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from custody_vector_cases import chain_cases
from custody_vector_chains import (
    AGENT,
    IDENTITY_POINT,
    KEYS,
    SERVER,
    T0_NS,
    Chain,
    agent_chain,
    approval_chain,
    export_lines,
    key_json,
    packet_json,
    seed,
    signed_packet,
)
from google.protobuf import json_format

from packetbus import _custody, _ed25519, _merkle, _wire
from packetbus.v1 import custody_pb2, packet_pb2

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "protos" / "packetbus" / "v1" / "custody_test_vectors.json"


def _record_fields(raw: bytes) -> dict[str, Any]:
    """A serialized CustodyRecord's fields that are set, by name (bytes as hex)."""
    record = custody_pb2.CustodyRecord.FromString(raw)
    out: dict[str, Any] = {}
    for field, value in record.ListFields():
        if field.name == "occurred_at":
            out[field.name] = {"seconds": value.seconds, "nanos": value.nanos}
        else:
            out[field.name] = value.hex() if isinstance(value, bytes) else value
    return out


def _walkthrough(chain: Chain) -> dict[str, Any]:
    """Every byte a verifier computes for a valid chain, entry by entry."""
    entries = []
    previous = b""
    for raw_entry, entry in zip(chain.entries, chain.parsed(), strict=True):
        item: dict[str, Any] = {
            "entry": raw_entry.hex(),
            "record": entry.record.hex(),
            "record_fields": _record_fields(entry.record),
            "key_id": entry.key_id,
            "signature": entry.signature.hex(),
            "entry_hash": _custody.entry_hash(entry.record).hex(),
            "previous_hash_expected": previous.hex(),
        }
        if entry.HasField("batch_proof"):
            proof = entry.batch_proof
            root = _merkle.root_from_proof(
                _merkle.leaf_hash(entry.record),
                proof.leaf_index,
                proof.leaf_count,
                proof.sibling_hashes,
            )
            assert root is not None
            item["batch_proof"] = {
                "leaf_index": proof.leaf_index,
                "leaf_count": proof.leaf_count,
                "sibling_hashes": [h.hex() for h in proof.sibling_hashes],
            }
            item["merkle_root"] = root.hex()
            item["signed_message"] = (_custody.BATCH_DOMAIN + root).hex()
        else:
            item["signed_message"] = (_custody.ENTRY_DOMAIN + entry.record).hex()
        entries.append(item)
        previous = _custody.entry_hash(entry.record)
    head = custody_pb2.CustodyHead.FromString(chain.head)
    statement = custody_pb2.CustodyHeadStatement.FromString(head.statement)
    return {
        "tracking_id": chain.packet.tracking_id,
        "content": chain.content.hex(),
        "content_digest": _custody.digest(chain.content).hex(),
        "entries": entries,
        "head": {
            "head": chain.head.hex(),
            "statement": head.statement.hex(),
            "statement_fields": {
                "tracking_id": statement.tracking_id,
                "length": statement.length,
                "last_entry_hash": statement.last_entry_hash.hex(),
                "content_digest": statement.content_digest.hex(),
                "issued_at": {
                    "seconds": statement.issued_at.seconds,
                    "nanos": statement.issued_at.nanos,
                },
                "key_id": statement.key_id,
            },
            "key_id": head.key_id,
            "signature": head.signature.hex(),
            "signed_message": (_custody.HEAD_DOMAIN + head.statement).hex(),
        },
    }


def _ed25519_cases() -> list[dict[str, Any]]:
    message = b"packetbus custody test vectors"
    good = SERVER.sign(b"", message)
    high_s = int.from_bytes(good[32:], "little") + _ed25519.L
    order8 = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
    cases = [
        ("valid", SERVER.public_key, message, good, True, "a valid signature"),
        ("message_changed", SERVER.public_key, message + b"!", good, False, "another message"),
        (
            "non_canonical_s",
            SERVER.public_key,
            message,
            good[:32] + high_s.to_bytes(32, "little"),
            False,
            "S + L: S >= L is refused (RFC 8032 5.1.7 step 1)",
        ),
        ("short_signature", SERVER.public_key, message, good[:63], False, "63 bytes"),
        (
            "small_order_key_identity_signature",
            IDENTITY_POINT,
            message,
            IDENTITY_POINT + bytes(32),
            False,
            "A = identity, R = identity, S = 0: holds for every message without the small-order check",
        ),
        (
            "small_order_key_sign_bit",
            IDENTITY_POINT[:31] + b"\x80",
            message,
            IDENTITY_POINT + bytes(32),
            False,
            "the identity with its sign bit set: compared with bit 255 cleared",
        ),
        (
            "small_order_r",
            SERVER.public_key,
            message,
            order8 + good[32:],
            False,
            "R of order 8",
        ),
        (
            "non_canonical_key",
            bytes.fromhex("f0" + "ff" * 30 + "7f"),
            message,
            good,
            False,
            "A = y = p + 3, a non-canonical encoding (section 3 step 4: y < p is required)",
        ),
    ]
    return [
        {
            "name": name,
            "public_key": key.hex(),
            "message": msg.hex(),
            "signature": sig.hex(),
            "valid": valid,
            "about": about,
        }
        for name, key, msg, sig, valid, about in cases
    ]


def _merkle_trees() -> list[dict[str, Any]]:
    trees = []
    for n in (1, 2, 3, 4, 5, 7):
        data = [f"leaf {i}".encode() for i in range(n)]
        leaves = [_merkle.leaf_hash(d) for d in data]
        root, paths = _merkle.root_and_proofs(leaves)
        trees.append(
            {
                "leaf_data": [d.hex() for d in data],
                "leaf_hashes": [h.hex() for h in leaves],
                "root": root.hex(),
                "proofs": [[h.hex() for h in path] for path in paths],
            }
        )
    return trees


def _merkle_bad_proofs(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Proofs that prove nothing (root_from_proof gives None), from the 5-leaf tree."""
    leaf, path = tree["leaf_hashes"][2], tree["proofs"][2]
    return [
        {"name": "index_out_of_range", "leaf": leaf, "index": 5, "count": 5, "path": path},
        {"name": "path_too_long", "leaf": leaf, "index": 2, "count": 5, "path": [*path, path[0]]},
        {"name": "path_too_short", "leaf": leaf, "index": 2, "count": 5, "path": path[:-1]},
        {
            "name": "sibling_not_32_bytes",
            "leaf": leaf,
            "index": 2,
            "count": 5,
            "path": [path[0][:62], *path[1:]],
        },
    ]


def _canonical_cases() -> list[dict[str, Any]]:
    """Packets as protobuf JSON and the bytes deterministic serialization makes of them."""
    inputs: list[tuple[str, str, dict[str, Any]]] = [
        (
            "defaults_omitted",
            "ttl_seconds 0, empty strings and an unset speech act write nothing",
            {
                "trackingId": "t-1",
                "ttlSeconds": 0,
                "origin": "",
                "speechAct": "SPEECH_ACT_UNSPECIFIED",
            },
        ),
        (
            "field_number_order",
            "fields go out by number, whatever order they were set in",
            {
                "topic": "research",
                "ttlSeconds": 60,
                "trackingId": "t-2",
                "traceContext": {"traceparent": "00-x"},
            },
        ),
        (
            "timestamp_whole_seconds",
            "a Timestamp with nanos 0 writes only seconds; one at the epoch is an empty message",
            {"dispatchedAt": "2026-01-01T00:00:00Z", "replyBy": "1970-01-01T00:00:00Z"},
        ),
        (
            "map_key_order",
            "map entries by key: bytewise over the common prefix, then the LONGER key first; "
            "both key and value are written even when empty",
            {"task": {"labels": {"b": "2", "a": "1", "ab": "3", "": "0", "B": "", "z": "x"}}},
        ),
        (
            "struct_defaults_in_oneof",
            "Struct fields are a map<string, Value>; a Value's oneof member is written even at "
            "its default (0, false, null)",
            {"data": {"n": 0, "f": False, "z": None, "s": "", "l": [1, "x"]}},
        ),
    ]
    out = []
    for name, about, doc in inputs:
        packet = json_format.ParseDict(doc, packet_pb2.Packet())
        out.append(
            {
                "name": name,
                "about": about,
                "message": "packetbus.v1.Packet",
                "json": doc,
                "bytes": packet.SerializeToString(deterministic=True).hex(),
            }
        )
    # Unknown fields (here field 999, varint 5) are kept and written after the known ones.
    received = bytes.fromhex("c83e05") + bytes.fromhex("0a01741201") + b"o"
    packet = packet_pb2.Packet.FromString(received)
    out.append(
        {
            "name": "unknown_fields_kept_last",
            "about": "an unknown field (999) parsed first is written after the known fields",
            "message": "packetbus.v1.Packet",
            "input_bytes": received.hex(),
            "bytes": packet.SerializeToString(deterministic=True).hex(),
        }
    )
    return out


def _signed_packet_section() -> dict[str, Any]:
    unsigned = signed_packet()
    content = _custody.content_bytes(unsigned)
    entry = unsigned.chain_of_custody[0]
    without = _custody.content_message(unsigned)
    return {
        "agent_id": AGENT.agent_id,
        "key_id": AGENT.signer.key_id,
        "content_json": packet_json(without),
        "content": content.hex(),
        "content_digest": _custody.digest(content).hex(),
        "record": entry.record.hex(),
        "record_fields": _record_fields(entry.record),
        "signed_message": (_custody.ENTRY_DOMAIN + entry.record).hex(),
        "signature": entry.signature.hex(),
        "entry": entry.SerializeToString(deterministic=True).hex(),
        "packet": unsigned.SerializeToString(deterministic=True).hex(),
    }


def build() -> dict[str, Any]:
    main, approval = agent_chain(), approval_chain()
    trees = _merkle_trees()
    registration = _custody.agent_key_message(AGENT.agent_id, AGENT.signer.public_key)
    return {
        "about": "packetbus custody test vectors; generated by scripts/generate_custody_vectors.py "
        "(do not edit); meaning: protos/packetbus/v1/CUSTODY.md",
        "version": 1,
        "domains": {
            "entry": _custody.ENTRY_DOMAIN.hex(),
            "batch": _custody.BATCH_DOMAIN.hex(),
            "head": _custody.HEAD_DOMAIN.hex(),
            "agent_key": _custody.AGENT_KEY_DOMAIN.hex(),
        },
        "small_order_points": sorted(p.hex() for p in _ed25519._SMALL_ORDER),
        "seeds": {
            name: seed(label).hex()
            for name, label in (
                ("server", "server"),
                ("haiku-2", "agent haiku-2"),
                ("approver-1", "agent approver-1"),
            )
        },
        "keys": {name: key_json(key) for name, key in KEYS.items()},
        "ed25519": _ed25519_cases(),
        "merkle": {"trees": trees, "bad_proofs": _merkle_bad_proofs(trees[4])},
        "canonical_serialization": _canonical_cases(),
        "agent_key_registration": {
            "agent_id": AGENT.agent_id,
            "public_key": AGENT.signer.public_key.hex(),
            "message": registration.hex(),
            "proof": AGENT.signer.sign(b"", registration).hex(),
        },
        "signed_packet": _signed_packet_section(),
        "walkthroughs": {
            "signed_packet_chain": _walkthrough(main),
            "approval_chain": _walkthrough(approval),
        },
        "sealed_batch": {
            "about": "informative: the server's storage form of the ingest batch; readers expand it "
            "back to the walkthrough's entries 1 and 2 before anyone sees them",
            "stored": main.sealed_batch.hex(),
            "leaf": main.sealed_leaf,
            "sequence": 1,
            "previous_hash": _custody.entry_hash(main.parsed()[0].record).hex(),
            "expanded": (b"".join(_chain_field(e) for e in main.entries[1:3])).hex(),
        },
        "chains": chain_cases(main, approval),
        "export": {
            "lines": export_lines(main),
            "expected": {"packets": 1, "verified": 1, "ok": True},
        },
        "t0_ns": T0_NS,
    }


def _chain_field(entry: bytes) -> bytes:
    """`entry` as a Packet.chain_of_custody element (field 40, length-delimited)."""
    return _wire.with_chain(b"", [entry])


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=True, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed file is stale"
    )
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(
                f"{OUT.relative_to(ROOT)} is stale: run scripts/generate_custody_vectors.py",
                file=sys.stderr,
            )
            return 1
        print(f"{OUT.relative_to(ROOT)} is fresh")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({hashlib.sha256(text.encode()).hexdigest()[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
