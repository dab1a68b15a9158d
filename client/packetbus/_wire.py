"""Protobuf encoding of custody records and entries, for the ingest hot path.

Building CustodyRecord and CustodyEntry messages in Python costs more than
signing a whole batch; these functions write the same bytes directly. Fields
go out in field-number order with proto3 defaults omitted, which is exactly
what the generated classes' deterministic serialization produces: the tests
hold the two to byte equality, so a contract change that is not mirrored
here fails them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Varints of the lengths and indexes met at ingest (records, proofs, leaf
# indexes), looked up rather than computed: this runs per entry.
_VARINTS = [_encode_varint(n) for n in range(4096)]


def varint(n: int) -> bytes:
    return _VARINTS[n] if n < 4096 else _encode_varint(n)


def _tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


# Tags of the fields written here, computed once: this runs per entry at ingest.
_LD_TAGS = {field: _tag(field, 2) for field in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 40)}
_VARINT_TAGS = {field: _tag(field, 0) for field in (1, 2, 10)}


def length_delimited(field: int, data: bytes) -> bytes:
    n = len(data)
    return _LD_TAGS[field] + (_VARINTS[n] if n < 4096 else varint(n)) + data


def _uint(field: int, n: int) -> bytes:
    if not n:
        return b""
    return _VARINT_TAGS[field] + (_VARINTS[n] if n < 4096 else varint(n))


def _bytes(field: int, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    return _LD_TAGS[field] + (_VARINTS[n] if n < 4096 else varint(n)) + data


def timestamp(field: int, unix_ns: int) -> bytes:
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    return length_delimited(field, _uint(1, seconds) + _uint(2, nanos))


# A Timestamp's seconds field, and its nanos field for each whole millisecond:
# deliveries carry three millisecond times each, and encoding a ten-digit
# varint in Python costs more than the rest of the timestamp.
_seconds_field = functools.lru_cache(maxsize=256)(functools.partial(_uint, 1))
_NANOS_OF_MS = [_uint(2, ms * 1_000_000) for ms in range(1000)]


def timestamp_ms(field: int, unix_ms: int) -> bytes:
    """As `timestamp`, for a time in whole milliseconds."""
    seconds, ms = divmod(unix_ms, 1000)
    return length_delimited(field, _seconds_field(seconds) + _NANOS_OF_MS[ms])


class RecordWriter:
    """Serialized CustodyRecords of one signer's batch: actor, action, time and key id are
    the same for every record, so they are encoded once (`middle`, fields 2-4, and
    `key_id_field`, field 7: also what _sealed_batch joins records from)."""

    __slots__ = ("key_id_field", "middle")

    def __init__(self, *, actor: bytes, action: bytes, occurred_at_ns: int, key_id: bytes):
        self.middle = _bytes(2, actor) + _bytes(3, action) + timestamp(4, occurred_at_ns)
        self.key_id_field = _bytes(7, key_id)

    def record(
        self,
        *,
        sequence: int,
        content_digest: bytes,
        previous_hash: bytes,
        tracking_id: bytes,
        details: bytes = b"",
    ) -> bytes:
        """One record; `details` are its fields after tracking_id, from `hop_details`."""
        # The helpers inlined into one join (tags of fields 1, 5, 6 and 8): this
        # runs twice per packet, and every intermediate bytes object costs a copy.
        v = _VARINTS
        parts = [b"\x08", v[sequence]] if sequence else []
        parts += (self.middle, b"\x2a", v[len(content_digest)], content_digest)
        if previous_hash:
            parts += (b"\x32", v[len(previous_hash)], previous_hash)
        parts.append(self.key_id_field)
        if tracking_id:
            parts += (b"\x42", v[len(tracking_id)], tracking_id)
        if details:
            parts.append(details)
        return b"".join(parts)


def hop_details(
    *, counterpart: bytes = b"", attempt: int = 0, reason: bytes = b"", principal: bytes = b""
) -> bytes:
    """CustodyRecord fields 9-12 (counterpart, attempt, reason, principal), serialized
    in field order, as deterministic serialization writes them; empty ones are left out."""
    return _bytes(9, counterpart) + _uint(10, attempt) + _bytes(11, reason) + _bytes(12, principal)


# A BatchProof's audit-path field: tag of field 3, then the length of a 32-byte hash.
PROOF_SIBLING_PREFIX = b"\x1a\x20"


class BatchEntryWriter:
    """Serialized CustodyEntries of one signed batch: signature, key id and leaf count
    are shared, so they are encoded once (`signed_by`, entry fields 2-3, and
    `count_field`, BatchProof field 2: also what _sealed_batch joins entries from)."""

    __slots__ = ("count_field", "signed_by")

    def __init__(self, *, signature: bytes, key_id: bytes, leaf_count: int):
        self.signed_by = _bytes(2, signature) + _bytes(3, key_id)
        self.count_field = _uint(2, leaf_count)

    def entries(self, records: Sequence[bytes], paths: Sequence[bytes]) -> list[bytes]:
        """One entry per record; paths[i] is record i's audit path (leaf index i), each
        sibling already preceded by PROOF_SIBLING_PREFIX."""
        if len(records) > len(_VARINTS):
            raise ValueError(f"at most {len(_VARINTS)} entries in one signed batch")
        signed_by, count, v = self.signed_by, self.count_field, _VARINTS
        out = []
        for i, (record, hashes) in enumerate(zip(records, paths, strict=True)):
            index = b"\x08" + v[i] if i else b""
            proof_length = len(index) + len(count) + len(hashes)
            out.append(
                b"".join(
                    (
                        b"\x0a",
                        v[len(record)],
                        record,
                        signed_by,
                        b"\x22",
                        v[proof_length],
                        index,
                        count,
                        hashes,
                    )
                )
            )
        return out


CHAIN_OF_CUSTODY_FIELD = 40


def with_chain(content: bytes, entries: Sequence[bytes]) -> bytes:
    """A serialized packet without a chain, followed by `entries` as its
    chain_of_custody: the result parses as the packet with this chain."""
    tag = _LD_TAGS[CHAIN_OF_CUSTODY_FIELD]
    parts = [content]
    for entry in entries:
        parts += (tag, varint(len(entry)), entry)
    return b"".join(parts)
