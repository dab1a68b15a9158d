"""The stored-once form of ingest custody (_batch_refs): a call's sealed batch kept
once per topic, log entries that refer to it, readers that put the entries back."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus import AgentIdentity
from packetbus.v1 import custody_pb2
from packetbus_server import _batch_refs, _keys, _scripts
from packetbus_server._custodian import chain_end
from packetbus_server._packet_writes import Outcome, PacketWrite, dispatch_argument
from packetbus_server._sealed_batch import SealedBatch
from packetbus_server._store import PacketStore
from tests.conftest import new_packet, unique


async def _batch_keys(raw: redis_asyncio.Redis, topic: str) -> list[bytes]:
    return [bytes(k) async for k in raw.scan_iter(match=_keys.ingest_batch(topic, "*"))]


async def test_entries_refer_to_one_batch_and_chains_come_back_whole(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packets = [new_packet(topic) for _ in range(3)]
    await client.dispatch_batch(packets)
    [batch] = await _batch_keys(raw_redis, topic)
    entries: Any = await raw_redis.xrange(f"pb:{{{topic}}}:log")
    assert [fields[b"b"].split(b" ")[1] for _, fields in entries] == [b"0", b"2", b"4"]
    assert {fields[b"b"].split(b" ")[0] for _, fields in entries} == {batch.split(b":")[-1]}
    for packet in packets:
        result = await client.verify_custody(packet.tracking_id)
        assert result.verified
        actions = [e.action for e in result.entries]
        assert actions == ["received", "dispatched"]


async def test_a_replayed_dispatch_stores_nothing_twice(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packets = [new_packet(topic) for _ in range(2)]
    await client.dispatch_batch(packets)
    before = await _batch_keys(raw_redis, topic)
    assert len(before) == 1
    await client.dispatch_batch(packets)  # every packet a duplicate: sealed again, not stored
    assert await _batch_keys(raw_redis, topic) == before
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 2


async def test_a_tampered_batch_fails_verification(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packet = new_packet(topic)
    await client.dispatch(packet)
    [key] = await _batch_keys(raw_redis, topic)
    original: Any = await raw_redis.get(key)
    stored = bytearray(original)
    stored[-1] ^= 1  # a bit of the last leaf hash: the Merkle root no longer matches
    await raw_redis.set(key, bytes(stored), keepttl=True)
    result = await client.verify_custody(packet.tracking_id)
    assert not result.verified


@pytest.mark.own_store
async def test_memory_per_packet_is_under_800_bytes(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    # ~0.5 KB packets (issue 16's shape, bench/store_memory.py) in calls of 100:
    # used_memory's growth per packet, log entry, idempotency record, location
    # key and the call's batch included. Full entries took ~2,150 B on Valkey 9,
    # stored once per call ~850-900 B here; with the idempotency record riding in
    # the location key (scripts/lib/records.lua) ~680-750 B. The store is shared
    # with other tests (keys expiring, a keyspace table doubling now and then):
    # the best of three rounds counts.
    body = "x" * 250  # within the conversation id limit
    rounds = []
    for round_ in range(3):
        on = f"{topic}-{round_}"
        await client.dispatch(new_packet(on))  # the log stream's own overhead
        before = int((await raw_redis.info("memory"))["used_memory"])
        n = 1_000
        for _ in range(0, n, 100):
            await client.dispatch_batch([new_packet(on, conversation_id=body) for _ in range(100)])
        after = int((await raw_redis.info("memory"))["used_memory"])
        rounds.append((after - before) / n)
    assert min(rounds) <= 800, rounds


async def test_a_carcel_copy_and_its_requeue_keep_the_batch_alive(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    packet = new_packet(topic, ttl_seconds=30)
    await client.dispatch(packet)
    [key] = await _batch_keys(raw_redis, topic)
    assert 0 < int(await raw_redis.pttl(key)) <= 30_000
    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(consumer)
            [result] = await delivery.nack(reason="no")
    assert result.carcel_id
    # The carcel keeps the packet for the carcel retention (7 days), so its batch
    # (the packet's "received" and "dispatched" entries) lives as long.
    assert int(await raw_redis.pttl(key)) > 7 * 86_400_000 - 60_000
    [entry] = [e async for e in client.carcel_entries(topic)]
    assert [
        custody_pb2.CustodyRecord.FromString(e.record).action
        for e in entry.packet.packet.chain_of_custody
    ][:2] == ["received", "dispatched"]
    await client.requeue_carcel_entry(topic, result.carcel_id)
    requeued: Any = await raw_redis.xrange(f"pb:{{{topic}}}:log", count=10)
    assert requeued[-1][1][b"b"] == requeued[0][1][b"b"]
    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(10):
            again = await anext(consumer)
    assert again.packet.packet.tracking_id == packet.tracking_id
    assert (await client.verify_custody(packet.tracking_id)).verified


async def test_a_reader_keeps_a_bounded_number_of_batches(
    raw_redis: redis_asyncio.Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_batch_refs, "_CACHED_LEAVES", 10)
    expander = _batch_refs.Expander(raw_redis)
    for n in range(5):
        batch = SealedBatch(b"s" * 64, b"key", b"server", 1, b"", bytes(32 * 4))
        await raw_redis.set(_keys.ingest_batch(topic, f"b{n}"), batch.encode(), px=60_000)
        [payload] = await expander.expand(topic, [(b"", 0, b"tid", f"b{n} 0".encode())])
        assert len(payload) > 0  # the two entries were put back
    # 4 leaves each: two batches fit in 10 leaves, the oldest went first.
    assert list(expander._batches) == [(topic, "b3"), (topic, "b4")]


async def test_concurrent_reads_of_one_batch_cache_it_once(
    raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    expander = _batch_refs.Expander(raw_redis)
    batch = SealedBatch(b"s" * 64, b"key", b"server", 1, b"", bytes(32 * 4))
    await raw_redis.set(_keys.ingest_batch(topic, "b0"), batch.encode(), px=60_000)
    item = (b"", 0, b"tid", b"b0 0")
    # Both miss the cache and read the batch at once: it is counted once.
    await asyncio.gather(*(expander.expand(topic, [item]) for _ in range(3)))
    assert list(expander._batches) == [(topic, "b0")]
    assert expander._leaves == 4


async def test_expansion_knows_the_chain_end_the_delivery_path_would_parse(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    # The group delivery path signs each packet's next hop from what expanding it
    # learnt (`Known`) instead of parsing its chain: it must be what parsing gives,
    # with and without a client's own chain before the server's entries.
    agent = AgentIdentity.generate(unique("agent"))
    await client.register_identity(agent)
    async with await packetbus.Client.connect(
        target, config=packetbus.ClientConfig(identity=agent)
    ) as signed_client:
        signed = []
        for _ in range(3):
            packet = new_packet(topic)
            packet.origin = agent.agent_id
            del packet.chain_of_custody[:]
            signed.append(packet)
        await signed_client.dispatch_batch(signed)
    await client.dispatch_batch([new_packet(topic) for _ in range(4)])
    entries: Any = await raw_redis.xrange(f"pb:{{{topic}}}:log")
    items = [(f[b"p"], int(f[b"n"]), f[b"i"], f[b"b"]) for _, f in entries]
    expanded = await _batch_refs.Expander(raw_redis).expand_known(topic, items)
    assert len(expanded) == 7
    for (payload, content_length, _, _), (full, known) in zip(items, expanded, strict=True):
        assert known is not None
        end = chain_end(full, content_length, [])
        assert (known.ingest_entries, known.last_hash) == (end.ingest_entries, end.last_hash)
        assert known.content_digest == hashlib.sha256(payload[:content_length]).digest()
        # The settle path's chain_end from what was learnt, with hops after it or not.
        learnt = (known.ingest_entries, known.last_hash)
        assert chain_end(full, content_length, [], learnt) == end
        hop = custody_pb2.CustodyEntry(record=b"a hop").SerializeToString()
        assert chain_end(full, content_length, [hop], learnt) == chain_end(
            full, content_length, [hop]
        )
    assert [k.ingest_entries for _, k in expanded if k] == [3, 3, 3, 2, 2, 2, 2]


# Rewrites the log with entry ARGV[1]'s batch reference replaced by ARGV[2] (a
# stream id cannot be added again, so every entry is added anew, same ids).
_REWRITE_REF = """
local ttl = redis.call('PTTL', KEYS[1])
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
redis.call('DEL', KEYS[1])
for _, e in ipairs(entries) do
  local f = e[2]
  if e[1] == ARGV[1] then
    for i = 1, #f, 2 do if f[i] == 'b' then f[i + 1] = ARGV[2] end end
  end
  redis.call('XADD', KEYS[1], e[1], unpack(f))
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
"""


@pytest.mark.parametrize("ref", [b"nospace", b"<id> leaf", b"\xff\xfe 0", b" 0", b"<id> -1"])
async def test_a_corrupted_batch_reference_reads_as_a_batch_gone(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str, ref: bytes
) -> None:
    """Every reader (GetPacket, VerifyCustody, Subscribe, a group's Pull, the carcel
    and its requeue) hands out the packet with a chain that fails verification,
    never UNKNOWN/INTERNAL from a reference that does not parse."""
    packet = new_packet(topic, ttl_seconds=60)
    await client.dispatch(packet)
    log = f"pb:{{{topic}}}:log"
    entries: Any = await raw_redis.xrange(log)
    [(cursor, fields)] = entries
    ident: bytes = fields[b"b"].split(b" ")[0]
    await raw_redis.eval(_REWRITE_REF, 1, log, cursor, ref.replace(b"<id>", ident))

    stored = await client.get_packet(packet.tracking_id)
    assert stored.packet.tracking_id == packet.tracking_id
    assert not stored.packet.chain_of_custody  # the server's entries cannot come back
    assert not (await client.verify_custody(packet.tracking_id)).verified
    async with client.subscribe(topic, after="0-0") as subscription:
        async with asyncio.timeout(10):
            seen = await anext(aiter(subscription))
    assert seen.packet.tracking_id == packet.tracking_id

    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(consumer)
            [result] = await delivery.nack(reason="no")
    assert delivery.packet.packet.tracking_id == packet.tracking_id
    assert result.carcel_id
    await client.requeue_carcel_entry(topic, result.carcel_id)
    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(10):
            again = await anext(consumer)
    assert again.packet.packet.tracking_id == packet.tracking_id


async def test_a_batch_lasts_as_long_as_the_newest_packet_of_any_chunk(
    raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    # One call's packets may reach dispatch.lua in several chunks: the first
    # stores the batch with its packets' expiry, a later one only extends it.
    ident = "00112233aabbccdd"
    batch_key = _keys.ingest_batch(topic, ident)

    async def chunk(ttl_ms: int, leaf: int) -> int:
        tid = str(uuid.uuid4())
        write = PacketWrite(tid, topic, "ab" * 32, ttl_ms, b"content", 7)
        keys = [
            _keys.topic_log(topic),
            _keys.topic_groups(topic),
            _keys.topic_horizon(topic),
            batch_key,
            _keys.packet_record(topic, tid),
        ]
        args = [3_600_000, 1, topic, b"batch", ident, b"%08d" % leaf, dispatch_argument(write)]
        [[status, _, expiry]] = await _scripts.DISPATCH.run(raw_redis, keys, args)
        assert status == b"new"
        return int(expiry)

    first = await chunk(60_000, 0)
    assert await raw_redis.pexpiretime(batch_key) == first
    later = await chunk(120_000, 2)
    assert await raw_redis.pexpiretime(batch_key) == later
    await chunk(30_000, 4)  # never shortened
    assert await raw_redis.pexpiretime(batch_key) == later
    assert await raw_redis.get(batch_key) == b"batch"


async def test_a_written_batch_is_read_back_from_memory_and_a_lookup_from_the_store(
    raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    # Issue 16: at low load every Dispatch is its own batch, so the subscriber or
    # group it wakes would read that batch back each time; the store that wrote it
    # keeps it instead. A single-packet lookup (GetPacket, VerifyCustody) still
    # reads the batch as stored. Shown by removing the batch after the write.
    store = PacketStore(raw_redis, retention_ms=3_600_000, retry_budget=5)
    batch = SealedBatch(b"s" * 64, b"key", b"server", 1, b"", bytes(32 * 4))
    ident, tid = "00112233aabbccdd", str(uuid.uuid4())
    write = PacketWrite(
        tid, topic, "ab" * 32, 60_000, b"content", 7, batch_id=ident, batch=batch.encode()
    )
    [result] = await store.write([write])
    assert result.outcome is Outcome.STORED
    assert await raw_redis.delete(_keys.ingest_batch(topic, ident)) == 1

    page = await store.follow(topic, "0-0", count=10)
    [entry] = page.entries
    rebuilt = b"content" + batch.chain(
        0, content=b"content", tracking_id=tid.encode(), sequence=0, previous_hash=b""
    )
    assert entry.payload == rebuilt
    found = await store.get(tid)
    assert found is not None
    assert found.payload == b"content"  # batch gone: no server entries, fails verification


async def test_a_write_that_stores_nothing_keeps_no_batch(
    raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    store = PacketStore(raw_redis, retention_ms=3_600_000, retry_budget=5)
    batch = SealedBatch(b"s" * 64, b"key", b"server", 1, b"", bytes(32 * 4))
    tid = str(uuid.uuid4())
    first = PacketWrite(tid, topic, "ab" * 32, 60_000, b"content", 7, batch_id="aa", batch=b"x")
    await store.write([first])  # a batch that does not decode: not kept
    again = PacketWrite(
        tid, topic, "ab" * 32, 60_000, b"content", 7, batch_id="bb", batch=batch.encode()
    )
    [result] = await store.write([again])
    assert result.outcome is Outcome.DUPLICATE
    assert list(store.expander._batches) == []
