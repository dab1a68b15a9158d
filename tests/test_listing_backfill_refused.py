"""ListTopics, ListTaskQueues and a /metrics scrape when their index must be
backfilled (not known whole) and the store refuses the backfill's writes: full (OOM,
noeviction) or a read-only replica (READONLY). All are reads: each answers from what
its scan of the keyspace found, and the index stays unmarked for a later reader."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest
import redis.asyncio as redis_asyncio
from prometheus_client.parser import text_string_to_metric_families

import packetbus
from packetbus.v1 import (
    task_service_pb2,
    task_service_pb2_grpc,
    topic_service_pb2,
    topic_service_pb2_grpc,
)
from packetbus_server import RunningServer, ServerConfig, _keys, start
from tests._own_store import own_store
from tests.conftest import new_packet, unique

# The store is the test's own Valkey (its memory limit and role are changed).
pytestmark = pytest.mark.one_backend


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with own_store(
        tmp_path_factory.mktemp("backfill-refused"), "--maxmemory-policy", "noeviction"
    ) as url:
        yield url


@pytest.fixture
async def served(store: str) -> AsyncIterator[RunningServer]:
    server = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=store, metrics_listen="127.0.0.1:0")
    )
    yield server
    await server.stop(grace=0)


async def _seed(target: str, r: redis_asyncio.Redis) -> tuple[str, str]:
    """A topic and a queue in the store, both indexes as an older server left them:
    without their names and not marked whole."""
    topic, queue = unique("topic"), unique("queue")
    async with await packetbus.Client.connect(target, timeout=10) as client:
        await client.dispatch_batch([new_packet(topic)])
        await client.task_queue(queue).post(
            packetbus.Task(id="t", description="t"), origin="planner"
        )
    await r.delete(_keys.TOPICS, _keys.QUEUES)
    return topic, queue


async def _listings(target: str) -> tuple[list[str], list[str]]:
    started = time.monotonic()
    async with grpc.aio.insecure_channel(target) as channel:
        topics = await topic_service_pb2_grpc.TopicServiceStub(channel).ListTopics(
            topic_service_pb2.ListTopicsRequest(), timeout=20
        )
        queues = await task_service_pb2_grpc.TaskServiceStub(channel).ListTaskQueues(
            task_service_pb2.ListTaskQueuesRequest(), timeout=20
        )
    # Answered at once, not after a retry budget spent on the refused writes.
    assert time.monotonic() - started < 3
    return [t.name for t in topics.topics], [q.queue for q in queues.queues]


async def _scraped_queues(served: RunningServer) -> set[str]:
    """The queues a /metrics scrape counts tasks of (its store gauges read)."""
    async with httpx.AsyncClient(timeout=20) as http:
        body = (await http.get(f"http://127.0.0.1:{served.metrics_port}/metrics")).text
    assert "packetbus_store_up 1.0" in body
    return {
        s.labels["queue"]
        for family in text_string_to_metric_families(body)
        if family.name == "packetbus_task_queue_tasks"
        for s in family.samples
    }


async def test_a_full_store_lists_from_the_scan(served: RunningServer, store: str) -> None:
    target = f"127.0.0.1:{served.port}"
    r = redis_asyncio.Redis.from_url(store)
    try:
        topic, queue = await _seed(target, r)
        await r.config_set("maxmemory", "1")  # every write refused: OOM
        try:
            assert await _listings(target) == ([topic], [queue])
            assert await _scraped_queues(served) == {queue}
        finally:
            await r.config_set("maxmemory", "0")
        assert await r.exists(_keys.TOPICS, _keys.QUEUES) == 0
    finally:
        await r.aclose()


async def test_a_read_only_store_lists_from_the_scan(served: RunningServer, store: str) -> None:
    target = f"127.0.0.1:{served.port}"
    r = redis_asyncio.Redis.from_url(store)
    try:
        topic, queue = await _seed(target, r)
        # A replica of a primary that is not there: it keeps its data, serves reads
        # and refuses every write with READONLY.
        await r.replicaof("127.0.0.1", "1")
        try:
            assert await _listings(target) == ([topic], [queue])
            assert await _scraped_queues(served) == {queue}
        finally:
            await r.replicaof("NO", "ONE")
        assert await r.exists(_keys.TOPICS, _keys.QUEUES) == 0
    finally:
        await r.aclose()
