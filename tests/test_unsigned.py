"""A server started with custody signing off (``--no-custody-signing``) still does its job.

The flag exists to measure what signing costs, so everything but the signatures must
behave as on a signing server: packets are stored, delivered, settled and claimed, with
no custody entries beyond what the sender put in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import packetbus
from packetbus.v1 import task_service_pb2 as pb
from packetbus_server import ServerConfig, start
from tests.conftest import new_packet, unique


@pytest.fixture
async def unsigned(redis_url: str) -> AsyncIterator[packetbus.Client]:
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, custody_signing=False)
    )
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as c:
            yield c
    finally:
        await srv.stop(grace=0)


async def test_a_group_gets_every_packet_once_and_a_nack_comes_back(
    unsigned: packetbus.Client,
) -> None:
    topic = unique("unsigned")
    await unsigned.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    packets = [new_packet(topic) for _ in range(300)]
    for offset in range(0, len(packets), 200):
        results = await unsigned.dispatch_batch(packets[offset : offset + 200])
        assert [r.WhichOneof("outcome") for r in results] == ["receipt"] * len(results)
    sent = {p.tracking_id for p in packets}

    seen: list[str] = []
    nacked: str | None = None
    async with unsigned.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(20):
            async for delivery in consumer:
                tracking_id = delivery.packet.packet.tracking_id
                assert len(delivery.packet.packet.chain_of_custody) == 0
                if nacked is None:
                    nacked = tracking_id
                    [result] = await delivery.nack()
                    assert not result.carcel_id
                    continue
                if tracking_id == nacked:
                    assert delivery.delivery_count == 2
                else:
                    assert delivery.delivery_count == 1
                seen.append(tracking_id)
                await delivery.ack()
                if len(seen) == len(sent):
                    break

    assert sorted(seen) == sorted(sent)
    group = await unsigned.get_consumer_group(topic, "g")
    assert group.outstanding == 0
    stored = await unsigned.get_packet(packets[0].tracking_id)
    assert len(stored.packet.chain_of_custody) == 0


async def test_a_task_is_claimed_and_completed(unsigned: packetbus.Client) -> None:
    queue = unsigned.task_queue(unique("queue"))
    await queue.post(packetbus.Task(id="t-1", description="do it"), origin="planner")
    claimed = await queue.claim("worker", lease_seconds=30)
    assert claimed is not None
    assert claimed.state.status == pb.TASK_STATUS_CLAIMED
    await claimed.complete({"answer": 42})
    assert (await queue.get("t-1")).status == pb.TASK_STATUS_COMPLETED
