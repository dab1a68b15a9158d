"""The idempotency record's two forms (scripts/lib/records.lua, issue 16 target 4).

A record is now the packet's 32-byte fingerprint and its cursor, expiring exactly
with the packet (its expiry is the key's PEXPIRETIME); before, it was
"<64 hex> <cursor> <expiry ms>". A store upgraded in place keeps old records for
up to their TTL: they must answer exactly as they did (the stored expiry, not the
key's TTL), and a governance decision on one keeps its form.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus_server import _keys
from packetbus_server._ingest import fingerprint
from tests import test_policy
from tests.conftest import new_packet, unique
from tests.test_policy import APPROVER, POLICY, drone_packet, error_info, set_policy, spawn_packet

# The governed server of test_policy (a policy that holds spawn packets), shared.
governed = test_policy.governed
bus = test_policy.bus
policy_file = test_policy.policy_file

# The old form's expiry is made to differ from the key's TTL by this much, so an
# answer shows which of the two it was read from.
SKEW_MS = 4321


async def _as_old_form(
    r: redis_asyncio.Redis, key: str, fp_hex: str, marker: str, expiry_ms: int
) -> None:  # a held or rejected record: under the topic in both forms
    """Rewrite `key` as the server before issue 16 wrote it, keeping its TTL."""
    await r.set(key, f"{fp_hex} {marker} {expiry_ms}", keepttl=True)


async def _get(r: redis_asyncio.Redis, key: str) -> bytes:
    value = await r.get(key)
    assert isinstance(value, bytes)
    return value


def _ms(stamp: object) -> int:
    return int(stamp.ToMilliseconds())  # type: ignore[attr-defined]


async def _record(
    r: redis_asyncio.Redis, backend: str, topic: str, tracking_id: str
) -> tuple[str, bytes]:
    """Where a dispatched packet's record is and what it holds, without its topic
    (on a single Redis it rides in the location key: scripts/lib/records.lua)."""
    if backend == "cluster":
        assert await r.get(_keys.packet_location(tracking_id)) == topic.encode()
        key = _keys.packet_record(topic, tracking_id)
        return key, await _get(r, key)
    assert not await r.exists(_keys.packet_record(topic, tracking_id))
    key = _keys.packet_location(tracking_id)
    value = await _get(r, key)
    assert value[:1] == b"\0"
    assert value.endswith(b" " + topic.encode())
    return key, value[1 : -len(topic) - 1]


async def _conflicts_leave_one_stored(
    client: packetbus.Client,
    r: redis_asyncio.Redis,
    packet: packetbus.Packet,
    topic: str,
) -> None:
    """Its tracking id with other contents, or on another topic: ALREADY_EXISTS, and
    the topic still holds the one packet."""
    changed = packetbus.Packet.FromString(packet.SerializeToString())
    changed.data.update({"k": "w"})
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.dispatch(changed)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    elsewhere = packetbus.Packet.FromString(packet.SerializeToString())
    elsewhere.topic = unique("other")
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.dispatch(elsewhere)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert await r.xlen(_keys.topic_log(topic)) == 1


async def test_a_record_is_the_raw_fingerprint_and_cursor_and_expires_with_the_packet(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str, backend: str
) -> None:
    packet = new_packet(topic, ttl_seconds=120)
    packet.data.update({"k": "v"})
    receipt = await client.dispatch(packet)

    key, value = await _record(raw_redis, backend, topic, packet.tracking_id)
    assert value == bytes.fromhex(fingerprint(packet)) + receipt.cursor.encode()
    assert await raw_redis.pexpiretime(key) == _ms(receipt.expires_at)
    stored = await client.get_packet(packet.tracking_id)
    assert stored.receipt == receipt

    # The same packet again: the original answer, nothing stored twice.
    assert await client.dispatch(packet) == receipt
    await _conflicts_leave_one_stored(client, raw_redis, packet, topic)
    assert await _record(raw_redis, backend, topic, packet.tracking_id) == (key, value)


async def test_an_old_form_record_answers_exactly_as_it_did(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packet = new_packet(topic, ttl_seconds=120)
    receipt = await client.dispatch(packet)
    # As the server before issue 16 left it: the record under the topic in the
    # old form, the location the bare topic.
    key = _keys.packet_record(topic, packet.tracking_id)
    location = _keys.packet_location(packet.tracking_id)
    old_expiry = _ms(receipt.expires_at) + SKEW_MS
    old = f"{fingerprint(packet)} {receipt.cursor} {old_expiry}".encode()
    await raw_redis.set(key, old, px=120_000)
    await raw_redis.set(location, topic, keepttl=True)

    again = await client.dispatch(packet)
    assert (again.cursor, _ms(again.expires_at)) == (receipt.cursor, old_expiry)
    [result] = await client.dispatch_batch([packet])
    assert (result.receipt.cursor, _ms(result.receipt.expires_at)) == (
        receipt.cursor,
        old_expiry,
    )
    stored = await client.get_packet(packet.tracking_id)
    assert (stored.receipt.cursor, _ms(stored.receipt.expires_at)) == (receipt.cursor, old_expiry)

    await _conflicts_leave_one_stored(client, raw_redis, packet, topic)
    # Read, never rewritten: still the old form.
    assert await raw_redis.get(key) == old
    assert await raw_redis.get(location) == topic.encode()


async def test_an_old_form_held_record_is_denied_in_its_own_form(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    approver = packetbus.AgentIdentity.generate(unique(APPROVER))
    await bus.register_identity(approver)
    topic = unique("gov")
    packet = spawn_packet(topic)
    [result] = await bus.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"
    key = _keys.packet_record(topic, packet.tracking_id)
    value = await _get(raw_redis, key)
    assert value[:32] == bytes.fromhex(fingerprint(packet))
    marker = value[32:].decode()
    assert marker.startswith("held:")
    old_expiry = int(await raw_redis.pexpiretime(key)) + SKEW_MS
    await _as_old_form(raw_redis, key, fingerprint(packet), marker, old_expiry)

    # Dispatched again while held: the held answer, from the old record.
    [held] = await bus.dispatch_batch([packet])
    assert held.WhichOneof("outcome") == "held"

    entry_id = await bus.deny_packet(topic, packet.tracking_id, reason="no", identity=approver)
    assert await raw_redis.get(key) == (
        f"{fingerprint(packet)} rejected:{entry_id} {old_expiry}".encode()
    )
    [again] = await bus.dispatch_batch([packet])
    assert again.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert error_info(again)["carcel_entry_id"] == entry_id
    changed = spawn_packet(topic)
    changed.tracking_id = packet.tracking_id
    changed.data.update({"entropy": 0.2})
    [conflict] = await bus.dispatch_batch([changed])
    assert conflict.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]


async def test_an_old_form_held_record_approved_is_stored_in_the_current_form(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    approver = packetbus.AgentIdentity.generate(unique(APPROVER))
    await bus.register_identity(approver)
    topic = unique("gov")
    packet = spawn_packet(topic)
    [result] = await bus.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"
    key = _keys.packet_record(topic, packet.tracking_id)
    marker = (await _get(raw_redis, key))[32:].decode()
    old_expiry = int(await raw_redis.pexpiretime(key)) + SKEW_MS
    await _as_old_form(raw_redis, key, fingerprint(packet), marker, old_expiry)

    receipt = await bus.approve_packet(topic, packet.tracking_id, identity=approver)
    assert await raw_redis.get(key) == (
        bytes.fromhex(fingerprint(packet)) + receipt.cursor.encode()
    )
    assert await raw_redis.pexpiretime(key) == _ms(receipt.expires_at)
    [again] = await bus.dispatch_batch([packet])
    assert (again.receipt.cursor, again.receipt.expires_at) == (
        receipt.cursor,
        receipt.expires_at,
    )


async def test_a_dispatched_packets_record_answers_governance_replays(
    bus: packetbus.Client, policy_file: Path, raw_redis: redis_asyncio.Redis
) -> None:
    """Stored while the policy let it through, the packet is answered as stored
    once a policy would reject it, and approving it or denying it finds it
    stored: every governance script reads the record where dispatch put it."""
    approver = packetbus.AgentIdentity.generate(unique(APPROVER))
    await bus.register_identity(approver)
    topic = unique("gov")
    packet = drone_packet(topic, 0.9)
    relaxed = POLICY.replace("entropy = { gt = 0.7 }", "entropy = { gt = 0.95 }")
    await set_policy(bus, policy_file, relaxed)
    try:
        [first] = await bus.dispatch_batch([packet])
    finally:
        await set_policy(bus, policy_file, POLICY)
    assert first.WhichOneof("outcome") == "receipt"

    [again] = await bus.dispatch_batch([packet])
    assert again.receipt == first.receipt
    assert await raw_redis.xlen(_keys.carcel(topic)) == 0
    approved = await bus.approve_packet(topic, packet.tracking_id, identity=approver)
    assert approved == first.receipt
    with pytest.raises(packetbus.PacketbusError) as caught:
        await bus.deny_packet(topic, packet.tracking_id, reason="no", identity=approver)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await raw_redis.xlen(_keys.topic_log(topic)) == 1
