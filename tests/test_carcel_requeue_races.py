"""One carcel entry requeued by many callers at once: exactly one is told it requeued
it; the others get NOT_FOUND (CarcelService: "Requeuing an entry that is gone is
NOT_FOUND"), as a caller coming a moment later does. Only the server's own retries
of one call against its store are answered as that call's first run."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import carcel_service_pb2 as kpb
from packetbus.v1 import carcel_service_pb2_grpc
from packetbus.v1 import task_service_pb2 as tpb
from packetbus_server import _keys
from tests.conftest import new_packet, unique, verified_actions

CALLERS = 10


async def _requeue_at_once(target: str, topic: str, entry_id: str) -> Counter[str]:
    """Each caller on a channel of its own, all sent at once: the status codes."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(CALLERS)]
    try:

        async def one(channel: grpc.aio.Channel) -> str:
            stub = carcel_service_pb2_grpc.CarcelServiceStub(channel)
            try:
                await stub.RequeueCarcelEntry(
                    kpb.RequeueCarcelEntryRequest(topic=topic, id=entry_id), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return "OK"

        for channel in channels:
            await channel.channel_ready()
        return Counter(await asyncio.gather(*(one(c) for c in channels)))
    finally:
        for channel in channels:
            await channel.close()


async def test_a_task_entry_requeued_by_10_callers_at_once_is_requeued_by_one(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    queue = client.task_queue(unique("queue"))
    await queue.post(packetbus.Task(id="t-1"), origin="planner", max_attempts=1)
    claimed = await queue.claim("worker-1")
    assert claimed is not None
    failed = await claimed.fail("boom")
    assert failed.status == tpb.TASK_STATUS_CARCELED

    assert await _requeue_at_once(target, queue.name, failed.carcel_id) == Counter(
        {"OK": 1, "NOT_FOUND": CALLERS - 1}
    )
    state = await queue.get("t-1")
    assert state.status == tpb.TASK_STATUS_QUEUED
    assert (await verified_actions(client, state.packet)).count("requeued") == 1
    events: Any = await raw_redis.xrange(_keys.task_events(queue.name))
    assert sum(e[b"r"] == b"requeued" for _, e in events) == 1


async def test_a_group_entry_requeued_by_10_callers_at_once_is_requeued_by_one(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    topic = unique("topic")
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    [result] = await client.dispatch_batch([new_packet(topic)])
    assert result.WhichOneof("outcome") == "receipt"
    async with client.consume(topic, "g", consumer="picky") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(consumer)
        [nacked] = await delivery.nack(reason="cannot parse it")
    assert nacked.carcel_id
    logged = await raw_redis.xlen(_keys.topic_log(topic))

    assert await _requeue_at_once(target, topic, nacked.carcel_id) == Counter(
        {"OK": 1, "NOT_FOUND": CALLERS - 1}
    )
    # Back on the topic once: one new log entry, delivered once.
    assert await raw_redis.xlen(_keys.topic_log(topic)) == logged + 1
    tracking_id = delivery.packet.packet.tracking_id
    actions = await verified_actions(client, await client.get_packet(tracking_id))
    assert actions.count("requeued") == 1


@pytest.mark.parametrize("kind", ["task", "group"])
async def test_a_requeue_sent_again_after_it_succeeded_is_not_found(
    client: packetbus.Client, kind: str
) -> None:
    """The proto's rule for a lost reply, checked the plain way (one call after the
    other): the second is NOT_FOUND."""
    if kind == "task":
        queue = client.task_queue(unique("queue"))
        await queue.post(packetbus.Task(id="t-1"), origin="planner", max_attempts=1)
        claimed = await queue.claim("worker-1")
        assert claimed is not None
        topic, entry_id = queue.name, (await claimed.fail("boom")).carcel_id
    else:
        topic = unique("topic")
        await client.create_consumer_group(
            topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
        )
        await client.dispatch_batch([new_packet(topic)])
        async with client.consume(topic, "g", consumer="picky") as consumer:
            async with asyncio.timeout(10):
                delivery = await anext(consumer)
            [nacked] = await delivery.nack(reason="no")
        entry_id = nacked.carcel_id
    await client.requeue_carcel_entry(topic, entry_id)
    with pytest.raises(packetbus.PacketbusError) as again:
        await client.requeue_carcel_entry(topic, entry_id)
    assert again.value.code == grpc.StatusCode.NOT_FOUND
