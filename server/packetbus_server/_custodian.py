"""The server's part in chains of custody: sign its hops, vouch for chain heads, check origins."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc

from packetbus import _custody, _wire
from packetbus.v1 import custody_pb2, packet_pb2, packet_service_pb2

from . import _access
from ._keyring import Keyring
from ._observability import counting
from ._sealed_batch import SealedBatch, ingest_records

# The server's hops at ingest: it took the packet in, then put it on its topic.
_ACTIONS = (_custody.RECEIVED.encode(), _custody.DISPATCHED.encode())


def _count_ingest(packets: int) -> None:
    counting.signed(_custody.RECEIVED, packets)
    counting.signed(_custody.DISPATCHED, packets)


# Not frozen: made for every packet on the delivery path, where a frozen
# dataclass's __init__ (object.__setattr__ per field) costs four times as much.
@dataclass(slots=True)
class ChainEnd:
    """Where a stored packet's chain ends: what its next entry must link to."""

    # Entries stored with the packet at ingest, and hop entries appended since.
    ingest_entries: int
    hops: int
    last_hash: bytes

    @property
    def sequence(self) -> int:
        """The next entry's sequence."""
        return self.ingest_entries + self.hops

    def after(self, entry_hash: bytes) -> ChainEnd:
        return ChainEnd(self.ingest_entries, self.hops + 1, entry_hash)


def chain_end(
    payload: bytes,
    content_length: int,
    hops: Sequence[bytes],
    ingest_end: tuple[int, bytes] | None = None,
) -> ChainEnd:
    """The end of the chain stored in `payload` (content, then the ingest entries),
    continued by the serialized hop entries `hops`. `ingest_end`, when the caller
    knows it (expanding a stored-once entry: `_batch_refs.Known`): the ingest
    entries' count and last entry hash, so the ingest chain is not parsed."""
    if ingest_end is not None:
        count, last_hash = ingest_end
        if not hops:
            return ChainEnd(count, 0, last_hash)
    else:
        # The bytes after the content are the chain's fields alone: parsing them
        # costs nothing for the content.
        ingest = packet_pb2.Packet.FromString(payload[content_length:]).chain_of_custody
        count = len(ingest)
        if not hops:
            if not ingest:
                return ChainEnd(0, 0, b"")
            return ChainEnd(count, 0, _custody.entry_hash(ingest[-1].record))
    last = custody_pb2.CustodyEntry.FromString(hops[-1]).record
    return ChainEnd(count, len(hops), _custody.entry_hash(last))


# Not frozen, as above.
@dataclass(slots=True)
class Hop:
    """A custody hop after ingest, for the server to sign."""

    tracking_id: str
    content_digest: bytes
    end: ChainEnd
    action: str
    counterpart: str = ""
    attempt: int = 0
    reason: str = ""


# Not frozen, as above.
@dataclass(slots=True)
class SignedHop:
    entry: bytes
    # SHA-256(0x00 || record): the link the next entry carries.
    hash: bytes


def principal_name() -> str:
    """The name of the running call's authenticated principal: "" for the local
    principal (no authentication configured) and outside a call (the server's own
    background work)."""
    principal = _access.caller()
    if principal is None or principal is _access.LOCAL:
        return ""
    return principal.name


def call_principal() -> bytes:
    """`principal_name()` as a hop records it (CustodyRecord field 12)."""
    return principal_name().encode()


@dataclass(frozen=True, slots=True)
class OriginProblem:
    """Why a schema "1.1" packet's originated entry is refused."""

    code: grpc.StatusCode
    message: str


class Custodian:
    def __init__(self, keyring: Keyring, server_id: str, *, signing: bool = True) -> None:
        self.keyring = keyring
        self.server_id = server_id
        self.signing = signing

    def published_keys(self) -> list[custody_pb2.SigningKey]:
        keys = []
        for entry in self.keyring.entries:
            key = custody_pb2.SigningKey(
                key_id=entry.signer.key_id,
                public_key=entry.signer.public_key,
                owner_kind=custody_pb2.KEY_OWNER_KIND_SERVER,
                owner=self.server_id,
            )
            key.valid_from.FromMilliseconds(entry.created_at_ms)
            if entry.retired_at_ms is not None:
                key.valid_until.FromMilliseconds(entry.retired_at_ms)
            keys.append(key)
        return keys

    def seal(
        self, packets: Sequence[tuple[packet_pb2.Packet, bytes]], now_ns: int
    ) -> list[list[bytes]]:
        """The server's entries for each accepted packet, serialized: received, then dispatched.

        One signature covers the whole batch (a Merkle root); each entry carries
        its inclusion proof, so it verifies on its own.
        """
        return self.seal_with_leaves(packets, now_ns)[0]

    def seal_with_leaves(
        self, packets: Sequence[tuple[packet_pb2.Packet, bytes]], now_ns: int
    ) -> tuple[list[list[bytes]], list[bytes]]:
        """As `seal`, with the batch's leaf hashes (each entry's, in order)."""
        if not self.signing or not packets:
            return [[] for _ in packets], []
        signer = self.keyring.active
        details = _wire.hop_details(principal=call_principal())
        raws, hashes = ingest_records(signer, self.server_id, details, packets, now_ns)
        entries = _custody.sign_batch(signer, raws, hashes)
        _count_ingest(len(packets))
        step = len(_ACTIONS)
        return [entries[i : i + step] for i in range(0, len(entries), step)], hashes

    def seal_batch(
        self, packets: Sequence[tuple[packet_pb2.Packet, bytes]], now_ns: int
    ) -> SealedBatch | None:
        """As `seal`, in the form ingest stores (_batch_refs): the batch's signature
        and leaves, once, and not each packet's two entries with their proofs, which
        every reader rebuilds from it byte for byte (`SealedBatch.chain`). None when
        this server does not sign custody entries, or for no packets."""
        if not self.signing or not packets:
            return None
        signer = self.keyring.active
        # The dispatcher's principal, on both hops; b"" (no field) when there is none.
        details = _wire.hop_details(principal=call_principal())
        _, hashes = ingest_records(signer, self.server_id, details, packets, now_ns)
        batch = SealedBatch.signed(
            signer,
            actor=self.server_id.encode(),
            occurred_at_ns=now_ns,
            details=details,
            leaves=hashes,
        )
        _count_ingest(len(packets))
        return batch

    def seal_decided(
        self, packets: Sequence[tuple[packet_pb2.Packet, bytes, str, str]], now_ns: int
    ) -> list[list[bytes]]:
        """The server's entries for packets a policy rule rejected or held, serialized:
        "received", then the decision's action (packet, content, action, reason), the
        whole batch under one signature as in `seal`."""
        if not self.signing or not packets:
            return [[] for _ in packets]
        signer = self.keyring.active
        actor, key_id = self.server_id.encode(), signer.key_id.encode()
        writers: dict[bytes, _wire.RecordWriter] = {}

        def writer(action: bytes) -> _wire.RecordWriter:
            found = writers.get(action)
            if found is None:
                found = writers[action] = _wire.RecordWriter(
                    actor=actor, action=action, occurred_at_ns=now_ns, key_id=key_id
                )
            return found

        raws: list[bytes] = []
        hashes: list[bytes] = []
        entry_hash = _custody.entry_hash
        principal = call_principal()
        received = _wire.hop_details(principal=principal)
        for packet, content, action, reason in packets:
            content_digest = hashlib.sha256(content).digest()
            chain = packet.chain_of_custody
            previous = entry_hash(chain[-1].record) if chain else b""
            tracking_id = packet.tracking_id.encode()
            for step, (name, details) in enumerate(
                (
                    (_ACTIONS[0], received),
                    (
                        action.encode(),
                        _wire.hop_details(reason=reason.encode(), principal=principal),
                    ),
                )
            ):
                raw = writer(name).record(
                    sequence=len(chain) + step,
                    content_digest=content_digest,
                    previous_hash=previous,
                    tracking_id=tracking_id,
                    details=details,
                )
                previous = entry_hash(raw)
                raws.append(raw)
                hashes.append(previous)
        entries = _custody.sign_batch(signer, raws, hashes)
        counting.signed(_custody.RECEIVED, len(packets))
        decisions: dict[str, int] = {}
        for _, _, action, _ in packets:
            decisions[action] = decisions.get(action, 0) + 1
        for action, n in decisions.items():
            counting.signed(action, n)
        return [entries[i : i + 2] for i in range(0, len(entries), 2)]

    def sign_hops(self, hops: Sequence[Hop], now_ns: int) -> list[SignedHop] | None:
        """Sign `hops` as one batch (one signature over their Merkle root); None when
        this server does not sign custody entries. Each records the running call's
        principal (`call_principal`): the consumer's for a delivery, the worker's
        for a settlement, the approver's for an approval's "dispatched"."""
        if not self.signing:
            return None
        if not hops:
            return []
        signer = self.keyring.active
        actor, key_id = self.server_id.encode(), signer.key_id.encode()
        # Per action, its writer's bound record method and its count: this loop
        # runs for every delivery and every ack.
        writers: dict[str, Callable[..., bytes]] = {}
        actions: dict[str, int] = {}
        # A batch's hops mostly share their details (one consumer, first attempts).
        details: dict[tuple[str, int, str], bytes] = {}
        principal = call_principal()
        raws: list[bytes] = []
        hashes: list[bytes] = []
        sha256 = hashlib.sha256
        for hop in hops:
            action = hop.action
            record = writers.get(action)
            if record is None:
                record = writers[action] = _wire.RecordWriter(
                    actor=actor, action=action.encode(), occurred_at_ns=now_ns, key_id=key_id
                ).record
                actions[action] = 0
            actions[action] += 1
            key = (hop.counterpart, hop.attempt, hop.reason)
            detail = details.get(key)
            if detail is None:
                detail = details[key] = _wire.hop_details(
                    counterpart=hop.counterpart.encode(),
                    attempt=hop.attempt,
                    reason=hop.reason.encode(),
                    principal=principal,
                )
            end = hop.end
            raw = record(
                sequence=end.ingest_entries + end.hops,
                content_digest=hop.content_digest,
                previous_hash=end.last_hash,
                tracking_id=hop.tracking_id.encode(),
                details=detail,
            )
            raws.append(raw)
            # _custody.entry_hash inlined (SHA-256(0x00 || record), the Merkle leaf):
            # two calls less per hop.
            hashes.append(sha256(b"\x00" + raw).digest())
        entries = _custody.sign_batch(signer, raws, hashes)
        for action, n in actions.items():
            counting.signed(action, n)
        return [SignedHop(e, h) for e, h in zip(entries, hashes, strict=True)]

    def head(
        self, tracking_id: str, content: bytes, chain: Sequence[custody_pb2.CustodyEntry]
    ) -> custody_pb2.CustodyHead | None:
        if not self.signing:
            return None
        return _custody.sign_head(
            self.keyring.active, tracking_id=tracking_id, content=content, chain=chain
        )

    def vouch(self, stored: packet_service_pb2.StoredPacket) -> None:
        """Sign the stored packet's chain as it is now (its head), so a reader can tell
        the chain is whole."""
        head = self.head(stored.packet.tracking_id, stored.content, stored.packet.chain_of_custody)
        if head is not None:
            stored.custody_head.CopyFrom(head)


def check_origin(
    packet: packet_pb2.Packet, content: bytes, keys: Mapping[str, custody_pb2.SigningKey]
) -> OriginProblem | None:
    """A schema "1.1" packet's first entry must be its origin agent's signed "originated"."""
    entry = packet.chain_of_custody[0]
    key = keys.get(entry.key_id)
    if key is None or key.owner_kind != custody_pb2.KEY_OWNER_KIND_AGENT:
        return OriginProblem(
            grpc.StatusCode.PERMISSION_DENIED,
            f"key {entry.key_id} is not registered to any agent; register it first "
            "(CustodyService.RegisterAgentKey)",
        )
    if key.owner != packet.origin:
        return OriginProblem(
            grpc.StatusCode.PERMISSION_DENIED,
            f"key {entry.key_id} belongs to agent {key.owner!r}, not to origin {packet.origin!r}",
        )
    digest = hashlib.sha256(content).digest()
    report = _custody.verify_entry(
        0,
        entry,
        tracking_id=packet.tracking_id,
        content_digest=digest,
        previous_hash=b"",
        keys=keys,
    )
    if report.verdict == custody_pb2.CUSTODY_VERDICT_ACTOR_MISMATCH:
        return OriginProblem(grpc.StatusCode.PERMISSION_DENIED, report.detail)
    if report.verdict == custody_pb2.CUSTODY_VERDICT_CONTENT_DIGEST_MISMATCH:
        # The usual cause is a signer's serializer, not tampering: say what the
        # server hashed, so the signer can compare its own bytes.
        return OriginProblem(
            grpc.StatusCode.UNAUTHENTICATED,
            f"chain_of_custody[0] does not authenticate this packet: {report.detail}; "
            f"the server's content digest is {digest.hex()} (SHA-256 of the content's "
            "canonical serialization, CUSTODY.md section 2: map entries sorted by key, "
            "fields at their default left out)",
        )
    if not report.ok:
        return OriginProblem(
            grpc.StatusCode.UNAUTHENTICATED,
            f"chain_of_custody[0] does not authenticate this packet: {report.detail}",
        )
    if report.action != _custody.ORIGINATED:
        return OriginProblem(
            grpc.StatusCode.UNAUTHENTICATED,
            f"chain_of_custody[0] must be the origin's {_custody.ORIGINATED!r} entry, "
            f"not {report.action!r}",
        )
    return None
