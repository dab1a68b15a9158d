"""Ingest custody stored once per call: log entries that refer to a sealed batch.

A dispatch's two server custody entries per packet ("received", "dispatched",
~1.2 KB of a 0.5 KB packet's stored bytes) are all rebuilt from the call's
`SealedBatch` (_sealed_batch), so the store keeps that batch once per topic at
``pb:{<topic>}:batch:<id>`` and each log entry keeps only its content, the
client's own chain and ``b`` = ``<batch id> <leaf>``. Every reader puts the
server entries back (`Expander`) before anything else sees the bytes, so
clients get exactly the StoredPacket/Delivery bytes of the full form, and
chains verify offline with only public keys as before.

Entries without ``b`` (written before this form, or by governance, tasks,
findings) are full already and pass through unchanged.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf.message import DecodeError

from packetbus import _custody
from packetbus.v1 import packet_pb2

from . import _keys
from ._ingest import Accepted, to_write
from ._packet_writes import PacketWrite
from ._sealed_batch import SealedBatch, SealedBatchError

# 8 bytes of the batch signature, hex: unique per topic for as long as any
# batch lives (a collision needs 2^32 batches on one topic at once).
_ID_BYTES = 8
# Decoded batches kept per Expander (one per server, shared by its readers: _app;
# immutable once written, so never stale): a reader expanding a page of one call's
# packets reads and decodes it once. Bounded by their leaves: a leaf costs 32 B plus
# its proof path once used (~11 x 34 B at the 1,000-packet call limit), so 16,384
# leaves stay under ~7 MB per Expander.
_CACHED_LEAVES = 16_384


def batch_ident(batch: SealedBatch) -> str:
    """The id batch `batch` is stored under on its topic (``pb:{<topic>}:batch:<id>``):
    the first bytes of its signature, in hex."""
    return batch.signature[:_ID_BYTES].hex()


def stored_once(accepted: Sequence[Accepted], batch: SealedBatch | None) -> list[PacketWrite]:
    """The writes of `accepted` (in order) sealed as `batch` (`Custodian.seal_batch`):
    packet k's server entries are leaves 2k ("received") and 2k + 1 ("dispatched") of
    the batch, stored once, not in its payload. No batch (a server that does not
    sign): the packets as they are."""
    if batch is None:
        return [to_write(a, ()) for a in accepted]
    ident, encoded = batch_ident(batch), batch.encode()
    return [
        to_write(a, (), batch_id=ident, batch=encoded, leaf=2 * k) for k, a in enumerate(accepted)
    ]


def parse_ref(ref: bytes) -> tuple[str, int] | None:
    """ "<batch id> <leaf>" as (id, leaf); None for bytes that are not one (a
    corrupted entry: read like a batch gone, so its chain fails verification
    instead of the read failing with an unexpected error)."""
    ident, _, leaf = ref.partition(b" ")
    if not ident or not leaf.isdigit() or not ident.isascii() or not ident.isalnum():
        return None
    return ident.decode(), int(leaf)


class Expander:
    """Puts the server's ingest entries back into stored payloads that refer to a batch."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._batches: OrderedDict[tuple[str, str], SealedBatch] = OrderedDict()
        self._leaves = 0

    async def _load(
        self, topic: str, idents: set[str], *, cached: bool = True
    ) -> dict[str, SealedBatch | None]:
        found: dict[str, SealedBatch | None] = {}
        missing = []
        for ident in idents:
            batch = self._batches.get((topic, ident)) if cached else None
            if batch is None:
                missing.append(ident)
            else:
                self._batches.move_to_end((topic, ident))
                found[ident] = batch
        if missing:
            # One slot (the topic's hash tag): one MGET, also on a cluster.
            raw: list[bytes | None] = await self._redis.mget(
                [_keys.ingest_batch(topic, i) for i in missing]
            )
            for ident, data in zip(missing, raw, strict=True):
                # Another read of the same batch may have cached it during the MGET:
                # keep that one (counting its leaves twice would shrink the cache
                # for good).
                batch = self._batches.get((topic, ident)) if cached else None
                if batch is not None:
                    found[ident] = batch
                    continue
                try:
                    batch = SealedBatch.decode(bytes(data)) if data is not None else None
                except SealedBatchError:
                    batch = None
                found[ident] = batch
                if batch is not None and cached:
                    self._keep(topic, ident, batch)
        return found

    def _keep(self, topic: str, ident: str, batch: SealedBatch) -> None:
        self._batches[(topic, ident)] = batch
        self._leaves += batch.leaf_count
        while self._leaves > _CACHED_LEAVES and len(self._batches) > 1:
            _, gone = self._batches.popitem(last=False)
            self._leaves -= gone.leaf_count

    def remember(self, topic: str, ident: str, encoded: bytes) -> None:
        """Cache batch `ident` of `topic` as this server just stored it (`encoded`, the
        bytes `SealedBatch.encode` made), so the readers it wakes (a subscriber, a group's
        Pull) rebuild its packets without an MGET of it (issue 16: at low load every
        call is its own batch, so each delivery would otherwise read one). Decoded
        from the stored bytes, as a read would: the same state either way."""
        if (topic, ident) in self._batches:
            return
        try:
            batch = SealedBatch.decode(encoded)
        except SealedBatchError:
            return  # not cached: a reader finds what the store holds
        self._keep(topic, ident, batch)

    async def expand(
        self, topic: str, items: Sequence[tuple[bytes, int, bytes, bytes]], *, cached: bool = True
    ) -> list[bytes]:
        """Per (payload, content length, tracking id, ref): the full payload (content,
        the client's chain, then the server's entries). A ref of b"" is full already.
        A batch gone or unreadable leaves the chain without the server's entries, so
        it fails verification rather than verifying something else. `cached=False`
        reads the batches as the store holds them now, neither from nor into the
        cache (a single-packet lookup, whose custody may be verified: a batch
        altered in the store must fail it)."""
        return [payload for payload, _ in await self.expand_known(topic, items, cached=cached)]

    async def expand_known(
        self, topic: str, items: Sequence[tuple[bytes, int, bytes, bytes]], *, cached: bool = True
    ) -> list[tuple[bytes, Known | None]]:
        """As `expand`, each payload with what rebuilding it learnt (None for a
        payload that was full already or could not be rebuilt)."""
        # A ref that does not parse counts as a batch gone: the same invalid chain.
        refs = [parse_ref(ref) if ref else None for _, _, _, ref in items]
        idents = {r[0] for r in refs if r is not None}
        if not idents:
            return [(payload, None) for payload, _, _, _ in items]
        batches = await self._load(topic, idents, cached=cached)
        out: list[tuple[bytes, Known | None]] = []
        for (payload, content_length, tracking_id, _), parsed in zip(items, refs, strict=True):
            batch = None if parsed is None else batches.get(parsed[0])
            if parsed is None or batch is None:
                out.append((payload, None))
                continue
            chain, known = _rebuilt(batch, parsed[1], payload, content_length, tracking_id)
            out.append((payload + chain, known))
        return out


@dataclass(slots=True)
class Known:
    """What expanding a packet computed anyway, so the delivery path that signs its
    next hop need neither parse its ~1.2 KB of ingest entries nor hash it again."""

    content_digest: bytes
    # Entries in the expanded chain (the client's, then the server's two).
    ingest_entries: int
    # The entry hash of its last ("dispatched") record: what the next hop links to.
    last_hash: bytes


def _rebuilt(
    batch: SealedBatch, leaf: int, payload: bytes, content_length: int, tracking_id: bytes
) -> tuple[bytes, Known | None]:
    # Most packets come without a chain: nothing to parse then. Stored bytes that
    # do not parse get no server entries: their chain fails verification.
    try:
        chain = (
            packet_pb2.Packet.FromString(payload[content_length:]).chain_of_custody
            if len(payload) > content_length
            else ()
        )
    except DecodeError:
        return b"", None
    previous = _custody.entry_hash(chain[-1].record) if chain else b""
    digest = hashlib.sha256(payload[:content_length]).digest()
    try:
        entries = batch.chain(
            leaf,
            content=payload[:content_length],
            tracking_id=tracking_id,
            sequence=len(chain),
            previous_hash=previous,
            content_digest=digest,
        )
    except SealedBatchError:
        return b"", None
    # The "dispatched" record is the leaf after "received" (_packet_service stores
    # packet k's "received" as leaf 2k).
    return entries, Known(digest, len(chain) + 2, batch.leaf_hash(leaf + 1))


class _Expandable(Protocol):
    tracking_id: str
    payload: bytes
    content_length: int
    known: Known | None


_T = TypeVar("_T", bound=_Expandable)


async def expanded(
    expander: Expander, topic: str, entries: list[_T], refs: Sequence[bytes]
) -> list[_T]:
    """`entries` (made for this read, mutable) with their payloads expanded per
    `refs` (b"" for a full entry), in place: a pull expands every packet it
    delivers, and `dataclasses.replace` cost ~2 us of that per packet."""
    if not any(refs):
        return entries
    payloads = await expander.expand_known(
        topic,
        [
            (e.payload, e.content_length, e.tracking_id.encode(), ref)
            for e, ref in zip(entries, refs, strict=True)
        ],
    )
    for e, (payload, known) in zip(entries, payloads, strict=True):
        e.payload = payload
        e.known = known
    return entries


Row = tuple[str, bytes, int, int, Known | None]


async def expanded_rows(
    expander: Expander, topic: str, rows: list[Row | None], refs: Sequence[bytes]
) -> list[Row | None]:
    """Rows (tracking id, payload, content length, TTL ms, None) or None, `refs` one
    per row present, with their payloads expanded and what that learnt (`Known`)."""
    if not any(refs):
        return rows
    present = [r for r in rows if r is not None]
    payloads = iter(
        await expander.expand_known(
            topic,
            [
                (p, n, tid.encode(), ref)
                for (tid, p, n, _, _), ref in zip(present, refs, strict=True)
            ],
        )
    )
    out: list[Row | None] = []
    for r in rows:
        if r is None:
            out.append(None)
            continue
        payload, known = next(payloads)
        out.append((r[0], payload, r[2], r[3], known))
    return out
