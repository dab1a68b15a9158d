"""An inbox is read only by its agent (issue 14, item 4), or by a principal the
policy lets act for that agent; anyone may send to it. With authorization off,
nothing is bound. Server and callers: tests/_binding.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import (
    consumer_group_service_pb2,
    context_service_pb2,
    packet_service_pb2,
)
from packetbus_server import RunningServer
from packetbus_server._fields import inbox_owner
from tests._binding import (
    COORDINATOR,
    PLANNER,
    POLICY,
    WORKER_1,
    WORKER_2,
    Caller,
    denied,
    first_response,
    packet_as,
    refused,
    serve_bound,
)
from tests._principals import TokenIssuer
from tests._store_keys import key_names, new_keys
from tests.conftest import unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend


@pytest.fixture(scope="module")
async def bound(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningServer, TokenIssuer]]:
    srv, issuer = await serve_bound(redis_url, tmp_path_factory.mktemp("binding"), POLICY)
    yield srv, issuer
    await srv.stop(grace=0)


@pytest.fixture
async def callers(
    bound: tuple[RunningServer, TokenIssuer],
) -> AsyncIterator[Callable[[str], Caller]]:
    srv, issuer = bound
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield lambda name: Caller(channel, issuer, name)


# -- Inboxes -------------------------------------------------------------------------------


def test_an_inbox_topic_names_its_agent() -> None:
    assert inbox_owner("inbox/worker-1") == "worker-1"
    assert inbox_owner(packetbus.inbox_topic("a/b c")) == "a/b c"
    assert inbox_owner(packetbus.inbox_topic("planner:7é")) == "planner:7é"
    assert inbox_owner("inbox/x/y") == "x/y"
    assert inbox_owner("inbox/bad:zz") == "bad:zz"
    assert inbox_owner("jobs.inbox/worker-1") is None
    assert inbox_owner("inboxes") is None


async def test_an_inbox_is_read_only_by_its_agent_who_still_gets_its_messages(
    callers: Callable[[str], Caller], raw_redis: redis_asyncio.Redis
) -> None:
    agent = unique("worker-inbox")  # matches worker-*: a coordinator may act for it
    name = f"spiffe://example.org/agent/{agent}"
    owner, intruder, planner = callers(name), callers(WORKER_2), callers(PLANNER)
    coordinator = callers(COORDINATOR)
    inbox = packetbus.inbox_topic(agent)
    group = consumer_group_service_pb2
    await owner.groups.CreateConsumerGroup(
        group.CreateConsumerGroupRequest(
            topic=inbox, name="inbox", start_position=packet_service_pb2.START_POSITION_EARLIEST
        ),
        metadata=owner.metadata,
    )
    # Anyone with topics.publish on inbox/* may send to it.
    [sent] = await planner.dispatch(packet_as(inbox, "planner"))
    assert sent.WhichOneof("outcome") == "receipt"

    owner_pulls: asyncio.Queue[group.PullRequest | None] = asyncio.Queue()
    owner_pulls.put_nowait(
        group.PullRequest(
            subscription=group.PullSubscription(topic=inbox, group="inbox", consumer=agent)
        )
    )

    async def from_queue() -> AsyncIterator[group.PullRequest]:
        while (request := await owner_pulls.get()) is not None:
            yield request

    owner_stream = owner.groups.Pull(from_queue(), metadata=owner.metadata)
    delivered = await owner_stream.read()
    [delivery] = delivered.deliveries
    assert delivery.packet.packet.tracking_id == sent.tracking_id

    async def intruder_pulls() -> AsyncIterator[group.PullRequest]:
        yield group.PullRequest(
            subscription=group.PullSubscription(topic=inbox, group="inbox", consumer="worker-2")
        )
        await asyncio.sleep(30)

    m = intruder.metadata
    ids = [delivery.delivery_id]
    attempts: dict[str, Callable[[], Awaitable[Any]]] = {
        "Subscribe": lambda: first_response(
            intruder.packets.Subscribe(
                packet_service_pb2.SubscribeRequest(
                    topic=inbox, start_position=packet_service_pb2.START_POSITION_EARLIEST
                ),
                metadata=m,
            )
        ),
        "Pull": lambda: first_response(intruder.groups.Pull(intruder_pulls(), metadata=m)),
        "Acknowledge": lambda: intruder.groups.Acknowledge(
            group.AcknowledgeRequest(topic=inbox, group="inbox", delivery_ids=ids), metadata=m
        ),
        "Nack": lambda: intruder.groups.Nack(
            group.NackRequest(topic=inbox, group="inbox", nacks=[group.Nacked(delivery_id=ids[0])]),
            metadata=m,
        ),
        "ExtendLeases": lambda: intruder.groups.ExtendLeases(
            group.ExtendLeasesRequest(topic=inbox, group="inbox", delivery_ids=ids), metadata=m
        ),
        "CreateConsumerGroup": lambda: intruder.groups.CreateConsumerGroup(
            group.CreateConsumerGroupRequest(topic=inbox, name="mine"), metadata=m
        ),
        "GetConsumerGroup": lambda: intruder.groups.GetConsumerGroup(
            group.GetConsumerGroupRequest(topic=inbox, name="inbox"), metadata=m
        ),
        "ListConsumerGroups": lambda: intruder.groups.ListConsumerGroups(
            group.ListConsumerGroupsRequest(topic=inbox), metadata=m
        ),
        "DeleteConsumerGroup": lambda: intruder.groups.DeleteConsumerGroup(
            group.DeleteConsumerGroupRequest(topic=inbox, name="inbox"), metadata=m
        ),
    }
    for rpc, attempt in attempts.items():
        before = await key_names(raw_redis)
        code, info, message = await refused(attempt())
        assert code == grpc.StatusCode.PERMISSION_DENIED, rpc
        assert info == denied(WORKER_2, "agents.act_for", agent), rpc
        assert f"is the inbox of agent {agent!r}" in message, rpc
        assert await new_keys(raw_redis, before) == set(), rpc
    code, info, _ = await refused(
        intruder.packets.GetPacket(
            packet_service_pb2.GetPacketRequest(tracking_id=sent.tracking_id), metadata=m
        )
    )
    assert (code, info) == (grpc.StatusCode.NOT_FOUND, {})

    # The agent's delivery was untouched: its own ack settles it.
    acked = await owner.groups.Acknowledge(
        group.AcknowledgeRequest(topic=inbox, group="inbox", delivery_ids=ids),
        metadata=owner.metadata,
    )
    assert [r.status.code for r in acked.results] == [0]
    got = await owner.packets.GetPacket(
        packet_service_pb2.GetPacketRequest(tracking_id=sent.tracking_id),
        metadata=owner.metadata,
    )
    assert got.packet.packet.origin == "planner"
    owner_pulls.put_nowait(None)
    owner_stream.cancel()

    # A coordinator granted agents.act_for on worker-* reads its workers' inboxes,
    # and no one else's.
    first = await first_response(
        coordinator.packets.Subscribe(
            packet_service_pb2.SubscribeRequest(
                topic=inbox, start_position=packet_service_pb2.START_POSITION_EARLIEST
            ),
            metadata=coordinator.metadata,
        )
    )
    assert [p.packet.tracking_id for p in first.packets] == [sent.tracking_id]
    code, info, _ = await refused(
        first_response(
            coordinator.packets.Subscribe(
                packet_service_pb2.SubscribeRequest(topic=packetbus.inbox_topic("planner")),
                metadata=coordinator.metadata,
            )
        )
    )
    assert (code, info) == (
        grpc.StatusCode.PERMISSION_DENIED,
        denied(COORDINATOR, "agents.act_for", "planner"),
    )


# -- Authorization off --------------------------------------------------------------------


async def test_with_authorization_off_nothing_is_bound(redis_url: str, tmp_path: Path) -> None:
    # Authenticated callers, a policy with no [authorization] section.
    srv, issuer = await serve_bound(redis_url, tmp_path, 'default = "allow"\n')
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            worker, other = Caller(channel, issuer, WORKER_1), Caller(channel, issuer, WORKER_2)
            topic = unique("anything")
            results = await worker.dispatch(packet_as(topic, "planner"), packet_as(topic, "x"))
            assert [r.WhichOneof("outcome") for r in results] == ["receipt", "receipt"]
            inbox = packetbus.inbox_topic("worker-1")
            [sent] = await worker.dispatch(packet_as(inbox, "planner"))
            first = await first_response(
                other.packets.Subscribe(
                    packet_service_pb2.SubscribeRequest(topic=inbox, after_cursor="0-0"),
                    metadata=other.metadata,
                )
            )
            assert sent.tracking_id in [p.packet.tracking_id for p in first.packets]
            await other.context.AppendMemory(
                context_service_pb2.AppendMemoryRequest(
                    agent="planner",
                    entry=context_service_pb2.LogEntry(entry_id=str(uuid.uuid4()), text="t"),
                ),
                metadata=other.metadata,
            )
    finally:
        await srv.stop(grace=0)
