"""The chains of custody behind protos/packetbus/v1/custody_test_vectors.json.

Built with the real signing code (the client's `_custody`, the server's `Custodian`
and `SealedBatch`) from fixed seeds and times, so every byte is reproducible:
Ed25519 signatures are deterministic (RFC 8032 section 5.1.6). The tampered
copies of these chains are in custody_vector_cases.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from packetbus import _custody, _wire
from packetbus._approvals import decision_entry
from packetbus._config import AgentIdentity
from packetbus._export import write_keys, write_packet
from packetbus.v1 import custody_pb2, packet_pb2, packet_service_pb2, speech_act_pb2
from packetbus_server._custodian import ChainEnd, Custodian, Hop
from packetbus_server._keyring import Keyring, KeyringEntry
from packetbus_server._sealed_batch import SealedBatch

# 2026-01-01T00:00:00Z, in nanoseconds: every time in the vectors is T0 plus whole milliseconds.
T0_NS = 1_767_225_600_000_000_000
MS = 1_000_000
SERVER_ID = "packetbus-vectors"


def seed(label: str) -> bytes:
    """A fixed 32-byte Ed25519 seed: SHA-256 of a label (never a real key)."""
    return hashlib.sha256(f"packetbus custody test vectors: {label}".encode()).digest()


SERVER = _custody.Signer(seed("server"))
AGENT = AgentIdentity("haiku-2", _custody.Signer(seed("agent haiku-2")))
APPROVER = AgentIdentity("approver-1", _custody.Signer(seed("agent approver-1")))
# The identity point (order 1), which node:crypto accepted as a key with the signature R = it, S = 0.
IDENTITY_POINT = bytes([1]) + bytes(31)


def _key(
    public_key: bytes,
    kind: custody_pb2.KeyOwnerKind.ValueType,
    owner: str,
    *,
    key_id: str | None = None,
) -> custody_pb2.SigningKey:
    key = custody_pb2.SigningKey(
        key_id=key_id or _custody.key_id_for(public_key),
        public_key=public_key,
        owner_kind=kind,
        owner=owner,
    )
    key.valid_from.FromNanoseconds(T0_NS)
    return key


ALL_KEYS = ["server", "haiku-2", "approver-1"]
AGENT_KIND = custody_pb2.KEY_OWNER_KIND_AGENT
# Published keys by name; a case lists the names it trusts.
KEYS: dict[str, custody_pb2.SigningKey] = {
    "server": _key(SERVER.public_key, custody_pb2.KEY_OWNER_KIND_SERVER, SERVER_ID),
    "haiku-2": _key(AGENT.signer.public_key, AGENT_KIND, AGENT.agent_id),
    "approver-1": _key(APPROVER.signer.public_key, AGENT_KIND, APPROVER.agent_id),
    # haiku-2's public key published as another agent's: its entries then name the wrong actor.
    "haiku-2-as-mallory": _key(AGENT.signer.public_key, AGENT_KIND, "mallory"),
    "small-order-mallory": _key(IDENTITY_POINT, AGENT_KIND, "mallory"),
}


def _packet(tracking_id: str, origin: str, description: str, at_ms: int) -> packet_pb2.Packet:
    packet = packet_pb2.Packet(
        tracking_id=tracking_id,
        origin=origin,
        schema_version="1.0",
        ttl_seconds=3600,
        speech_act=speech_act_pb2.SPEECH_ACT_PROPOSE,
        topic="research",
    )
    packet.dispatched_at.FromNanoseconds(T0_NS + at_ms * MS)
    packet.task.description = description
    packet.task.labels["quarter"] = "q3"
    packet.task.labels["team"] = "finance"
    packet.trace_context.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    return packet


@dataclass
class Chain:
    """A packet's content bytes, its serialized chain entries and its signed head."""

    packet: packet_pb2.Packet
    content: bytes
    entries: list[bytes]
    head: bytes
    # The ingest batch (both packets' received/dispatched) as stored, and this packet's leaf.
    sealed_batch: bytes = b""
    sealed_leaf: int = -1

    def parsed(self) -> list[custody_pb2.CustodyEntry]:
        return [custody_pb2.CustodyEntry.FromString(e) for e in self.entries]


def _custodian() -> Custodian:
    return Custodian(Keyring(SERVER_ID, [KeyringEntry(SERVER, T0_NS // MS)], None), SERVER_ID)


def head_of(signer: _custody.Signer, chain: Chain, at_ms: int) -> bytes:
    head = _custody.sign_head(
        signer,
        tracking_id=chain.packet.tracking_id,
        content=chain.content,
        chain=chain.parsed(),
        now_ns=T0_NS + at_ms * MS,
    )
    return head.SerializeToString(deterministic=True)


def signed_packet() -> packet_pb2.Packet:
    """The schema "1.1" packet: haiku-2's signed "originated" entry, nothing else."""
    packet = _packet("pkt-0001", AGENT.agent_id, "check the Q3 numbers", 0)
    return _custody.sign_origin(packet, AGENT.signer, now_ns=T0_NS + 1 * MS)


def agent_chain() -> Chain:
    """originated (haiku-2), received + dispatched (the server, one Merkle-signed ingest
    batch with another packet's two hops first, so this packet's leaves are 2 and 3 of 4),
    delivered (the server, a batch of one, with counterpart, attempt and principal)."""
    other = _packet("pkt-0000", "intern-7", "collect the receipts", 0)
    packet = signed_packet()
    custodian = _custodian()
    contents = [other.SerializeToString(deterministic=True), _custody.content_bytes(packet)]
    sealed, leaves = custodian.seal_with_leaves(
        list(zip([other, packet], contents, strict=True)), T0_NS + 2 * MS
    )
    content = contents[1]
    entries = [packet.chain_of_custody[0].SerializeToString(deterministic=True), *sealed[1]]
    delivered = _wire.RecordWriter(
        actor=SERVER_ID.encode(),
        action=_custody.DELIVERED.encode(),
        occurred_at_ns=T0_NS + 5 * MS,
        key_id=SERVER.key_id.encode(),
    ).record(
        sequence=3,
        content_digest=_custody.digest(content),
        previous_hash=leaves[3],
        tracking_id=packet.tracking_id.encode(),
        details=_wire.hop_details(
            counterpart=b"group:billing consumer:worker-3",
            attempt=1,
            principal=b"spiffe://example.org/worker-3",
        ),
    )
    entries += _custody.sign_batch(SERVER, [delivered])
    batch = SealedBatch.of_entries([e for pair in sealed for e in pair], leaves)
    chain = Chain(packet, content, entries, b"", batch.encode(), 2)
    chain.head = head_of(SERVER, chain, 6)
    return chain


def approval_chain() -> Chain:
    """A schema "1.0" packet a policy rule held: received + held (the server), approved
    (approver-1, an entry signed alone), dispatched (the server, after the approval)."""
    packet = _packet("pkt-0002", "intern-7", "pay the supplier", 10)
    content = packet.SerializeToString(deterministic=True)
    custodian = _custodian()
    entries = custodian.seal_decided(
        [(packet, content, _custody.HELD, "rule: payments")], T0_NS + 11 * MS
    )[0]
    stored = packet_service_pb2.StoredPacket(content=content)
    stored.packet.CopyFrom(packet)
    for raw in entries:
        stored.packet.chain_of_custody.append(custody_pb2.CustodyEntry.FromString(raw))
    approval = decision_entry(
        stored, APPROVER, _custody.APPROVED, reason="within budget", now_ns=T0_NS + 12 * MS
    )
    entries.append(approval.SerializeToString(deterministic=True))
    end = ChainEnd(2, 1, _custody.entry_hash(approval.record))
    hops = custodian.sign_hops(
        [Hop(packet.tracking_id, _custody.digest(content), end, _custody.DISPATCHED)],
        T0_NS + 13 * MS,
    )
    assert hops is not None
    entries.append(hops[0].entry)
    chain = Chain(packet, content, entries, b"")
    chain.head = head_of(SERVER, chain, 14)
    return chain


def key_json(key: custody_pb2.SigningKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "public_key": key.public_key.hex(),
        "owner_kind": custody_pb2.KeyOwnerKind.Name(key.owner_kind),
        "owner": key.owner,
        "serialized": key.SerializeToString(deterministic=True).hex(),
    }


def export_lines(chain: Chain) -> list[str]:
    """The export file of one packet: the keys line, then the packet line (README "Chains of custody")."""
    stored = packet_service_pb2.StoredPacket(content=chain.content)
    stored.packet.CopyFrom(chain.packet)
    del stored.packet.chain_of_custody[:]
    stored.packet.chain_of_custody.extend(chain.parsed())
    stored.custody_head.ParseFromString(chain.head)
    out = io.StringIO()
    write_keys(out, [KEYS[k] for k in ALL_KEYS])
    write_packet(out, stored)
    # Map entries (the task's labels) come out of MessageToDict in hash order: keys sorted
    # so the file is the same at every generation.
    return [
        json.dumps(json.loads(line), separators=(",", ":"), sort_keys=True)
        for line in out.getvalue().splitlines()
    ]


def packet_json(packet: packet_pb2.Packet) -> dict[str, Any]:
    return dict(json_format.MessageToDict(packet))
