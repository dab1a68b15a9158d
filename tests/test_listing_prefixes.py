"""ListTopics and ListTaskQueues take the same prefixes, by one rule (_name_listing):
"" or the start of a topic name (queue names are topic names), at most the max
topic length, or an inbox topic's under "inbox/"; anything no name can start with
is INVALID_ARGUMENT naming prefix and the rule."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

import packetbus
from packetbus.v1 import (
    task_service_pb2,
    task_service_pb2_grpc,
    topic_service_pb2,
    topic_service_pb2_grpc,
)
from packetbus_server import Limits
from packetbus_server._fields import MAX_INBOX_TOPIC_LENGTH
from tests.conftest import new_packet, unique

MAX_TOPIC = Limits().max_topic_length  # the session server's (200)

List = Callable[[grpc.aio.Channel, str], Awaitable[list[str]]]


async def _queues(channel: grpc.aio.Channel, prefix: str) -> list[str]:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    page = await stub.ListTaskQueues(task_service_pb2.ListTaskQueuesRequest(prefix=prefix))
    return [q.queue for q in page.queues]


async def _topics(channel: grpc.aio.Channel, prefix: str) -> list[str]:
    stub = topic_service_pb2_grpc.TopicServiceStub(channel)
    page = await stub.ListTopics(topic_service_pb2.ListTopicsRequest(prefix=prefix))
    return [t.name for t in page.topics]


LISTINGS = pytest.mark.parametrize("lister", [_queues, _topics], ids=["queues", "topics"])


@LISTINGS
@pytest.mark.parametrize(
    ("prefix", "rule"),
    [
        ("jobs.*", "TOPIC_FORMAT"),
        (".jobs", "TOPIC_FORMAT"),  # no name starts with "."
        ("-", "TOPIC_FORMAT"),
        ("jobs two", "TOPIC_FORMAT"),
        ("jöbs", "TOPIC_FORMAT"),
        ("q" * (MAX_TOPIC + 1), "LENGTH"),  # longer than any name outside inbox/
        ("inbox/" + "a" * (MAX_INBOX_TOPIC_LENGTH - 5), "LENGTH"),
        ("ö" * (MAX_TOPIC // 2 + 1), "LENGTH"),  # measured in UTF-8 bytes
    ],
)
async def test_a_prefix_no_name_can_start_with_is_refused_alike(
    target: str, lister: List, prefix: str, rule: str
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await lister(channel, prefix)
    error = packetbus.PacketbusError.from_rpc_error(refused.value, changes=False)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in error.field_violations] == [("prefix", rule)]


@LISTINGS
async def test_the_longest_prefixes_a_name_can_start_with_are_taken(
    client: packetbus.Client, target: str, lister: List
) -> None:
    # A topic and a queue at the max topic length; an inbox's name longer still.
    long = unique("p") + "." + "x" * (MAX_TOPIC - 18)
    long = long[:MAX_TOPIC]
    agent = unique("agent")
    inbox = "inbox/" + agent + "x" * (MAX_INBOX_TOPIC_LENGTH - len("inbox/" + agent))
    for name in (long, inbox):
        await client.task_queue(name).post(packetbus.Task(id="t"), origin="planner")
        await client.dispatch_batch([new_packet(name)])
    async with grpc.aio.insecure_channel(target) as channel:
        assert await lister(channel, long) == [long]
        assert await lister(channel, inbox) == [inbox]
        assert await lister(channel, inbox[: MAX_TOPIC + 1]) == [inbox]
        assert await lister(channel, "") != []
