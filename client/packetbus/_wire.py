"""Protobuf encoding of custody records and entries, for the ingest hot path.

Building CustodyRecord and CustodyEntry messages in Python costs more than
signing a whole batch; these functions write the same bytes directly. Fields
go out in field-number order with proto3 defaults omitted, which is exactly
what the generated classes' deterministic serialization produces: the tests
hold the two to byte equality, so a contract change that is not mirrored
here fails them.
"""

from __future__ import annotations

from collections.abc import Sequence

_SMALL = [bytes((n,)) for n in range(0x80)]


def varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


# Tags of the fields written here, computed once: this runs per entry at ingest.
_LD_TAGS = {field: _tag(field, 2) for field in (1, 2, 3, 4, 5, 6, 7, 8, 40)}
_VARINT_TAGS = {field: _tag(field, 0) for field in (1, 2)}


def length_delimited(field: int, data: bytes) -> bytes:
    n = len(data)
    return _LD_TAGS[field] + (_SMALL[n] if n < 0x80 else varint(n)) + data


def _uint(field: int, n: int) -> bytes:
    if not n:
        return b""
    return _VARINT_TAGS[field] + (_SMALL[n] if n < 0x80 else varint(n))


def _bytes(field: int, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    return _LD_TAGS[field] + (_SMALL[n] if n < 0x80 else varint(n)) + data


def timestamp(field: int, unix_ns: int) -> bytes:
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    return length_delimited(field, _uint(1, seconds) + _uint(2, nanos))


class RecordWriter:
    """Serialized CustodyRecords of one signer's batch: actor, action, time and key id are
    the same for every record, so they are encoded once."""

    def __init__(self, *, actor: bytes, action: bytes, occurred_at_ns: int, key_id: bytes):
        self._middle = _bytes(2, actor) + _bytes(3, action) + timestamp(4, occurred_at_ns)
        self._key_id = _bytes(7, key_id)

    def record(
        self, *, sequence: int, content_digest: bytes, previous_hash: bytes, tracking_id: bytes
    ) -> bytes:
        return b"".join(
            (
                _uint(1, sequence),
                self._middle,
                _bytes(5, content_digest),
                _bytes(6, previous_hash),
                self._key_id,
                _bytes(8, tracking_id),
            )
        )


_SIBLING = b"\x1a\x20"


class BatchEntryWriter:
    """Serialized CustodyEntries of one signed batch: signature, key id and leaf count
    are shared, so they are encoded once."""

    def __init__(self, *, signature: bytes, key_id: bytes, leaf_count: int):
        self._signed_by = _bytes(2, signature) + _bytes(3, key_id)
        self._count = _uint(2, leaf_count)

    def entries(self, records: Sequence[bytes], paths: Sequence[Sequence[bytes]]) -> list[bytes]:
        """One entry per record; paths[i] is record i's audit path (leaf index i)."""
        signed_by, count = self._signed_by, self._count
        out = []
        for i, (record, siblings) in enumerate(zip(records, paths, strict=True)):
            # Every sibling is a 32-byte hash: field 3, length 32, so one shared prefix.
            hashes = _SIBLING + _SIBLING.join(siblings) if siblings else b""
            proof = _uint(1, i) + count + hashes
            out.append(_bytes(1, record) + signed_by + length_delimited(4, proof))
        return out


CHAIN_OF_CUSTODY_FIELD = 40


def chain_field(entries: Sequence[bytes]) -> bytes:
    """Serialized entries as Packet.chain_of_custody: appended to a serialized
    packet without a chain, the result parses as the packet with this chain."""
    return b"".join(length_delimited(CHAIN_OF_CUSTODY_FIELD, e) for e in entries)
