"""A signed ingest batch stored once, and its packets' custody entries rebuilt from it.

At ingest the server signs one Merkle root over a whole call's "received" and
"dispatched" records (`Custodian.seal`), and each packet carries its two entries:
record, signature, key id and inclusion proof, about 1.2 KB of a 0.5 KB packet's
1.7 KB in the store (bench/store_memory.py). Everything in those entries is either
the same for the whole batch (signature, key id, actor, time, principal, leaf
count) or follows from the packet itself (sequence, content digest, previous hash,
tracking id), except each record's place among the batch's leaves. So the batch
can be stored once (`SealedBatch.encode`, ~100 B plus 32 B per leaf, i.e. 64 B per
packet) and each packet refers to it by the leaf index of its "received" record;
`SealedBatch.chain` gives back the exact bytes `Custodian.seal` made, so a
reader's chain verifies offline with only public keys exactly as before.

This module is the storage form; the log entries that refer to a batch and the
readers that expand them are in _batch_refs (README "Storage form of ingest
custody"). `SealedBatch.chain` joins per-batch precomputed parts (`_Rebuilder`,
taken from _wire's writers) into the bytes those writers build field by field.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from packetbus import _custody, _merkle, _wire
from packetbus.v1 import custody_pb2, packet_pb2

# Version 1: the two ingest hops of Custodian.seal, in this order, per packet.
_VERSION = 1
_ACTIONS = (_custody.RECEIVED.encode(), _custody.DISPATCHED.encode())
_HEAD = struct.Struct(">BQHHH")  # version, occurred_at_ns, then three lengths
_SIGNATURE = 64
_HASH = 32


def ingest_records(
    signer: _custody.Signer,
    server_id: str,
    details: bytes,
    packets: Sequence[tuple[packet_pb2.Packet, bytes]],
    now_ns: int,
) -> tuple[list[bytes], list[bytes]]:
    """Each (packet, content)'s "received" and "dispatched" records, serialized, in
    order, and their entry hashes (the batch's Merkle leaves): what `Custodian.seal`
    signs and `SealedBatch.signed` keeps. `details`: `_wire.hop_details` of both hops."""
    received_writer, dispatched_writer = (
        _wire.RecordWriter(
            actor=server_id.encode(),
            action=action,
            occurred_at_ns=now_ns,
            key_id=signer.key_id.encode(),
        )
        for action in _ACTIONS
    )
    raws: list[bytes] = []
    hashes: list[bytes] = []
    entry_hash, sha256 = _custody.entry_hash, hashlib.sha256
    for packet, content in packets:
        content_digest = sha256(content).digest()
        chain = packet.chain_of_custody
        previous = entry_hash(chain[-1].record) if chain else b""
        tracking_id = packet.tracking_id.encode()
        sequence = len(chain)
        # The two hops unrolled, and entry_hash (SHA-256 of 0x00 || record) inlined:
        # this runs for every packet (issue 16). The link to each entry is also its
        # Merkle leaf: hashed once.
        received = received_writer.record(
            sequence=sequence,
            content_digest=content_digest,
            previous_hash=previous,
            tracking_id=tracking_id,
            details=details,
        )
        received_hash = sha256(b"\x00" + received).digest()
        dispatched = dispatched_writer.record(
            sequence=sequence + 1,
            content_digest=content_digest,
            previous_hash=received_hash,
            tracking_id=tracking_id,
            details=details,
        )
        raws += (received, dispatched)
        hashes += (received_hash, sha256(b"\x00" + dispatched).digest())
    return raws, hashes


class SealedBatchError(ValueError):
    """Stored bytes that are not a sealed batch this server can read."""


@dataclass(slots=True)
class SealedBatch:
    """What one signed ingest batch shares: enough, with a packet's own content and
    client chain, to rebuild that packet's two server entries byte for byte."""

    signature: bytes
    key_id: bytes
    actor: bytes
    occurred_at_ns: int
    # CustodyRecord fields 9-12 (`_wire.hop_details`): the same on both hops.
    details: bytes
    # The leaf hashes (entry hashes of the records), 32 bytes each, in leaf order.
    leaves: bytes
    # `_Rebuilder`: byte prefixes of both entries, made once per batch on first read.
    _rebuilder: _Rebuilder | None = field(default=None, repr=False, compare=False)

    @property
    def leaf_count(self) -> int:
        return len(self.leaves) // _HASH

    def encode(self) -> bytes:
        head = _HEAD.pack(
            _VERSION, self.occurred_at_ns, len(self.key_id), len(self.actor), len(self.details)
        )
        return b"".join((head, self.signature, self.key_id, self.actor, self.details, self.leaves))

    @classmethod
    def decode(cls, data: bytes) -> SealedBatch:
        if len(data) < _HEAD.size + _SIGNATURE:
            raise SealedBatchError(f"a sealed batch of {len(data)} bytes is too short")
        version, occurred_at_ns, key_len, actor_len, details_len = _HEAD.unpack_from(data)
        if version != _VERSION:
            raise SealedBatchError(f"sealed batch version {version} is not {_VERSION}")
        at = _HEAD.size
        signature = data[at : at + _SIGNATURE]
        at += _SIGNATURE
        key_id = data[at : at + key_len]
        at += key_len
        actor = data[at : at + actor_len]
        at += actor_len
        details = data[at : at + details_len]
        at += details_len
        leaves = data[at:]
        if len(details) != details_len or not leaves or len(leaves) % _HASH:
            raise SealedBatchError("a sealed batch's leaves are not whole 32-byte hashes")
        return cls(signature, key_id, actor, occurred_at_ns, details, leaves)

    @classmethod
    def signed(
        cls,
        signer: _custody.Signer,
        *,
        actor: bytes,
        occurred_at_ns: int,
        details: bytes,
        leaves: Sequence[bytes],
    ) -> SealedBatch:
        """The batch `signer` signs over `leaves` (the records' entry hashes, each
        packet's "received" then "dispatched"): one signature over their Merkle root,
        as `_custody.sign_batch` makes it, without building each entry and its proof
        (a reader rebuilds those: `chain`). `Custodian.seal_batch` at ingest."""
        return cls(
            signature=signer.sign(_custody.BATCH_DOMAIN, _merkle.root(leaves)),
            key_id=signer.key_id.encode(),
            actor=actor,
            occurred_at_ns=occurred_at_ns,
            details=details,
            leaves=b"".join(leaves),
        )

    @classmethod
    def of_entries(
        cls, entries: Sequence[bytes], leaves: Sequence[bytes] | None = None
    ) -> SealedBatch:
        """The batch `Custodian.seal` signed, from its entries (all of them, in
        order: each packet's "received" then "dispatched"). `leaves`, their entry
        hashes, when the caller has them (`Custodian.seal_with_leaves`)."""
        if not entries:
            raise SealedBatchError("a sealed batch has at least one entry")
        first = custody_pb2.CustodyEntry.FromString(entries[0])
        record = custody_pb2.CustodyRecord.FromString(first.record)
        if leaves is None:
            leaves = [
                _custody.entry_hash(custody_pb2.CustodyEntry.FromString(e).record) for e in entries
            ]
        return cls(
            signature=first.signature,
            key_id=first.key_id.encode(),
            actor=record.actor.encode(),
            occurred_at_ns=record.occurred_at.ToNanoseconds(),
            details=_wire.hop_details(
                counterpart=record.counterpart.encode(),
                attempt=record.attempt,
                reason=record.reason.encode(),
                principal=record.principal.encode(),
            ),
            leaves=b"".join(leaves),
        )

    def chain(
        self,
        leaf: int,
        *,
        content: bytes,
        tracking_id: bytes,
        sequence: int,
        previous_hash: bytes,
        content_digest: bytes | None = None,
    ) -> bytes:
        """The serialized "received" and "dispatched" entries of the packet whose
        "received" record is leaf `leaf`, as chain_of_custody elements ready to append
        to its stored payload: the bytes `Custodian.seal` made for it. `content` is
        its content bytes (`content_digest` their SHA-256, when the caller has it
        already), `sequence` the length of the chain it came with and
        `previous_hash` the entry hash of that chain's last record (b"" for none).
        Every reader expands each packet it returns, so this is one join of
        precomputed prefixes per packet (no intermediate records or entries)."""
        if not 0 <= leaf < self.leaf_count - 1:
            raise SealedBatchError(f"leaf {leaf} is not in a batch of {self.leaf_count}")
        if self._rebuilder is None:
            self._rebuilder = _Rebuilder(self)
        if content_digest is None:
            content_digest = hashlib.sha256(content).digest()
        return self._rebuilder.chain(leaf, content_digest, tracking_id, sequence, previous_hash)

    def leaf_hash(self, leaf: int) -> bytes:
        """Leaf `leaf`'s hash: the entry hash of that record, as stored (a changed
        one fails the batch's root, so a chain that links to it fails too)."""
        return self.leaves[leaf * _HASH : (leaf + 1) * _HASH]


# A chain_of_custody element's tag (packet field 40, length-delimited).
_CHAIN_TAG = b"\xc2\x02"
# A record's content digest (field 5) and previous hash (field 6) tags with the
# length of a SHA-256, and its tracking id's tag (field 8).
_DIGEST_TAG = b"\x2a\x20"
_PREVIOUS_TAG = b"\x32\x20"
_TRACKING_TAG = b"\x42"


class _Rebuilder:
    """What `SealedBatch.chain` joins, computed once per batch: each action's record
    bytes around the per-packet fields (the shared parts of `_wire.RecordWriter` and
    `_wire.BatchEntryWriter`, joined in the layout they write), and each leaf's proof."""

    __slots__ = (
        "_details",
        "_heads",
        "_key_and_tag",
        "_leaves",
        "_proofs",
        "_signed_by",
        "_untracked_tail",
    )

    def __init__(self, batch: SealedBatch) -> None:
        v = _wire.varint
        records = [
            _wire.RecordWriter(
                actor=batch.actor,
                action=action,
                occurred_at_ns=batch.occurred_at_ns,
                key_id=batch.key_id,
            )
            for action in _ACTIONS
        ]
        signed = _wire.BatchEntryWriter(
            signature=batch.signature, key_id=batch.key_id, leaf_count=batch.leaf_count
        )
        # actor, action, occurred_at: `RecordWriter`'s middle, then the digest's tag.
        self._heads = [r.middle + _DIGEST_TAG for r in records]
        key_id = records[0].key_id_field
        self._key_and_tag = key_id + _TRACKING_TAG
        self._details = batch.details
        # A record's fields after its tracking id when it has none (field 8 left out).
        self._untracked_tail = key_id + batch.details
        # The BatchProof's tag follows; its length and body follow per leaf.
        self._signed_by = signed.signed_by + b"\x22"
        # Per leaf: the BatchProof's length and body (index, count, audit path).
        self._proofs = []
        leaves = [batch.leaves[i : i + _HASH] for i in range(0, len(batch.leaves), _HASH)]
        _, paths = _merkle.root_and_joined_proofs(leaves, _wire.PROOF_SIBLING_PREFIX)
        for i, path in enumerate(paths):
            body = (b"\x08" + v(i) if i else b"") + signed.count_field + path
            self._proofs.append(v(len(body)) + body)
        self._leaves = batch.leaves

    def chain(
        self, leaf: int, digest: bytes, tracking_id: bytes, sequence: int, previous: bytes
    ) -> bytes:
        v = _wire.varint
        received_head, dispatched_head = self._heads
        tail = (
            b"".join((self._key_and_tag, v(len(tracking_id)), tracking_id, self._details))
            if tracking_id
            else self._untracked_tail
        )
        # "received": its sequence (absent when 0) and link to the client's chain.
        first = (
            [b"\x08", v(sequence), received_head, digest]
            if sequence
            else [
                received_head,
                digest,
            ]
        )
        if previous:
            first += (_PREVIOUS_TAG, previous)
        first.append(tail)
        received = b"".join(first)
        # "dispatched" links to "received", whose entry hash is its Merkle leaf:
        # stored in the batch, so not hashed again (a changed leaf fails the root).
        linked = self._leaves[leaf * _HASH : (leaf + 1) * _HASH]
        dispatched = b"".join(
            (b"\x08", v(sequence + 1), dispatched_head, digest, _PREVIOUS_TAG, linked, tail)
        )
        signed_by, proofs = self._signed_by, self._proofs
        parts: list[bytes] = []
        for record, proof in ((received, proofs[leaf]), (dispatched, proofs[leaf + 1])):
            size = v(len(record))
            length = 1 + len(size) + len(record) + len(signed_by) + len(proof)
            parts += (_CHAIN_TAG, v(length), b"\x0a", size, record, signed_by, proof)
        return b"".join(parts)
