"""Dispatch on a real server and a real Redis: validation, idempotency, batches, TTLs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import packetbus
from packetbus import CustodyRecord, _custody
from packetbus_server import RunningServer, _store
from tests._store_keys import key_names, new_keys
from tests.conftest import new_packet, unique


async def _log_length(r: redis_asyncio.Redis, topic: str) -> int:
    return int(await r.xlen(f"pb:{{{topic}}}:log"))


async def test_three_invalid_fields_one_error_naming_all_and_nothing_written(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    before = await key_names(raw_redis)
    packet = new_packet(topic, ttl_seconds=999_999)
    packet.origin = ""
    packet.finding.claim = "the sky is green"
    packet.finding.confidence = 1.5

    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.dispatch(packet)

    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in error.field_violations) == [
        "finding.confidence",
        "origin",
        "ttl_seconds",
    ]
    assert {v.reason for v in error.field_violations} == {
        "CONFIDENCE_RANGE",
        "REQUIRED",
        "TTL_RANGE",
    }
    assert await new_keys(raw_redis, before) == set()
    assert await _log_length(raw_redis, topic) == 0


async def test_batch_of_1000_with_one_invalid_stores_999(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packets = [new_packet(topic) for _ in range(1000)]
    packets[417].schema_version = "9.9"

    results = await client.dispatch_batch(packets)

    assert len(results) == 1000
    outcomes = [r.WhichOneof("outcome") for r in results]
    assert outcomes.count("receipt") == 999
    assert outcomes[417] == "error"
    bad = packetbus.PacketbusError.from_status(results[417].error)
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.field_violations] == ["schema_version"]
    assert "supported: 1.0, 1.1" in bad.field_violations[0].description
    assert [r.tracking_id for r in results] == [p.tracking_id for p in packets]
    assert await _log_length(raw_redis, topic) == 999


async def test_a_large_batch_is_stored_in_its_own_order(
    client: packetbus.Client,
    raw_redis: redis_asyncio.Redis,
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A batch bigger than one script call is written in chunks; they must land
    # in order, or subscribers would see the batch reordered. Small chunks (the
    # server runs in this process) make many of them, so a race would show.
    monkeypatch.setattr(_store, "_MAX_PACKETS_PER_SCRIPT", 7)
    sent: list[str] = []
    for _ in range(3):
        packets = [new_packet(topic) for _ in range(1000)]
        results = await client.dispatch_batch(packets)
        assert all(r.WhichOneof("outcome") == "receipt" for r in results)
        sent += [p.tracking_id for p in packets]
    entries: Any = await raw_redis.xrange(f"pb:{{{topic}}}:log")
    assert [fields[b"i"].decode() for _, fields in entries] == sent


async def test_same_packet_five_times_concurrently_stores_once_with_identical_results(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packet = new_packet(topic)
    packet.finding.claim = "revenue follows policy"
    packet.finding.confidence = 0.9

    results = await asyncio.gather(
        *(
            client.dispatch_batch([packetbus.Packet.FromString(packet.SerializeToString())])
            for _ in range(5)
        )
    )

    flat = [r for [r] in results]
    assert all(r.WhichOneof("outcome") == "receipt" for r in flat)
    assert len({r.SerializeToString(deterministic=True) for r in flat}) == 1
    assert await _log_length(raw_redis, topic) == 1


async def test_auto_batched_duplicates_in_one_batch_get_the_same_receipt(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packet = new_packet(topic)
    copies = [packetbus.Packet.FromString(packet.SerializeToString()) for _ in range(5)]

    receipts = await asyncio.gather(*(client.dispatch(p) for p in copies))

    assert len({r.cursor for r in receipts}) == 1
    assert await _log_length(raw_redis, topic) == 1


async def test_same_tracking_id_different_content_is_already_exists(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    original = new_packet(topic)
    await client.dispatch(original)

    changed = packetbus.Packet.FromString(original.SerializeToString())
    changed.origin = "someone-else"
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.dispatch(changed)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert original.tracking_id in caught.value.message

    elsewhere = packetbus.Packet.FromString(original.SerializeToString())
    elsewhere.topic = unique("other")
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.dispatch(elsewhere)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS

    assert await _log_length(raw_redis, topic) == 1
    assert await _log_length(raw_redis, elsewhere.topic) == 0


async def test_every_key_written_has_a_ttl(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str, backend: str
) -> None:
    packet = new_packet(topic, ttl_seconds=120)
    await client.dispatch(packet)

    keys = [f"pb:{{{topic}}}:log", f"pb:loc:{{{packet.tracking_id}}}"]
    # On a single Redis the idempotency record rides in the location key
    # (scripts/lib/records.lua); on a cluster it is kept under the topic.
    if backend == "cluster":
        keys.append(f"pb:{{{topic}}}:pkt:{packet.tracking_id}")
    else:
        assert not await raw_redis.exists(f"pb:{{{topic}}}:pkt:{packet.tracking_id}")
    ttls = [int(await raw_redis.pttl(k)) for k in keys]
    assert all(110_000 < t <= 120_000 for t in ttls), ttls
    # The horizon (what subscribers need to tell a gap) outlives the log by
    # the retention, the server's max TTL.
    horizon = f"pb:{{{topic}}}:horizon"
    retention_ms = 86_400_000
    assert 110_000 + retention_ms < int(await raw_redis.pttl(horizon)) <= 120_000 + retention_ms
    found = [k.decode() async for k in raw_redis.scan_iter(match=f"pb:{{{topic}}}:*")]
    # The call's sealed batch (the server's custody entries, stored once per
    # call: _batch_refs) expires with its packet.
    batches = [k for k in found if k.startswith(f"pb:{{{topic}}}:batch:")]
    assert len(batches) == 1
    assert 110_000 < int(await raw_redis.pttl(batches[0])) <= 120_000
    in_topic = [k for k in keys if k.startswith(f"pb:{{{topic}}}:")]
    assert sorted(found) == sorted([*in_topic, horizon, *batches])


async def test_get_packet_returns_what_was_stored(client: packetbus.Client, topic: str) -> None:
    packet = new_packet(topic, conversation_id="conv-1", reply_with="r-1")
    packet.task.description = "look for correlations"
    packet.task.priority = 5
    packet.task.payload.update({"quarter": "Q3", "weights": [1, 2, 3]})

    receipt = await client.dispatch(packet)
    stored = await client.get_packet(packet.tracking_id)

    assert stored.receipt == receipt
    expected = packetbus.Packet.FromString(packet.SerializeToString())
    expected.ttl_seconds = 3600  # the server's default fills an unset TTL
    assert _custody.content_message(stored.packet) == expected
    assert stored.content == _custody.content_bytes(expected)
    actions = [CustodyRecord.FromString(e.record).action for e in stored.packet.chain_of_custody]
    assert actions == ["received", "dispatched"]
    assert receipt.expires_at.ToMilliseconds() - receipt.stored_at.ToMilliseconds() == 3_600_000


async def test_get_unknown_is_not_found_and_malformed_is_invalid(
    client: packetbus.Client,
) -> None:
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.get_packet(str(uuid.uuid4()))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND

    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.get_packet("not-a-uuid")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == ["tracking_id"]


async def test_batch_limits_are_invalid_argument(client: packetbus.Client, topic: str) -> None:
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.dispatch_batch([])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.dispatch_batch([new_packet(topic) for _ in range(1001)])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0].reason == "BATCH_TOO_LARGE"


async def test_bad_bytes_are_invalid_argument_and_write_nothing(
    server: RunningServer, raw_redis: redis_asyncio.Redis
) -> None:
    before = await key_names(raw_redis)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        dispatch = channel.unary_unary("/packetbus.v1.PacketService/Dispatch")
        for garbage in (b"\xff\xff\xff\x01", b"\x0a\x05\x0a\x03abc\xff", bytes(range(256))):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await dispatch(garbage, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await new_keys(raw_redis, before) == set()


async def test_oversized_packet_is_rejected_by_size_rule(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packet = new_packet(topic)
    packet.raw.content_type = "application/octet-stream"
    packet.raw.data = b"x" * (1024 * 1024 + 1)

    [result] = await client.dispatch_batch([packet])

    error = packetbus.PacketbusError.from_status(result.error)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.reason for v in error.field_violations] == ["PACKET_TOO_LARGE"]
    assert await _log_length(raw_redis, topic) == 0


async def test_server_info_lists_schema_versions_and_limits(client: packetbus.Client) -> None:
    info = await client.server_info()
    assert list(info.supported_schema_versions) == ["1.0", "1.1"]
    assert info.limits.max_batch_packets == 1000
    assert info.limits.default_ttl_seconds == 3600
    assert json_format.MessageToDict(info)["version"] == packetbus.__version__


async def test_schema_1_1_requires_custody(client: packetbus.Client, topic: str) -> None:
    packet = new_packet(topic, schema_version="1.1")
    [result] = await client.dispatch_batch([packet])
    error = packetbus.PacketbusError.from_status(result.error)
    assert [(v.field, v.reason) for v in error.field_violations] == [
        ("chain_of_custody", "CUSTODY_REQUIRED"),
        ("ttl_seconds", "REQUIRED"),
    ]


async def test_reflection_lists_the_services(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        response = await call.read()
        call.cancel()
    names = {s.name for s in response.list_services_response.service}
    assert {"packetbus.v1.PacketService", "grpc.health.v1.Health"} <= names
