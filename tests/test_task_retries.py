"""Task calls are safe to repeat: a settlement sent again with the same fencing token and
request answers its first outcome, and a claim sent again with its request id returns
the task it claimed first (never a second one)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import task_service_pb2 as pb
from packetbus.v1 import task_service_pb2_grpc
from packetbus_server import _keys
from packetbus_server._carcel_store import CarcelStore, RequeueOutcome
from packetbus_server._hop_store import HopStore, HopWrite
from packetbus_server._task_store import TaskStore
from tests.conftest import unique, verified_actions


def _task(task_id: str) -> packetbus.Task:
    return packetbus.Task(id=task_id, description=f"do {task_id}")


@pytest.fixture
async def stub(target: str) -> AsyncIterator[task_service_pb2_grpc.TaskServiceStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield task_service_pb2_grpc.TaskServiceStub(channel)


async def test_a_completion_sent_again_answers_ok_and_completes_once(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("queue"))
    await queue.post(_task("t"), origin="planner")
    claimed = await queue.claim("w1", lease_seconds=30)
    assert claimed is not None
    await claimed.complete({"answer": 42, "list": [1, 2]}, summary="done")
    # The same completion again (a retry whose first reply was lost): OK, nothing twice.
    await claimed.complete({"list": [1, 2], "answer": 42}, summary="done")
    state = await queue.get("t")
    assert state.status == pb.TASK_STATUS_COMPLETED
    [result] = await queue.results("t")
    assert (result.completed, result.result["answer"], result.worker) == (True, 42, "w1")
    assert await verified_actions(client, state.packet) == [
        "received",
        "dispatched",
        "claimed",
        "completed",
    ]

    # Another result under the same token: refused, nothing changed.
    with pytest.raises(packetbus.PacketbusError) as other:
        await claimed.complete({"answer": 43}, summary="done")
    assert other.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert "already completed" in other.value.message
    assert "another result" in other.value.message
    assert other.value.error_info is not None
    assert other.value.error_info.reason == "TASK_SETTLED_OTHERWISE"
    # Another kind of settlement under the token that completed it: it no longer holds.
    for settle in (claimed.fail("boom"), claimed.release("later")):
        with pytest.raises(packetbus.PacketbusError) as late:
            await settle
        assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "the task was completed with it" in late.value.message
        assert late.value.error_info is not None
        assert late.value.error_info.reason == "FENCING_TOKEN_STALE"
    with pytest.raises(packetbus.PacketbusError) as beat:
        await claimed.heartbeat()
    assert beat.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert len(await queue.results("t")) == 1
    assert (await queue.get("t")).status == pb.TASK_STATUS_COMPLETED


async def test_a_fencing_token_never_issued_is_told_as_such(client: packetbus.Client) -> None:
    queue = client.task_queue(unique("queue"))
    await queue.post(_task("t"), origin="planner")
    claimed = await queue.claim("w1", lease_seconds=30)
    assert claimed is not None
    forged = pb.CompleteTaskRequest(
        queue=queue.name, task_id="t", fencing_token=claimed.fencing_token + 7
    )
    with pytest.raises(packetbus.PacketbusError) as refused:
        await queue._call(queue._stub.CompleteTask, forged, 10)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.message == (
        f"fencing token {claimed.fencing_token + 7} was never issued for task 't' "
        f"(its newest claim has token {claimed.fencing_token})"
    )
    assert refused.value.error_info is not None
    assert refused.value.error_info.reason == "FENCING_TOKEN_UNKNOWN"
    assert (await queue.get("t")).status == pb.TASK_STATUS_CLAIMED


async def test_a_failure_sent_again_answers_its_first_outcome_even_after_a_new_claim(
    client: packetbus.Client,
) -> None:
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("t"), origin="planner", max_attempts=2)
    first = await queue.claim("w1", lease_seconds=30)
    assert first is not None
    assert (await first.fail("boom")).status == pb.TASK_STATUS_QUEUED
    second = await queue.claim("w2", lease_seconds=30)
    assert second is not None
    # w1's failure again, while w2 holds the task: the first outcome, nothing changed.
    assert (await first.fail("boom")).status == pb.TASK_STATUS_QUEUED
    state = await queue.get("t")
    assert (state.status, state.worker, state.failures) == (pb.TASK_STATUS_CLAIMED, "w2", 1)
    with pytest.raises(packetbus.PacketbusError) as other:
        await first.fail("another error")
    assert other.value.code == grpc.StatusCode.ALREADY_EXISTS

    # The last failure again: the same carcel entry, once.
    final = await second.fail("boom again")
    assert final.status == pb.TASK_STATUS_CARCELED
    again = await second.fail("boom again")
    assert (again.status, again.carcel_id) == (pb.TASK_STATUS_CARCELED, final.carcel_id)
    assert [e.id async for e in client.carcel_entries(name)] == [final.carcel_id]
    assert [r.error for r in await queue.results("t")] == ["boom", "boom again"]
    assert (await queue.get("t")).failures == 2


async def test_a_release_sent_again_answers_ok(client: packetbus.Client) -> None:
    queue = client.task_queue(unique("queue"))
    await queue.post(_task("t"), origin="planner")
    claimed = await queue.claim("w1", lease_seconds=30)
    assert claimed is not None
    await claimed.release("not now")
    await claimed.release("not now")
    state = await queue.get("t")
    assert (state.status, state.failures) == (pb.TASK_STATUS_QUEUED, 0)
    with pytest.raises(packetbus.PacketbusError) as other:
        await claimed.release("another reason")
    assert other.value.code == grpc.StatusCode.ALREADY_EXISTS


async def test_a_claim_sent_again_with_its_request_id_returns_the_same_claim(
    client: packetbus.Client, stub: task_service_pb2_grpc.TaskServiceStub
) -> None:
    name = unique("queue")
    queue = client.task_queue(name)
    for task_id in ("a", "b"):
        await queue.post(_task(task_id), origin="planner")
    request = pb.ClaimTaskRequest(
        queue=name, worker="w1", lease_seconds=30, request_id=str(uuid.uuid4())
    )
    first = await stub.ClaimTask(request)
    again = await stub.ClaimTask(request)
    assert (again.task.task_id, again.task.fencing_token, again.task.claims) == (
        first.task.task_id,
        first.task.fencing_token,
        1,
    )
    assert again.task.status == pb.TASK_STATUS_CLAIMED
    # One claim made: the other task is still queued, the chain has one "claimed".
    assert [t.task_id for t in await queue.tasks(pb.TASK_STATUS_QUEUED)] == ["b"]
    assert await verified_actions(client, again.task.packet) == [
        "received",
        "dispatched",
        "claimed",
    ]

    # Another worker's request under the same id: refused, nothing claimed.
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await stub.ClaimTask(
            pb.ClaimTaskRequest(queue=name, worker="w2", request_id=request.request_id)
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert [t.task_id for t in await queue.tasks(pb.TASK_STATUS_QUEUED)] == ["b"]

    # Once that claim no longer holds (settled), the id claims anew.
    await stub.CompleteTask(
        pb.CompleteTaskRequest(
            queue=name, task_id=first.task.task_id, fencing_token=first.task.fencing_token
        )
    )
    later = await stub.ClaimTask(request)
    assert (later.task.task_id, later.task.worker) == ("b", "w1")

    for bad in ("x" * 129, "has space", "naïve"):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.ClaimTask(pb.ClaimTaskRequest(queue=name, worker="w1", request_id=bad))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_requeue_replayed_by_the_store_answers_ok(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    """The server's own retry of a requeue whose reply was lost runs the script twice,
    for the same call: the second run answers as the first did (a task's, and a group's
    packet's). Another call finds the entry gone."""
    store = CarcelStore(raw_redis, HopStore(raw_redis, retry_budget=5), retry_budget=5)
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("t"), origin="planner", max_attempts=1)
    claimed = await queue.claim("w1")
    assert claimed is not None
    final = await claimed.fail("boom")
    record = await store.get(name, final.carcel_id)
    assert record is not None
    for _ in range(2):
        result = await store.requeue_task(name, record, 0, b"", b"", "call-1")
        assert result.outcome is RequeueOutcome.OK
    other = await store.requeue_task(name, record, 0, b"", b"", "call-2")
    assert other.outcome is RequeueOutcome.GONE
    state = await queue.get("t")
    assert (state.status, state.failures) == (pb.TASK_STATUS_QUEUED, 0)
    assert [e async for e in client.carcel_entries(name)] == []

    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    packet = packetbus.Packet(
        topic=topic, origin="tester-1", speech_act=packetbus.SpeechAct.SPEECH_ACT_INFORM
    )
    await client.dispatch(packet)
    async with client.consume(topic, "g", consumer="c") as consumer:
        delivery = await anext(consumer)
        [nacked] = await delivery.nack(reason="no")
    record = await store.get(topic, nacked.carcel_id)
    assert record is not None
    cursors = [(await store.requeue(topic, record, 0, b"", b"", "call-1")) for _ in range(2)]
    assert [c.outcome for c in cursors] == [RequeueOutcome.OK] * 2
    assert cursors[0].value == cursors[1].value
    other = await store.requeue(topic, record, 0, b"", b"", "call-2")
    assert other.outcome is RequeueOutcome.GONE
    log: Any = await raw_redis.xrange(_keys.topic_log(topic))
    assert len(log) == 2  # the packet, and its one requeued copy


async def test_a_claim_or_carcel_whose_hop_was_lost_gets_it_once_from_the_next_call(
    client: packetbus.Client,
    stub: task_service_pb2_grpc.TaskServiceStub,
    raw_redis: redis_asyncio.Redis,
) -> None:
    """The store ran a claim (and a lease's carcel move) but the server lost the reply
    before signing its hop: the call sent again, or the next one, appends it, once."""
    store = TaskStore(
        raw_redis, HopStore(raw_redis, retry_budget=5), retry_budget=5, carcel_retention_ms=60_000
    )
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("t"), origin="planner", max_attempts=1)
    request_id = str(uuid.uuid4())
    made = await store.claim(name, "w1", [], 1000, request_id=request_id)
    assert not isinstance(made, str)
    assert made.record is not None
    assert not made.again
    request = pb.ClaimTaskRequest(queue=name, worker="w1", lease_seconds=1, request_id=request_id)
    for _ in range(2):
        again = await stub.ClaimTask(request)
        assert (again.task.task_id, again.task.claims) == ("t", 1)
        assert await verified_actions(client, again.task.packet) == [
            "received",
            "dispatched",
            "claimed",
        ]

    await asyncio.sleep(1.1)
    await store.expire(name)  # carceled, its hop not appended
    assert await raw_redis.smembers(_keys.task_carcel_hops(name)) == {b"t"}
    for _ in range(2):
        state = await queue.get("t")
        assert state.status == pb.TASK_STATUS_CARCELED
        assert await verified_actions(client, state.packet) == [
            "received",
            "dispatched",
            "claimed",
            "carceled",
        ]
    assert await raw_redis.exists(_keys.task_carcel_hops(name)) == 0


async def test_a_hop_appended_again_after_a_lost_reply_is_appended_once(
    raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    """The store's retry of a hop append whose reply was lost runs the script again:
    it answers "appended", not "the chain moved" (which made the caller sign the same
    hop again after itself: a claim with two "claimed" hops)."""
    hops = HopStore(raw_redis, retry_budget=5)
    tracking_id = str(uuid.uuid4())
    keep = int(time.time() * 1000) + 60_000
    write = HopWrite(tracking_id, 0, b"entry-1", b"hash-1", keep)
    assert await hops.append(topic, [write]) == [None]
    assert await hops.append(topic, [write]) == [None]
    other = HopWrite(tracking_id, 0, b"entry-2", b"hash-2", keep)
    [moved] = await hops.append(topic, [other])
    assert moved == [b"hash-1", b"entry-1"]
    assert await hops.read(topic, [tracking_id]) == [[b"entry-1"]]
