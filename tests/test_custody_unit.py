"""Custody cryptography as plain unit tests: strict Ed25519, Merkle proofs, wire bytes,
and tamper detection over thousands of random mutations."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from packetbus import _custody, _ed25519, _merkle, _wire
from packetbus.v1 import custody_pb2, packet_pb2, speech_act_pb2

# -- strict Ed25519 ------------------------------------------------------------------


def test_a_valid_signature_verifies_and_a_changed_message_does_not() -> None:
    seed = _ed25519.new_seed()
    public = _ed25519.public_key_of(seed)
    signature = _ed25519.sign(seed, b"message")
    assert _ed25519.verify(public, b"message", signature)
    assert not _ed25519.verify(public, b"messagf", signature)


def test_a_signer_derives_its_key_once_and_signs_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server signs every Dispatch with one Signer: deriving the key pair per
    # signature cost a scalar multiplication each time (issue 16).
    seed = _ed25519.new_seed()
    derived: list[bytes] = []

    def counted(seed: bytes) -> SigningKey:
        derived.append(seed)
        return SigningKey(seed)

    monkeypatch.setattr(_ed25519, "SigningKey", counted)
    signer = _custody.Signer(seed)
    at_start = len(derived)
    first = signer.sign(b"", b"one")
    second = signer.sign(b"", b"two")
    assert len(derived) == at_start  # none per signature
    # The same signatures as a freshly derived key makes (Ed25519 is deterministic),
    # and as signing with the bare seed does.
    assert first == bytes(SigningKey(seed).sign(b"one").signature) == _ed25519.sign(seed, b"one")
    assert second == bytes(SigningKey(seed).sign(b"two").signature)
    with pytest.raises(ValueError, match="32 bytes"):
        _ed25519.sign(b"short", b"m")


@pytest.mark.parametrize("length", [0, 63, 65, 128])
def test_signatures_of_the_wrong_length_are_rejected(length: int) -> None:
    seed = _ed25519.new_seed()
    signature = _ed25519.sign(seed, b"m")
    wrong = (signature * 2)[:length]
    assert not _ed25519.verify(_ed25519.public_key_of(seed), b"m", wrong)


def test_non_canonical_s_is_rejected() -> None:
    seed = _ed25519.new_seed()
    public = _ed25519.public_key_of(seed)
    signature = _ed25519.sign(seed, b"m")
    s = int.from_bytes(signature[32:], "little")
    # S + L is the same scalar mod L: a lax verifier accepts it as a second
    # signature for the same message (malleability).
    malleated = signature[:32] + (s + _ed25519.L).to_bytes(32, "little")
    assert (s + _ed25519.L) < 2**256
    assert not _ed25519.verify(public, b"m", malleated)


SMALL_ORDER_KEYS = [
    bytes(32),  # order 4 (0, as a y coordinate)
    bytes([1]) + bytes(31),  # the identity
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
]


@pytest.mark.parametrize("public", SMALL_ORDER_KEYS)
def test_small_order_public_keys_are_rejected(public: bytes) -> None:
    assert _ed25519.is_small_order(public)
    assert _ed25519.public_key_problem(public) is not None
    # With the identity as public key and as R, and S = 0, the verification
    # equation holds for every message in a lax verifier.
    identity = bytes([1]) + bytes(31)
    assert not _ed25519.verify(public, b"any message", identity + bytes(32))


def test_a_normal_key_is_not_small_order() -> None:
    assert _ed25519.public_key_problem(_ed25519.public_key_of(_ed25519.new_seed())) is None


# -- Merkle proofs -------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13, 200, 401])
def test_every_leaf_proves_into_the_root_and_nowhere_else(count: int) -> None:
    leaves = [_merkle.leaf_hash(os.urandom(16)) for _ in range(count)]
    root, paths = _merkle.root_and_proofs(leaves)
    for i in range(count):
        assert _merkle.root_from_proof(leaves[i], i, count, paths[i]) == root
        if count > 1:
            assert _merkle.root_from_proof(leaves[i], (i + 1) % count, count, paths[i]) != root
    assert _merkle.root_from_proof(leaves[0], count, count, paths[0]) is None


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 13, 200, 401])
def test_joined_proofs_are_the_proofs_encoded(count: int) -> None:
    leaves = [_merkle.leaf_hash(os.urandom(16)) for _ in range(count)]
    root, paths = _merkle.root_and_proofs(leaves)
    joined_root, joined = _merkle.root_and_joined_proofs(leaves, b"<>")
    assert joined_root == root
    assert joined == [b"".join(b"<>" + h for h in path) for path in paths]


def test_the_tree_is_rfc_9162s() -> None:
    # MTH({d0, d1, d2}) = H(1 || H(1 || H(0||d0) || H(0||d1)) || H(0||d2))
    d = [b"d0", b"d1", b"d2"]
    h = [hashlib.sha256(b"\x00" + x).digest() for x in d]
    left = hashlib.sha256(b"\x01" + h[0] + h[1]).digest()
    expected = hashlib.sha256(b"\x01" + left + h[2]).digest()
    root, _ = _merkle.root_and_proofs(h)
    assert root == expected


# -- wire bytes equal the generated classes' -------------------------------------------


def test_record_writer_matches_deterministic_serialization() -> None:
    writer = _wire.RecordWriter(
        actor=b"server-1",
        action=b"received",
        occurred_at_ns=1_795_000_000_123_456_789,
        key_id=b"ed25519-abc",
    )
    raw = writer.record(
        sequence=3, content_digest=b"c" * 32, previous_hash=b"p" * 32, tracking_id=b"t-1"
    )
    expected = custody_pb2.CustodyRecord(
        sequence=3,
        actor="server-1",
        action="received",
        content_digest=b"c" * 32,
        previous_hash=b"p" * 32,
        key_id="ed25519-abc",
        tracking_id="t-1",
    )
    expected.occurred_at.FromNanoseconds(1_795_000_000_123_456_789)
    assert raw == expected.SerializeToString(deterministic=True)
    first = writer.record(sequence=0, content_digest=b"c" * 32, previous_hash=b"", tracking_id=b"")
    expected.sequence, expected.previous_hash, expected.tracking_id = 0, b"", ""
    assert first == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("counterpart", "attempt", "reason"),
    [("group:g consumer:w-1", 2, "nacked: boom"), ("", 0, ""), ("group:g", 300, ""), ("", 1, "r")],
)
def test_hop_details_match_deterministic_serialization(
    counterpart: str, attempt: int, reason: str
) -> None:
    writer = _wire.RecordWriter(
        actor=b"server-1", action=b"delivered", occurred_at_ns=1_795_000_000_5, key_id=b"k"
    )
    details = _wire.hop_details(
        counterpart=counterpart.encode(), attempt=attempt, reason=reason.encode()
    )
    raw = writer.record(
        sequence=4,
        content_digest=b"c" * 32,
        previous_hash=b"p" * 32,
        tracking_id=b"t-1",
        details=details,
    )
    expected = custody_pb2.CustodyRecord(
        sequence=4,
        actor="server-1",
        action="delivered",
        content_digest=b"c" * 32,
        previous_hash=b"p" * 32,
        key_id="k",
        tracking_id="t-1",
        counterpart=counterpart,
        attempt=attempt,
        reason=reason,
    )
    expected.occurred_at.FromNanoseconds(1_795_000_000_5)
    assert raw == expected.SerializeToString(deterministic=True)


def test_entry_writer_and_with_chain_match_the_generated_classes() -> None:
    signer = _custody.Signer.generate()
    raws = [bytes([i]) * (100 + i) for i in range(5)]
    entries = _custody.sign_batch(signer, raws)
    parsed = [custody_pb2.CustodyEntry.FromString(e) for e in entries]
    assert [e.SerializeToString(deterministic=True) for e in parsed] == entries
    assert [p.batch_proof.leaf_index for p in parsed] == [0, 1, 2, 3, 4]
    content = packet_pb2.Packet(topic="t", origin="o").SerializeToString()
    packet = packet_pb2.Packet.FromString(_wire.with_chain(content, entries))
    assert list(packet.chain_of_custody) == parsed


# -- chains: build one, then break it every possible way --------------------------------

SERVER = _custody.Signer(bytes(range(32)))
AGENT = _custody.Signer(bytes(range(1, 33)))
KEYS = {
    SERVER.key_id: custody_pb2.SigningKey(
        key_id=SERVER.key_id,
        public_key=SERVER.public_key,
        owner_kind=custody_pb2.KEY_OWNER_KIND_SERVER,
        owner="server-1",
    ),
    AGENT.key_id: custody_pb2.SigningKey(
        key_id=AGENT.key_id,
        public_key=AGENT.public_key,
        owner_kind=custody_pb2.KEY_OWNER_KIND_AGENT,
        owner="agent-1",
    ),
}


def signed_packet() -> tuple[packet_pb2.Packet, bytes, custody_pb2.CustodyHead]:
    packet = packet_pb2.Packet(
        tracking_id="0b9f4c1e-5a4e-4c8e-9d65-0d4f2f6b7a10",
        origin="agent-1",
        speech_act=speech_act_pb2.SPEECH_ACT_INFORM,
        topic="t",
        ttl_seconds=60,
    )
    packet.dispatched_at.FromSeconds(1_800_000_000)
    packet.finding.claim = "claim"
    packet.finding.confidence = 0.5
    _custody.sign_origin(packet, AGENT, now_ns=1)
    content = _custody.content_bytes(packet)
    writers = [
        _wire.RecordWriter(
            actor=b"server-1", action=a, occurred_at_ns=2, key_id=SERVER.key_id.encode()
        )
        for a in (b"received", b"dispatched")
    ]
    previous = hashlib.sha256(b"\x00" + packet.chain_of_custody[0].record).digest()
    raws = []
    for i, writer in enumerate(writers):
        raw = writer.record(
            sequence=1 + i,
            content_digest=hashlib.sha256(content).digest(),
            previous_hash=previous,
            tracking_id=packet.tracking_id.encode(),
        )
        raws.append(raw)
        previous = hashlib.sha256(b"\x00" + raw).digest()
    for entry in _custody.sign_batch(SERVER, raws):
        packet.chain_of_custody.append(custody_pb2.CustodyEntry.FromString(entry))
    head = _custody.sign_head(
        SERVER, tracking_id=packet.tracking_id, content=content, chain=packet.chain_of_custody
    )
    return packet, content, head


PACKET, CONTENT, HEAD = signed_packet()


def check(
    chain: Sequence[custody_pb2.CustodyEntry] = PACKET.chain_of_custody,
    content: bytes = CONTENT,
    head: custody_pb2.CustodyHead | None = HEAD,
    keys: Mapping[str, custody_pb2.SigningKey] = KEYS,
) -> _custody.ChainReport:
    return _custody.verify_chain(
        tracking_id=PACKET.tracking_id, content=content, chain=chain, keys=keys, head=head
    )


def test_the_intact_chain_verifies() -> None:
    report = check(list(PACKET.chain_of_custody), CONTENT, HEAD)
    assert report.verified, report.failures()
    assert [e.action for e in report.entries] == ["originated", "received", "dispatched"]


def _flip(data: bytes, index: int, bit: int) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


PARTS = ("record", "signature", "content", "previous_hash", "proof", "head")


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    part=st.sampled_from(PARTS),
    entry=st.integers(0, 2),
    position=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_any_single_bit_flip_is_detected_and_named(
    part: str, entry: int, position: int, bit: int
) -> None:
    chain = [
        custody_pb2.CustodyEntry.FromString(e.SerializeToString()) for e in PACKET.chain_of_custody
    ]
    content, head = CONTENT, HEAD
    named: int | None = entry
    if part == "record":
        chain[entry].record = _flip(chain[entry].record, position % len(chain[entry].record), bit)
    elif part == "signature":
        chain[entry].signature = _flip(chain[entry].signature, position % 64, bit)
    elif part == "previous_hash":
        entry = max(entry, 1)  # the first entry has no previous hash
        named = entry
        record = custody_pb2.CustodyRecord.FromString(chain[entry].record)
        record.previous_hash = _flip(record.previous_hash, position % 32, bit)
        chain[entry].record = record.SerializeToString(deterministic=True)
    elif part == "proof":
        entry = max(entry, 1)  # only the server's entries are batch-signed
        named = entry
        siblings = chain[entry].batch_proof.sibling_hashes
        k = position % len(siblings)
        siblings[k] = _flip(siblings[k], position % 32, bit)
    elif part == "content":
        content = _flip(content, position % len(content), bit)
        named = 0  # every entry signed the content; the first is named
    else:
        head = custody_pb2.CustodyHead(
            statement=_flip(head.statement, position % len(head.statement), bit),
            signature=head.signature,
            key_id=head.key_id,
        )
        named = None

    report = check(chain, content, head)
    assert not report.verified
    if named is None:
        assert report.head_verdict != custody_pb2.CUSTODY_VERDICT_OK
    else:
        assert not report.entries[named].ok, report.failures()
        assert f"entry {named}:" in "\n".join(report.failures())


@given(index=st.integers(0, 2))
def test_deleting_an_entry_is_detected(index: int) -> None:
    chain = list(PACKET.chain_of_custody)
    del chain[index]
    report = check(chain, CONTENT, HEAD)
    assert not report.verified
    if index < 2:
        assert not report.entries[index].ok
    else:  # the last entry: only the signed head knows it existed
        assert report.head_verdict == custody_pb2.CUSTODY_VERDICT_INCOMPLETE


@given(pair=st.sampled_from([(0, 1), (0, 2), (1, 2)]))
def test_swapping_two_entries_is_detected(pair: tuple[int, int]) -> None:
    chain = list(PACKET.chain_of_custody)
    a, b = pair
    chain[a], chain[b] = chain[b], chain[a]
    report = check(chain, CONTENT, HEAD)
    assert not report.verified
    assert report.entries[a].verdict == custody_pb2.CUSTODY_VERDICT_OUT_OF_ORDER
    assert report.entries[b].verdict == custody_pb2.CUSTODY_VERDICT_OUT_OF_ORDER


def test_unknown_key_and_actor_mismatch_are_named() -> None:
    keys = dict(KEYS)
    del keys[AGENT.key_id]
    assert check(keys=keys).entries[0].verdict == custody_pb2.CUSTODY_VERDICT_UNKNOWN_KEY
    impostor = dict(KEYS)
    impostor[AGENT.key_id] = custody_pb2.SigningKey(
        key_id=AGENT.key_id,
        public_key=AGENT.public_key,
        owner_kind=custody_pb2.KEY_OWNER_KIND_AGENT,
        owner="someone-else",
    )
    report = check(keys=impostor)
    assert report.entries[0].verdict == custody_pb2.CUSTODY_VERDICT_ACTOR_MISMATCH


def test_a_chain_without_a_head_is_not_verified() -> None:
    report = check(head=None)
    assert all(e.ok for e in report.entries)
    assert not report.verified
