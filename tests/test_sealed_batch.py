"""A signed ingest batch stored once (_sealed_batch): the entries rebuilt from it are the
exact bytes Custodian.seal made, verify offline with only public keys, and any change to
the stored batch is detected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from packetbus import _custody, _wire
from packetbus.v1 import custody_pb2, packet_pb2
from packetbus_server._custodian import Custodian
from packetbus_server._keyring import Keyring
from packetbus_server._sealed_batch import SealedBatch, SealedBatchError
from tests.conftest import new_packet

AGENT = _custody.Signer(bytes(range(1, 33)))


def sealed(
    tmp_path: Path, count: int, *, origin_signed: bool
) -> tuple[Custodian, list[tuple[packet_pb2.Packet, bytes]], list[list[bytes]]]:
    custodian = Custodian(Keyring.load(tmp_path / "keys.json"), "server-1")
    packets = []
    for i in range(count):
        packet = new_packet("sealed", ttl_seconds=60 + i)
        packet.finding.claim = f"claim {i}"
        if origin_signed and i % 2:
            _custody.sign_origin(packet, AGENT, now_ns=1_800_000_000_000_000_000)
        packets.append((packet, _custody.content_bytes(packet)))
    return custodian, packets, custodian.seal(packets, now_ns=1_800_000_000_123_456_789)


def split_chain(data: bytes) -> list[bytes]:
    """Serialized chain_of_custody elements, each entry's exact bytes (not re-serialized)."""
    entries, at = [], 0
    while at < len(data):
        assert data[at : at + 2] == b"\xc2\x02"
        length, shift, at = 0, 0, at + 2
        while True:
            byte = data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        entries.append(data[at : at + length])
        at += length
    return entries


def rebuilt(batch: SealedBatch, k: int, packet: packet_pb2.Packet, content: bytes) -> list[bytes]:
    """The packet's entries as readers rebuild them (`SealedBatch.chain`, the bytes
    appended to a stored payload), split back into entries."""
    return split_chain(batch.chain(2 * k, **packet_args(packet, content)))


def packet_args(packet: packet_pb2.Packet, content: bytes) -> dict[str, Any]:
    chain = packet.chain_of_custody
    return {
        "content": content,
        "tracking_id": packet.tracking_id.encode(),
        "sequence": len(chain),
        "previous_hash": _custody.entry_hash(chain[-1].record) if chain else b"",
    }


def test_chain_is_the_sealed_entries(tmp_path: Path) -> None:
    # `chain` joins precomputed prefixes; `Custodian.seal` builds each record and
    # entry through _wire's writers: both give the same bytes, also for a packet
    # without a tracking id (its records leave field 8 out).
    for origin_signed in (False, True):
        for tracked in (True, False):
            _, packets, _ = sealed(tmp_path, 9, origin_signed=origin_signed)
            if not tracked:
                for packet, _ in packets:
                    packet.tracking_id = ""
            custodian = Custodian(Keyring.load(tmp_path / "keys.json"), "server-1")
            entries = custodian.seal(packets, now_ns=1_800_000_000_123_456_789)
            batch = SealedBatch.of_entries([e for pair in entries for e in pair])
            for k, (packet, content) in enumerate(packets):
                args = packet_args(packet, content)
                assert batch.chain(2 * k, **args) == _wire.with_chain(b"", entries[k])


def test_the_leaves_seal_hashed_are_the_leaves_of_its_entries(tmp_path: Path) -> None:
    custodian, packets, _ = sealed(tmp_path, 5, origin_signed=True)
    chains, leaves = custodian.seal_with_leaves(packets, now_ns=1_800_000_000_123_456_789)
    flat = [e for pair in chains for e in pair]
    assert SealedBatch.of_entries(flat, leaves) == SealedBatch.of_entries(flat)
    assert custodian.seal(packets, now_ns=1_800_000_000_123_456_789) == chains


@pytest.mark.parametrize("count", [1, 2, 7, 200])
def test_the_batch_ingest_stores_is_the_batch_of_the_entries_seal_makes(
    tmp_path: Path, count: int
) -> None:
    # Ingest seals straight into the stored form (`seal_batch`: root, signature and
    # leaves, no entry or proof built); it must be the very batch `seal`'s entries
    # give, so every reader rebuilds exactly the entries `seal` made.
    custodian, packets, entries = sealed(tmp_path, count, origin_signed=True)
    batch = custodian.seal_batch(packets, now_ns=1_800_000_000_123_456_789)
    assert batch is not None
    assert batch.encode() == SealedBatch.of_entries([e for pair in entries for e in pair]).encode()
    for k, (packet, content) in enumerate(packets):
        assert rebuilt(batch, k, packet, content) == entries[k]


def test_a_server_that_does_not_sign_seals_no_batch(tmp_path: Path) -> None:
    custodian = Custodian(Keyring.load(tmp_path / "keys.json"), "server-1", signing=False)
    _, packets, _ = sealed(tmp_path, 3, origin_signed=False)
    assert custodian.seal_batch(packets, now_ns=1) is None
    assert custodian.seal_batch([], now_ns=1) is None


def keys_of(custodian: Custodian) -> dict[str, custody_pb2.SigningKey]:
    keys = {k.key_id: k for k in custodian.published_keys()}
    keys[AGENT.key_id] = custody_pb2.SigningKey(
        key_id=AGENT.key_id,
        public_key=AGENT.public_key,
        owner_kind=custody_pb2.KEY_OWNER_KIND_AGENT,
        owner="tester-1",
    )
    return keys


def verifies(
    keys: dict[str, custody_pb2.SigningKey],
    packet: packet_pb2.Packet,
    content: bytes,
    entries: list[bytes],
) -> bool:
    chain = list(packet.chain_of_custody) + [
        custody_pb2.CustodyEntry.FromString(e) for e in entries
    ]
    # No head: the entries alone are judged (a head vouches for the chain's end).
    report = _custody.verify_chain(
        tracking_id=packet.tracking_id, content=content, chain=chain, keys=keys, head=None
    )
    return all(e.ok for e in report.entries)


# Odd leaf counts give the tree its lone right-edge nodes; 200 packets is a full call.
@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 200])
@pytest.mark.parametrize("origin_signed", [False, True])
def test_rebuilt_entries_are_the_sealed_bytes(
    tmp_path: Path, count: int, origin_signed: bool
) -> None:
    custodian, packets, entries = sealed(tmp_path, count, origin_signed=origin_signed)
    stored = SealedBatch.of_entries([e for pair in entries for e in pair]).encode()
    batch = SealedBatch.decode(stored)
    keys = keys_of(custodian)
    for k, (packet, content) in enumerate(packets):
        again = rebuilt(batch, k, packet, content)
        assert again == entries[k]
        assert verifies(keys, packet, content, again)
    # Stored once: 32 bytes per entry and under 200 bytes for the whole batch besides.
    assert len(stored) - 64 * count < 200


def test_a_principal_is_kept(tmp_path: Path) -> None:
    _, packets, _ = sealed(tmp_path, 3, origin_signed=False)
    signer = _custody.Signer(bytes(range(32)))
    details = _wire.hop_details(principal=b"alice")
    raws = []
    for packet, content in packets:
        previous = b""
        for step, action in enumerate((b"received", b"dispatched")):
            raw = _wire.RecordWriter(
                actor=b"server-1", action=action, occurred_at_ns=5, key_id=signer.key_id.encode()
            ).record(
                sequence=step,
                content_digest=_custody.digest(content),
                previous_hash=previous,
                tracking_id=packet.tracking_id.encode(),
                details=details,
            )
            previous = _custody.entry_hash(raw)
            raws.append(raw)
    entries = _custody.sign_batch(signer, raws)
    batch = SealedBatch.decode(SealedBatch.of_entries(entries).encode())
    assert batch.details == details
    for k, (packet, content) in enumerate(packets):
        assert rebuilt(batch, k, packet, content) == entries[2 * k : 2 * k + 2]


def test_any_changed_byte_of_a_stored_batch_is_detected(tmp_path: Path) -> None:
    custodian, packets, entries = sealed(tmp_path, 3, origin_signed=True)
    stored = SealedBatch.of_entries([e for pair in entries for e in pair]).encode()
    keys = keys_of(custodian)
    for k, (packet, content) in enumerate(packets):
        for at in range(len(stored)):
            changed = bytearray(stored)
            changed[at] ^= 0x01
            try:
                again = rebuilt(SealedBatch.decode(bytes(changed)), k, packet, content)
            except SealedBatchError:
                continue
            assert not verifies(keys, packet, content, again), (k, at)


def test_a_packet_is_not_proven_by_another_leaf_or_content(tmp_path: Path) -> None:
    custodian, packets, entries = sealed(tmp_path, 4, origin_signed=False)
    batch = SealedBatch.of_entries([e for pair in entries for e in pair])
    keys = keys_of(custodian)
    packet, content = packets[1]
    assert verifies(keys, packet, content, rebuilt(batch, 1, packet, content))
    assert not verifies(keys, packet, content, rebuilt(batch, 2, packet, content))
    # An odd leaf is a "dispatched" record: never a packet's first.
    assert not verifies(
        keys,
        packet,
        content,
        split_chain(
            batch.chain(
                3,
                content=content,
                tracking_id=packet.tracking_id.encode(),
                sequence=0,
                previous_hash=b"",
            )
        ),
    )
    assert not verifies(keys, packet, content + b"\x00", rebuilt(batch, 1, packet, content))
    with pytest.raises(SealedBatchError):
        batch.chain(7, content=content, tracking_id=b"x", sequence=0, previous_hash=b"")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01" + bytes(70),
        b"\x02" + bytes(100),
        b"\x01" + bytes(7) + bytes(6) + bytes(64) + b"x",
    ],
)
def test_bytes_that_are_not_a_sealed_batch_are_refused(data: bytes) -> None:
    with pytest.raises(SealedBatchError):
        SealedBatch.decode(data)
