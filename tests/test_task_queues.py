"""TaskService.ListTaskQueues: the task queues with their tasks counted by status and
priority, paged in name order, found from the queue index (backfilled when it is not
known whole), on every backend (a Redis Cluster too)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import task_service_pb2 as pb
from packetbus.v1 import task_service_pb2_grpc
from packetbus_server import Limits, ServerConfig, _keys, start
from packetbus_server._fields import MAX_INBOX_TOPIC_LENGTH
from tests.conftest import unique

Q = pb.TASK_STATUS_QUEUED
C = pb.TASK_STATUS_CLAIMED
D = pb.TASK_STATUS_COMPLETED
X = pb.TASK_STATUS_CARCELED


def _task(task_id: str, priority: int = 0) -> packetbus.Task:
    return packetbus.Task(id=task_id, description=task_id, priority=priority)


def _counts(summary: pb.TaskQueueSummary) -> list[tuple[int, int, int]]:
    return [(c.status, c.priority, c.tasks) for c in summary.counts]


async def _listed(client: packetbus.Client, prefix: str, page_size: int = 0) -> list[str]:
    return [s.queue async for s in client.list_task_queues(prefix, page_size=page_size)]


async def _raw(target: str, request: pb.ListTaskQueuesRequest) -> pb.ListTaskQueuesResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        response: pb.ListTaskQueuesResponse = await stub.ListTaskQueues(request, timeout=10)
        return response


async def test_a_queue_is_counted_by_status_and_priority_as_its_tasks_show(
    client: packetbus.Client,
) -> None:
    prefix = unique("counted") + "."
    queue = client.task_queue(prefix + "jobs")
    for task_id, priority in (("a", 5), ("b", 5), ("c", 1), ("d", -3), ("e", 1), ("f", 0)):
        await queue.post(_task(task_id, priority), origin="planner")
    await queue.post(_task("g", 7), origin="planner", max_attempts=1)
    # Claims go highest priority first: g (7), then a and b (5).
    last_try = await queue.claim("w1", lease_seconds=60)
    assert last_try is not None
    assert last_try.task_id == "g"
    await last_try.fail("broke")  # its only attempt: carceled
    done = await queue.claim("w1", lease_seconds=60)
    assert done is not None
    assert done.task_id == "a"
    await done.complete({"ok": True})
    held = await queue.claim("w2", lease_seconds=60)
    assert held is not None
    assert held.task_id == "b"
    ran_out = await queue.claim("w3", lease_seconds=1)
    assert ran_out is not None
    assert ran_out.task_id == "c"

    [summary] = [s async for s in client.list_task_queues(prefix)]
    assert (summary.queue, summary.tasks, summary.unclassified) == (prefix + "jobs", 7, 0)
    # By status, then priority highest first; c counted claimed while its lease holds.
    assert _counts(summary) == [
        (Q, 1, 1),
        (Q, 0, 1),
        (Q, -3, 1),
        (C, 5, 1),
        (C, 1, 1),
        (D, 5, 1),
        (X, 7, 1),
    ]

    await asyncio.sleep(1.2)  # c's lease runs out: shown queued, as GetTask shows it
    [after] = [s async for s in client.list_task_queues(prefix)]
    assert (await queue.get("c")).status == Q
    assert _counts(after) == [(Q, 1, 2), (Q, 0, 1), (Q, -3, 1), (C, 5, 1), (D, 5, 1), (X, 7, 1)]


async def test_pages_follow_name_order_within_the_prefix(
    client: packetbus.Client, target: str
) -> None:
    prefix = unique("paged") + "."
    names = [prefix + n for n in ("e", "a", "d", "b", "c")]
    for name in names:
        await client.task_queue(name).post(_task("t"), origin="planner")
    await client.task_queue(unique("paged") + ".other").post(_task("t"), origin="planner")

    first = await _raw(target, pb.ListTaskQueuesRequest(prefix=prefix, page_size=2))
    assert [s.queue for s in first.queues] == sorted(names)[:2]
    assert first.next_page_token
    second = await _raw(
        target,
        pb.ListTaskQueuesRequest(prefix=prefix, page_size=2, page_token=first.next_page_token),
    )
    assert [s.queue for s in second.queues] == sorted(names)[2:4]
    third = await _raw(
        target,
        pb.ListTaskQueuesRequest(prefix=prefix, page_size=2, page_token=second.next_page_token),
    )
    assert [s.queue for s in third.queues] == sorted(names)[4:]
    assert third.next_page_token == ""
    assert not third.index_truncated
    # The client pages on its own, the same order.
    assert await _listed(client, prefix, page_size=2) == sorted(names)
    assert await _listed(client, prefix) == sorted(names)
    # Another prefix's token is refused, not used for a wrong page.
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await _raw(
            target, pb.ListTaskQueuesRequest(prefix=prefix + "a", page_token=first.next_page_token)
        )
    refused = packetbus.PacketbusError.from_rpc_error(wrong.value, changes=False)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in refused.field_violations] == [("page_token", "PAGE_TOKEN")]


async def test_a_queue_named_at_the_inbox_length_limit_is_listed_by_its_whole_name(
    client: packetbus.Client, target: str
) -> None:
    # An inbox queue's name may be longer than max_topic_length (as an inbox topic's
    # may): a prefix that long, the queue's own name, lists it rather than being
    # refused LENGTH.
    agent = unique("agent")
    name = "inbox/" + agent + "x" * (MAX_INBOX_TOPIC_LENGTH - len("inbox/" + agent))
    assert len(name) == MAX_INBOX_TOPIC_LENGTH
    await client.task_queue(name).post(_task("t"), origin="planner")
    for prefix in (name, name[:201], name[:200]):
        listed = await _raw(target, pb.ListTaskQueuesRequest(prefix=prefix))
        assert [s.queue for s in listed.queues] == [name]
        assert listed.next_page_token == ""


@pytest.mark.parametrize(
    ("request_", "field", "rule"),
    [
        (pb.ListTaskQueuesRequest(page_size=1001), "page_size", "RANGE"),
        # Longer than any queue name may be (an inbox's: MAX_INBOX_TOPIC_LENGTH).
        (pb.ListTaskQueuesRequest(prefix="q" * (MAX_INBOX_TOPIC_LENGTH + 1)), "prefix", "LENGTH"),
        (
            pb.ListTaskQueuesRequest(page_token="v1.task_queues.YQ.000000000000000000000000"),
            "page_token",
            "PAGE_TOKEN",
        ),
        (pb.ListTaskQueuesRequest(page_token="not a token"), "page_token", "PAGE_TOKEN"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    target: str, request_: pb.ListTaskQueuesRequest, field: str, rule: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _raw(target, request_)
    refused = packetbus.PacketbusError.from_rpc_error(failed.value, changes=False)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in refused.field_violations] == [(field, rule)]


async def test_a_queue_whose_tasks_are_gone_is_left_out(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    prefix = unique("gone") + "."
    for name in ("kept", "expired"):
        await client.task_queue(prefix + name).post(_task("t"), origin="planner")
    assert await _listed(client, prefix) == [prefix + "expired", prefix + "kept"]
    # As when its tasks expired: the index still names it, its task index is gone.
    assert await raw_redis.delete(_keys.task_index(prefix + "expired")) == 1
    assert await raw_redis.zscore(_keys.QUEUES, prefix + "expired") is not None
    assert await _listed(client, prefix) == [prefix + "kept"]


async def test_an_index_not_known_whole_is_backfilled_from_the_keyspace(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    prefix = unique("backfill") + "."
    await client.task_queue(prefix + "q").post(_task("t"), origin="planner")
    # As an index an older server wrote: without the queue, and not marked whole.
    await raw_redis.zrem(_keys.QUEUES, prefix + "q", _keys.INDEX_COMPLETE)
    assert await _listed(client, prefix) == [prefix + "q"]
    # Found by the SCAN, the queue and the mark are in the index for the next reader.
    assert await raw_redis.zscore(_keys.QUEUES, prefix + "q") == 0
    assert await raw_redis.zscore(_keys.QUEUES, _keys.INDEX_COMPLETE) == float("-inf")


async def test_a_page_ends_at_the_reply_budget_with_one_queue_at_least(redis_url: str) -> None:
    # A budget of 1 byte: every page holds the one queue that always goes.
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=Limits(reply_budget_bytes=1))
    )
    try:
        target = f"127.0.0.1:{srv.port}"
        prefix = unique("budget") + "."
        async with await packetbus.Client.connect(target, timeout=10) as client:
            for name in ("a", "b", "c"):
                await client.task_queue(prefix + name).post(_task("t"), origin="planner")
        pages: list[list[str]] = []
        token = ""
        while True:
            page = await _raw(target, pb.ListTaskQueuesRequest(prefix=prefix, page_token=token))
            pages.append([s.queue for s in page.queues])
            token = page.next_page_token
            if not token:
                break
        assert pages == [[prefix + "a"], [prefix + "b"], [prefix + "c"]]
    finally:
        await srv.stop(grace=0)
