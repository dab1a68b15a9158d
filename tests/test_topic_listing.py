"""ListTopics (TopicService) and a consumer group's lag, on every backend (a Redis
Cluster included): the topics under a test's own prefix, their state as the store
holds it, pages cut by count, tokens bound to their prefix, bad input refused, the
index backfilled when it is not known whole, and the CLI's `topic list`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import topic_service_pb2, topic_service_pb2_grpc
from packetbus_server import Limits, ServerConfig, start
from tests.conftest import new_packet, run_cli, unique


async def dispatch(client: packetbus.Client, topic: str, n: int) -> list[str]:
    results = await client.dispatch_batch([new_packet(topic) for _ in range(n)])
    assert all(r.WhichOneof("outcome") == "receipt" for r in results)
    return [r.receipt.cursor for r in results]


async def listed(client: packetbus.Client, prefix: str, **options: Any) -> list[Any]:
    return [t async for t in client.list_topics(prefix, **options)]


async def carcel_one(client: packetbus.Client, topic: str) -> None:
    """One packet of `topic` in its carcel (nacked once in a group of one attempt)."""
    await client.create_consumer_group(
        topic, "poison", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    async with client.consume(topic, "poison", consumer="c") as consumer:
        async with asyncio.timeout(20):
            delivery = await anext(consumer)
            [result] = await delivery.nack(reason="cannot parse it")
    assert result.carcel_id


async def test_a_listing_gives_each_topics_log_retention_groups_and_carcel(
    client: packetbus.Client,
) -> None:
    prefix = unique("list") + "."
    plain, kept, poisoned = prefix + "a", prefix + "b", prefix + "c"
    cursors = await dispatch(client, plain, 3)
    await client.set_topic_retention(kept, max_packets=10, max_age_seconds=60, work_queue=True)
    await client.create_consumer_group(kept, "workers")
    await client.create_consumer_group(kept, "auditors")
    await dispatch(client, poisoned, 1)
    await carcel_one(client, poisoned)

    topics = await listed(client, prefix)

    assert [t.name for t in topics] == [plain, kept, poisoned]
    a, b, c = topics
    assert (a.packets, a.first_cursor, a.last_cursor) == (3, cursors[0], cursors[-1])
    assert (a.consumer_groups, a.carcel_entries) == (0, 0)
    assert a.retention == topic_service_pb2.TopicRetention()
    assert (b.packets, b.first_cursor, b.last_cursor, b.consumer_groups) == (0, "", "", 2)
    assert b.retention == topic_service_pb2.TopicRetention(
        max_age_seconds=60,
        max_packets=10,
        policy=topic_service_pb2.RETENTION_POLICY_WORK_QUEUE,
    )
    assert (c.consumer_groups, c.carcel_entries) == (1, 1)
    # A prefix is a prefix of names, not a pattern: "<prefix>a" alone.
    assert [t.name for t in await listed(client, plain)] == [plain]


async def test_pages_are_cut_by_count_and_a_token_serves_only_its_prefix(
    client: packetbus.Client, target: str
) -> None:
    prefix = unique("pages") + "."
    names = [f"{prefix}{i}" for i in range(5)]
    for name in names:
        await dispatch(client, name, 1)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = topic_service_pb2_grpc.TopicServiceStub(channel)
        seen: list[list[str]] = []
        token = ""
        while True:
            page = await stub.ListTopics(
                topic_service_pb2.ListTopicsRequest(prefix=prefix, page_size=2, page_token=token)
            )
            seen.append([t.name for t in page.topics])
            token = page.next_page_token
            if not token:
                break
        assert seen == [names[0:2], names[2:4], names[4:5]]

        first = await stub.ListTopics(
            topic_service_pb2.ListTopicsRequest(prefix=prefix, page_size=2)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListTopics(
                topic_service_pb2.ListTopicsRequest(
                    prefix=prefix + "0", page_token=first.next_page_token
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The client's iterator reads every page.
    assert [t.name for t in await listed(client, prefix, page_size=2)] == names


@pytest.mark.parametrize(
    ("options", "field", "rule"),
    [
        ({"page_size": 1001}, "page_size", "RANGE"),
        ({"prefix": "jobs.*"}, "prefix", "TOPIC_FORMAT"),
        ({"prefix": "x" * 5000}, "prefix", "LENGTH"),
        ({"page_token": "v1.topics.bm90.000000000000000000000000"}, "page_token", "PAGE_TOKEN"),
    ],
)
async def test_bad_listings_are_refused_naming_the_field(
    target: str, options: dict[str, Any], field: str, rule: str
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = topic_service_pb2_grpc.TopicServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListTopics(topic_service_pb2.ListTopicsRequest(**options))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = packetbus.PacketbusError.from_rpc_error(refused.value, changes=False)
    assert [(v.field, v.reason) for v in error.field_violations] == [(field, rule)]


async def test_an_index_not_known_whole_is_backfilled_from_the_keyspace(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    prefix = unique("backfill") + "."
    topic = prefix + "t"
    await dispatch(client, topic, 2)
    # As a store an older server wrote: the topic not indexed, the index not whole.
    await raw_redis.zrem("pb:topics", topic, "\x00complete")

    [found] = await listed(client, prefix)

    assert (found.name, found.packets) == (topic, 2)
    assert await raw_redis.zscore("pb:topics", "\x00complete") == float("-inf")
    assert await raw_redis.zscore("pb:topics", topic) is not None


async def test_a_group_reports_its_lag(client: packetbus.Client, topic: str) -> None:
    await dispatch(client, topic, 3)
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    before = await client.get_consumer_group(topic, "g")
    assert before.HasField("lag")
    assert before.lag == 3

    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(20):
            deliveries = [await anext(consumer) for _ in range(3)]
        await consumer.ack(*deliveries)

    after = await client.get_consumer_group(topic, "g")
    assert (after.HasField("lag"), after.lag, after.outstanding) == (True, 0, 0)
    assert after.last_delivered_cursor == deliveries[-1].packet.receipt.cursor


async def test_the_cli_lists_topics_as_json_lines(client: packetbus.Client, target: str) -> None:
    prefix = unique("cli") + "."
    cursors = await dispatch(client, prefix + "x", 2)
    result = await asyncio.to_thread(
        run_cli, "--target", target, "topic", "list", "--prefix", prefix
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {
            "name": prefix + "x",
            "packets": "2",
            "firstCursor": cursors[0],
            "lastCursor": cursors[1],
            "retention": {},
        }
    ]


async def test_names_left_in_the_index_after_their_keys_went_bound_a_pages_work(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    prefix = unique("ghosts") + "."
    real = prefix + "z"
    await dispatch(client, real, 1)
    # Six names whose keys are all gone (the index keeps a name until it expires).
    await raw_redis.zadd("pb:topics", {f"{prefix}a{i}": 1 for i in range(6)})
    async with grpc.aio.insecure_channel(target) as channel:
        stub = topic_service_pb2_grpc.TopicServiceStub(channel)
        request = topic_service_pb2.ListTopicsRequest(prefix=prefix, page_size=1)
        first = await stub.ListTopics(request)
        # One topic asked for: at most four scripts run, all on ghosts; the page
        # ends empty, its token after the last name read.
        assert list(first.topics) == []
        assert first.next_page_token
        request.page_token = first.next_page_token
        second = await stub.ListTopics(request)
    assert [t.name for t in second.topics] == [real]
    assert second.next_page_token == ""


async def test_a_page_ends_at_the_reply_budget(redis_url: str) -> None:
    prefix = unique("budget") + "."
    names = [prefix + "t" * 150 + str(i) for i in range(4)]
    # Room for about two summaries of ~200 bytes each.
    limits = Limits(reply_budget_bytes=450)
    server = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits))
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{server.port}") as bus:
            for name in names:
                await dispatch(bus, name, 1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = topic_service_pb2_grpc.TopicServiceStub(channel)
                page = await stub.ListTopics(topic_service_pb2.ListTopicsRequest(prefix=prefix))
            assert [t.name for t in page.topics] == names[:2]
            assert sum(t.ByteSize() for t in page.topics) <= 450
            assert page.next_page_token
            assert [t.name async for t in bus.list_topics(prefix)] == names
    finally:
        await server.stop(grace=0)


async def test_the_sync_client_lists_topics(client: packetbus.Client, target: str) -> None:
    prefix = unique("sync") + "."
    await dispatch(client, prefix + "one", 1)

    def blocking() -> list[str]:
        with packetbus.SyncClient.connect(target) as bus:
            return [t.name for t in bus.list_topics(prefix, timeout=5)]

    assert await asyncio.to_thread(blocking) == [prefix + "one"]
