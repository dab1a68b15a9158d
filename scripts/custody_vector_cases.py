"""The chain cases of protos/packetbus/v1/custody_test_vectors.json: valid and tampered.

Each case states the verdicts it must get (CUSTODY.md "Verifying a chain");
`chain_cases` fails if the implementation disagrees, so the file never records a
verdict nobody meant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from custody_vector_chains import (
    AGENT,
    ALL_KEYS,
    IDENTITY_POINT,
    KEYS,
    T0_NS,
    Chain,
    approval_chain,
    head_of,
)

from packetbus import _custody, _ed25519
from packetbus.v1 import custody_pb2


def _flip(data: bytes, at: int) -> bytes:
    """`data` with one bit of byte `at` (negative: from the end) changed."""
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _with_entry(
    entries: Sequence[bytes], index: int, entry: custody_pb2.CustodyEntry
) -> list[bytes]:
    out = list(entries)
    out[index] = entry.SerializeToString(deterministic=True)
    return out


def _small_order_entry(tracking_id: str, content: bytes) -> bytes:
    """An "originated" entry under the identity key with signature R = identity, S = 0:
    a cofactorless verifier without the small-order check accepts it for any record."""
    record = custody_pb2.CustodyRecord(
        actor="mallory",
        action=_custody.ORIGINATED,
        content_digest=_custody.digest(content),
        key_id=KEYS["small-order-mallory"].key_id,
        tracking_id=tracking_id,
    )
    record.occurred_at.FromNanoseconds(T0_NS)
    raw = record.SerializeToString(deterministic=True)
    entry = custody_pb2.CustodyEntry(
        record=raw, signature=IDENTITY_POINT + bytes(32), key_id=record.key_id
    )
    return entry.SerializeToString(deterministic=True)


def _non_canonical(entry: custody_pb2.CustodyEntry) -> custody_pb2.CustodyEntry:
    """`entry` with S replaced by S + L: the same signature to a verifier that reduces S mod L."""
    s = int.from_bytes(entry.signature[32:], "little") + _ed25519.L
    out = custody_pb2.CustodyEntry()
    out.CopyFrom(entry)
    out.signature = entry.signature[:32] + s.to_bytes(32, "little")
    return out


def chain_cases(main: Chain, approval: Chain) -> list[dict[str, Any]]:
    """Every chain case with its inputs (hex) and the verdicts it must get."""
    e, parsed, ok4 = main.entries, main.parsed(), ["OK"] * 4
    replayed = approval_chain().entries[2]  # approver-1's approval of another packet
    proof_changed = _copy(parsed[2])
    sibling = proof_changed.batch_proof.sibling_hashes
    sibling[0] = _flip(sibling[0], 0)
    signature_changed = _copy(parsed[0])
    signature_changed.signature = _flip(signature_changed.signature, 40)
    record_changed = _with_entry(e, 1, _copy(parsed[1], record=_flip(parsed[1].record, -1)))[1]
    cases: list[dict[str, Any]] = []

    def case(
        name: str,
        about: str,
        entries: Sequence[bytes],
        verdicts: list[str],
        head_verdict: str,
        *,
        chain: Chain = main,
        head: bytes | None = main.head,
        keys: Sequence[str] = ALL_KEYS,
        content: bytes | None = None,
    ) -> None:
        content = chain.content if content is None else content
        report = _custody.verify_chain(
            tracking_id=chain.packet.tracking_id,
            content=content,
            chain=[custody_pb2.CustodyEntry.FromString(x) for x in entries],
            keys={KEYS[k].key_id: KEYS[k] for k in keys},
            head=custody_pb2.CustodyHead.FromString(head) if head is not None else None,
        )
        got = ([r.verdict_name for r in report.entries], _verdict(report.head_verdict))
        if got != (verdicts, head_verdict):
            raise AssertionError(f"case {name}: meant {(verdicts, head_verdict)}, got {got}")
        cases.append(
            {
                "name": name,
                "about": about,
                "tracking_id": chain.packet.tracking_id,
                "content": content.hex(),
                "entries": [x.hex() for x in entries],
                "head": head.hex() if head is not None else None,
                "keys": list(keys),
                "expected": {
                    "entries": verdicts,
                    "head": head_verdict,
                    "verified": report.verified,
                },
            }
        )

    case("valid", "the whole chain of a signed 1.1 packet, with its head", e, ok4, "OK")
    case(
        "valid_approval",
        "a held packet approved by an agent, then dispatched",
        approval.entries,
        ok4,
        "OK",
        chain=approval,
        head=approval.head,
    )
    case(
        "no_head",
        "every entry verifies; nothing vouches for the chain's end",
        e,
        ok4,
        "UNSPECIFIED",
        head=None,
    )
    case(
        "record_byte_changed",
        "one bit of entry 1's record changed: its proof's root differs, and entry 2 no longer "
        "links to it",
        [e[0], record_changed, e[2], e[3]],
        ["OK", "BAD_SIGNATURE", "BROKEN_LINK", "OK"],
        "OK",
    )
    case(
        "content_byte_changed",
        "one bit of the content changed: no entry's content digest matches",
        e,
        ["CONTENT_DIGEST_MISMATCH"] * 4,
        "CONTENT_DIGEST_MISMATCH",
        content=_flip(main.content, 10),
    )
    case(
        "signature_byte_changed",
        "one bit of the origin's signature changed",
        _with_entry(e, 0, signature_changed),
        ["BAD_SIGNATURE", "OK", "OK", "OK"],
        "OK",
    )
    case(
        "proof_sibling_changed",
        "one bit of a sibling hash in entry 2's batch proof changed",
        _with_entry(e, 2, proof_changed),
        ["OK", "OK", "BAD_SIGNATURE", "OK"],
        "OK",
    )
    case(
        "entry_deleted",
        "entry 1 removed: the later ones sit at the wrong positions",
        [e[0], e[2], e[3]],
        ["OK", "OUT_OF_ORDER", "OUT_OF_ORDER"],
        "INCOMPLETE",
    )
    case(
        "last_entry_deleted",
        "the newest entry cut off: only the head can tell",
        e[:3],
        ["OK"] * 3,
        "INCOMPLETE",
    )
    case(
        "reordered",
        "entries 2 and 3 swapped",
        [e[0], e[1], e[3], e[2]],
        ["OK", "OK", "OUT_OF_ORDER", "OUT_OF_ORDER"],
        "INCOMPLETE",
    )
    case(
        "unknown_key",
        "the origin's key is not among the trusted keys",
        e,
        ["UNKNOWN_KEY", "OK", "OK", "OK"],
        "OK",
        keys=["server"],
    )
    case(
        "actor_mismatch",
        "the origin's key is published as another agent's",
        e,
        ["ACTOR_MISMATCH", "OK", "OK", "OK"],
        "OK",
        keys=["server", "haiku-2-as-mallory"],
    )
    case(
        "head_signed_by_agent",
        "a head signed with an agent's key",
        e,
        ok4,
        "ACTOR_MISMATCH",
        head=head_of(AGENT.signer, main, 6),
    )
    case(
        "replayed_entry",
        "approver-1's signed approval of another packet in place of entry 0: it names another "
        "packet, and entry 1 no longer links to it",
        [replayed, *e[1:]],
        ["MALFORMED", "BROKEN_LINK", "OK", "OK"],
        "OK",
    )
    case(
        "non_canonical_s",
        "the origin's signature with S + L: lax verifiers reduce S mod L and accept it",
        _with_entry(e, 0, _non_canonical(parsed[0])),
        ["BAD_SIGNATURE", "OK", "OK", "OK"],
        "OK",
    )
    case(
        "small_order_key",
        "an entry under the identity point with signature R = identity, S = 0 (node:crypto "
        "accepted it)",
        [_small_order_entry(main.packet.tracking_id, main.content)],
        ["BAD_SIGNATURE"],
        "UNSPECIFIED",
        head=None,
        keys=["server", "small-order-mallory"],
    )
    return cases


def _copy(
    entry: custody_pb2.CustodyEntry, *, record: bytes | None = None
) -> custody_pb2.CustodyEntry:
    out = custody_pb2.CustodyEntry()
    out.CopyFrom(entry)
    if record is not None:
        out.record = record
    return out


def _verdict(value: int) -> str:
    return custody_pb2.CustodyVerdict.Name(value).removeprefix("CUSTODY_VERDICT_")  # type: ignore[arg-type]
