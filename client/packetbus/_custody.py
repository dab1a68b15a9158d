"""Chains of custody: signing entries and verifying chains, with no server and no Redis.

Every signature covers exact bytes behind a domain-separating prefix, and a
verifier checks the signature before it parses anything (DESIGN.md 2.7):

- an entry signed alone:  Ed25519("packetbus.custody.entry.v1" 0x00 || record)
- entries signed at once: Ed25519("packetbus.custody.batch.v1" 0x00 || Merkle root),
  each entry carrying its inclusion proof, so each still verifies on its own
- a chain head:           Ed25519("packetbus.custody.head.v1" 0x00 || statement)

Entries are hash-linked (previous_hash = the previous entry's hash,
SHA-256(0x00 || record), which is also its Merkle leaf hash) and name the SHA-256 of the packet's content bytes: the packet without
its chain, serialized deterministically, as the bus stores it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from packetbus.v1 import custody_pb2, packet_pb2

from . import _ed25519, _merkle, _wire

ENTRY_DOMAIN = b"packetbus.custody.entry.v1\x00"
BATCH_DOMAIN = b"packetbus.custody.batch.v1\x00"
HEAD_DOMAIN = b"packetbus.custody.head.v1\x00"
AGENT_KEY_DOMAIN = b"packetbus.agent-key.v1\x00"

ORIGINATED = "originated"
RECEIVED = "received"
DISPATCHED = "dispatched"
# Hops after ingest, made by the server for a consumer group.
DELIVERED = "delivered"
ACKED = "acked"
NACKED = "nacked"
RELEASED = "released"
CARCELED = "carceled"
REQUEUED = "requeued"
# Governance: the server's hops for a packet a policy rule rejected or held, and
# the approving (or denying) agent's own, signed with its registered key.
REJECTED = "rejected"
HELD = "held"
APPROVED = "approved"
DENIED = "denied"
# Hops of a task packet in a task queue.
CLAIMED = "claimed"
COMPLETED = "completed"
FAILED = "failed"

Verdict = custody_pb2.CustodyVerdict
OK = custody_pb2.CUSTODY_VERDICT_OK


def key_id_for(public_key: bytes) -> str:
    """A key's id, derived from the key itself so it cannot be claimed by another."""
    return "ed25519-" + hashlib.sha256(public_key).hexdigest()[:32]


def content_message(packet: packet_pb2.Packet) -> packet_pb2.Packet:
    """A copy of `packet` without its chain of custody."""
    content = packet_pb2.Packet()
    content.CopyFrom(packet)
    del content.chain_of_custody[:]
    return content


def content_bytes(packet: packet_pb2.Packet) -> bytes:
    """The bytes a chain's content digests cover: the packet without its chain, serialized
    deterministically (fields in number order, map entries sorted by key)."""
    return content_message(packet).SerializeToString(deterministic=True)


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def entry_hash(record: bytes) -> bytes:
    """What the next entry links to: SHA-256(0x00 || record), the record's Merkle leaf hash."""
    return _merkle.leaf_hash(record)


@dataclass(frozen=True)
class Signer:
    """An Ed25519 private key (its 32-byte seed) with its public key and key id."""

    seed: bytes = field(repr=False)
    public_key: bytes = field(init=False)
    key_id: str = field(init=False)
    # The key pair, derived once here rather than at every signature.
    _key: _ed25519.Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != _ed25519.SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {_ed25519.SEED_BYTES} bytes")
        object.__setattr__(self, "_key", _ed25519.signing_key(self.seed))
        public = _ed25519.public_key_of(self.seed)
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "key_id", key_id_for(public))

    @classmethod
    def generate(cls) -> Signer:
        return cls(_ed25519.new_seed())

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return _ed25519.sign_with(self._key, domain + message)


def sign_entry(signer: Signer, record: custody_pb2.CustodyRecord) -> custody_pb2.CustodyEntry:
    record.key_id = signer.key_id
    raw = record.SerializeToString(deterministic=True)
    return custody_pb2.CustodyEntry(
        record=raw, signature=signer.sign(ENTRY_DOMAIN, raw), key_id=signer.key_id
    )


def sign_batch(
    signer: Signer, raw_records: Sequence[bytes], hashes: Sequence[bytes] | None = None
) -> list[bytes]:
    """Sign many serialized records (each naming `signer`'s key id) with one signature
    over their Merkle root; returns the serialized entries, each with its inclusion proof.
    `hashes`, if the caller has them, are the records' entry hashes (leaf hashes)."""
    leaves = hashes if hashes is not None else [entry_hash(raw) for raw in raw_records]
    root, paths = _merkle.root_and_joined_proofs(leaves, _wire.PROOF_SIBLING_PREFIX)
    writer = _wire.BatchEntryWriter(
        signature=signer.sign(BATCH_DOMAIN, root),
        key_id=signer.key_id.encode(),
        leaf_count=len(raw_records),
    )
    return writer.entries(raw_records, paths)


def sign_origin(
    packet: packet_pb2.Packet, signer: Signer, *, now_ns: int | None = None
) -> packet_pb2.Packet:
    """Make `packet` a schema "1.1" packet whose chain starts with its origin's signature.

    The packet must be complete (tracking id, dispatch time, TTL): its content
    is signed, so the server can fill nothing in afterwards.
    """
    packet.schema_version = "1.1"
    del packet.chain_of_custody[:]
    record = custody_pb2.CustodyRecord(
        sequence=0,
        actor=packet.origin,
        action=ORIGINATED,
        content_digest=digest(content_bytes(packet)),
        tracking_id=packet.tracking_id,
    )
    record.occurred_at.FromNanoseconds(time.time_ns() if now_ns is None else now_ns)
    packet.chain_of_custody.append(sign_entry(signer, record))
    return packet


def sign_head(
    signer: Signer,
    *,
    tracking_id: str,
    content: bytes,
    chain: Sequence[custody_pb2.CustodyEntry],
    now_ns: int | None = None,
) -> custody_pb2.CustodyHead:
    statement = custody_pb2.CustodyHeadStatement(
        tracking_id=tracking_id,
        length=len(chain),
        last_entry_hash=entry_hash(chain[-1].record) if chain else b"",
        content_digest=digest(content),
        key_id=signer.key_id,
    )
    statement.issued_at.FromNanoseconds(time.time_ns() if now_ns is None else now_ns)
    raw = statement.SerializeToString(deterministic=True)
    return custody_pb2.CustodyHead(
        statement=raw, signature=signer.sign(HEAD_DOMAIN, raw), key_id=signer.key_id
    )


def agent_key_message(agent_id: str, public_key: bytes) -> bytes:
    return AGENT_KEY_DOMAIN + agent_id.encode() + b"\x00" + public_key


# -- verification --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryReport:
    index: int
    verdict: int
    detail: str
    key_id: str = ""
    action: str = ""
    actor: str = ""
    # The authenticated principal whose call made the hop (CustodyRecord.principal), if any.
    principal: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == OK

    @property
    def verdict_name(self) -> str:
        return Verdict.Name(self.verdict).removeprefix("CUSTODY_VERDICT_")  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ChainReport:
    entries: tuple[EntryReport, ...]
    head_verdict: int
    head_detail: str

    @property
    def verified(self) -> bool:
        return bool(self.entries) and all(e.ok for e in self.entries) and self.head_verdict == OK

    def failures(self) -> list[str]:
        """One line per problem, naming the entry (or the head)."""
        lines = [f"entry {e.index}: {e.verdict_name}: {e.detail}" for e in self.entries if not e.ok]
        if not self.entries:
            lines.append("the chain has no entries")
        if self.head_verdict != OK:
            name = Verdict.Name(self.head_verdict).removeprefix("CUSTODY_VERDICT_")  # type: ignore[arg-type]
            lines.append(f"head: {name}: {self.head_detail}")
        return lines


def _signature_ok(entry: custody_pb2.CustodyEntry, public_key: bytes) -> bool:
    if entry.HasField("batch_proof"):
        proof = entry.batch_proof
        root = _merkle.root_from_proof(
            _merkle.leaf_hash(entry.record),
            proof.leaf_index,
            proof.leaf_count,
            proof.sibling_hashes,
        )
        return root is not None and _ed25519.verify(
            public_key, BATCH_DOMAIN + root, entry.signature
        )
    return _ed25519.verify(public_key, ENTRY_DOMAIN + entry.record, entry.signature)


def verify_entry(
    index: int,
    entry: custody_pb2.CustodyEntry,
    *,
    tracking_id: str,
    content_digest: bytes,
    previous_hash: bytes,
    keys: Mapping[str, custody_pb2.SigningKey],
) -> EntryReport:
    """Judge one entry: signature first, then (only then) what its record says."""
    key = keys.get(entry.key_id)
    if key is None:
        return EntryReport(
            index,
            custody_pb2.CUSTODY_VERDICT_UNKNOWN_KEY,
            f"no published key has id {entry.key_id!r}",
            key_id=entry.key_id,
        )
    if not _signature_ok(entry, key.public_key):
        return EntryReport(
            index,
            custody_pb2.CUSTODY_VERDICT_BAD_SIGNATURE,
            f"the signature does not verify with key {entry.key_id}",
            key_id=entry.key_id,
        )
    try:
        record = custody_pb2.CustodyRecord.FromString(entry.record)
    except DecodeError:
        return EntryReport(
            index,
            custody_pb2.CUSTODY_VERDICT_MALFORMED,
            "the signed record does not parse",
            key_id=entry.key_id,
        )
    seen = {
        "key_id": entry.key_id,
        "action": record.action,
        "actor": record.actor,
        "principal": record.principal,
    }
    if record.key_id != entry.key_id or record.tracking_id != tracking_id:
        return EntryReport(
            index,
            custody_pb2.CUSTODY_VERDICT_MALFORMED,
            "the signed record names another key or packet",
            **seen,
        )
    if key.owner != record.actor:
        return EntryReport(
            index,
            custody_pb2.CUSTODY_VERDICT_ACTOR_MISMATCH,
            f"key {entry.key_id} belongs to {key.owner!r}, not to actor {record.actor!r}",
            **seen,
        )
    if record.sequence != index:
        return EntryReport(
            index,
            custody_pb2.CUSTODY_VERDICT_OUT_OF_ORDER,
            f"sequence {record.sequence} at position {index}",
            **seen,
        )
    if record.previous_hash != previous_hash:
        return EntryReport(
            index,
            custody_pb2.CUSTODY_VERDICT_BROKEN_LINK,
            "previous_hash is not the hash of the entry before",
            **seen,
        )
    if record.content_digest != content_digest:
        return EntryReport(
            index,
            custody_pb2.CUSTODY_VERDICT_CONTENT_DIGEST_MISMATCH,
            "the content is not what this entry signed",
            **seen,
        )
    return EntryReport(index, OK, "ok", **seen)


def _verify_head(
    head: custody_pb2.CustodyHead,
    *,
    tracking_id: str,
    content_digest: bytes,
    chain: Sequence[custody_pb2.CustodyEntry],
    keys: Mapping[str, custody_pb2.SigningKey],
) -> tuple[int, str]:
    key = keys.get(head.key_id)
    if key is None:
        return custody_pb2.CUSTODY_VERDICT_UNKNOWN_KEY, f"no published key has id {head.key_id!r}"
    if key.owner_kind != custody_pb2.KEY_OWNER_KIND_SERVER:
        return custody_pb2.CUSTODY_VERDICT_ACTOR_MISMATCH, "heads are signed by servers only"
    if not _ed25519.verify(key.public_key, HEAD_DOMAIN + head.statement, head.signature):
        return custody_pb2.CUSTODY_VERDICT_BAD_SIGNATURE, "the head's signature does not verify"
    try:
        statement = custody_pb2.CustodyHeadStatement.FromString(head.statement)
    except DecodeError:
        return custody_pb2.CUSTODY_VERDICT_MALFORMED, "the head's statement does not parse"
    if statement.tracking_id != tracking_id or statement.key_id != head.key_id:
        return custody_pb2.CUSTODY_VERDICT_MALFORMED, "the head names another key or packet"
    if statement.content_digest != content_digest:
        return (
            custody_pb2.CUSTODY_VERDICT_CONTENT_DIGEST_MISMATCH,
            "the content is not what the head signed",
        )
    last = entry_hash(chain[-1].record) if chain else b""
    if statement.length != len(chain) or statement.last_entry_hash != last:
        return (
            custody_pb2.CUSTODY_VERDICT_INCOMPLETE,
            f"the head vouches for {statement.length} entries ending in another entry; "
            f"the chain has {len(chain)}",
        )
    return OK, "ok"


def verify_chain(
    *,
    tracking_id: str,
    content: bytes,
    chain: Sequence[custody_pb2.CustodyEntry],
    keys: Mapping[str, custody_pb2.SigningKey],
    head: custody_pb2.CustodyHead | None,
) -> ChainReport:
    """Verify every entry of `chain` over `content` (exact bytes) and, if given, its head.

    Without a head the chain's end cannot be vouched for: head_verdict is then
    UNSPECIFIED and the report is not `verified`.
    """
    content_digest = digest(content)
    reports = []
    previous = b""
    for i, entry in enumerate(chain):
        reports.append(
            verify_entry(
                i,
                entry,
                tracking_id=tracking_id,
                content_digest=content_digest,
                previous_hash=previous,
                keys=keys,
            )
        )
        previous = entry_hash(entry.record)
    head_verdict: int
    if head is None:
        head_verdict = custody_pb2.CUSTODY_VERDICT_UNSPECIFIED
        head_detail = "no head: the chain's end is not vouched for"
    else:
        head_verdict, head_detail = _verify_head(
            head, tracking_id=tracking_id, content_digest=content_digest, chain=chain, keys=keys
        )
    return ChainReport(tuple(reports), head_verdict, head_detail)
