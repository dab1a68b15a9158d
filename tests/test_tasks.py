"""Task queues: atomic claims, leases and fencing tokens, priority order, failures, the carcel."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import task_service_pb2 as pb
from packetbus_server import _keys
from tests.conftest import unique, verified_actions


def _task(task_id: str, *, priority: int = 0, capability: str = "") -> packetbus.Task:
    return packetbus.Task(
        id=task_id, description=f"do {task_id}", priority=priority, required_capability=capability
    )


async def test_of_20_concurrent_claimers_one_wins_and_a_stale_token_cannot_complete(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("queue"))
    posted = await queue.post(_task("t-1"), origin="planner")
    assert posted.status == pb.TASK_STATUS_QUEUED

    claims = await asyncio.gather(*(queue.claim(f"worker-{i}", lease_seconds=1) for i in range(20)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1
    first = winners[0]
    assert first.state.status == pb.TASK_STATUS_CLAIMED
    assert await queue.claim("worker-late") is None

    await asyncio.sleep(1.2)  # the lease runs out
    second = await queue.claim("worker-next", lease_seconds=30)
    assert second is not None
    assert second.task_id == "t-1"
    assert second.fencing_token > first.fencing_token
    assert second.state.claims == 2

    with pytest.raises(packetbus.PacketbusError) as stale:
        await first.complete({"answer": 1})
    assert stale.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(packetbus.PacketbusError) as stale_beat:
        await first.heartbeat()
    assert stale_beat.value.code == grpc.StatusCode.FAILED_PRECONDITION

    await second.heartbeat(lease_seconds=60)
    await second.complete({"answer": 42}, summary="done")
    state = await queue.get("t-1")
    assert state.status == pb.TASK_STATUS_COMPLETED
    [result] = await queue.results("t-1")
    assert (result.completed, result.result["answer"], result.summary) == (True, 42, "done")
    assert (result.worker, result.fencing_token) == (second.state.worker, second.fencing_token)
    assert await verified_actions(client, state.packet) == [
        "received",
        "dispatched",
        "claimed",
        "claimed",
        "completed",
    ]


async def test_claims_follow_priority_then_posting_order_and_capabilities(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("queue"))
    for task_id, priority in [("low", 1), ("high-a", 5), ("high-b", 5), ("mid", 3), ("high-c", 5)]:
        await queue.post(_task(task_id, priority=priority), origin="planner")
    await queue.post(_task("gpu-job", priority=100, capability="gpu"), origin="planner")

    order = []
    while (claimed := await queue.claim("cpu-worker")) is not None:
        order.append(claimed.task_id)
        await claimed.complete()
    assert order == ["high-a", "high-b", "high-c", "mid", "low"]
    gpu = await queue.claim("gpu-worker", capabilities=["gpu"])
    assert gpu is not None
    assert gpu.task_id == "gpu-job"

    listed = await queue.tasks(pb.TASK_STATUS_COMPLETED)
    assert [t.task_id for t in listed] == ["low", "high-a", "high-b", "mid", "high-c"]


async def test_failures_retry_then_the_carcel_and_release_requeues(
    client: packetbus.Client,
) -> None:
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("flaky"), origin="planner", max_attempts=2)

    claimed = await queue.claim("w1")
    assert claimed is not None
    await claimed.release("not now")
    claimed = await queue.claim("w1")
    assert claimed is not None
    assert (await claimed.fail("boom")).status == pb.TASK_STATUS_QUEUED
    claimed = await queue.claim("w2")
    assert claimed is not None
    final = await claimed.fail("boom again")
    assert final.status == pb.TASK_STATUS_CARCELED
    assert final.carcel_id
    assert await queue.claim("w3") is None

    state = await queue.get("flaky")
    assert (state.status, state.failures, state.claims) == (pb.TASK_STATUS_CARCELED, 2, 3)
    assert [(r.worker, r.error) for r in await queue.results("flaky")] == [
        ("w1", "boom"),
        ("w2", "boom again"),
    ]
    [entry] = [e async for e in client.carcel_entries(name)]
    assert (entry.id, entry.reason, entry.detail, entry.source) == (
        final.carcel_id,
        "max attempts",
        "boom again",
        f"queue:{name}",
    )
    assert await verified_actions(client, state.packet) == [
        "received",
        "dispatched",
        "claimed",
        "released",
        "claimed",
        "failed",
        "claimed",
        "carceled",
    ]

    # Requeued from the carcel: claimable again, its failures forgiven.
    assert await client.requeue_carcel_entry(name, final.carcel_id) == ""
    assert [e async for e in client.carcel_entries(name)] == []
    again = await queue.claim("w4")
    assert again is not None
    assert again.task_id == "flaky"
    assert again.state.failures == 0
    await again.complete()
    done = await queue.get("flaky")
    assert (await verified_actions(client, done.packet))[-3:] == [
        "requeued",
        "claimed",
        "completed",
    ]


async def test_watch_sees_each_status_change_in_order(client: packetbus.Client) -> None:
    queue = client.task_queue(unique("queue"))
    events: list[tuple[str, int, int]] = []
    watching_now = asyncio.Event()

    async def watch() -> None:
        async for event in queue.watch():
            watching_now.set()
            if event.task_id == "w-1":
                events.append((event.task_id, event.old_status, event.new_status))
                if len(events) == 3:
                    return

    watching = asyncio.create_task(watch())
    # The watch sees changes from when it opened, which no sleep can be sure of on a
    # busy machine: probe tasks go in until it sees one.
    probes = 0
    async with asyncio.timeout(20):
        while not watching_now.is_set():
            await queue.post(_task(f"probe-{probes}"), origin="planner")
            probes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watching_now.wait(), 0.1)
    await queue.post(_task("w-1", priority=10), origin="planner")  # claimed before the probes
    claimed = await queue.claim("w")
    assert claimed is not None
    await claimed.complete()
    async with asyncio.timeout(10):
        await watching
    assert events == [
        ("w-1", pb.TASK_STATUS_UNSPECIFIED, pb.TASK_STATUS_QUEUED),
        ("w-1", pb.TASK_STATUS_QUEUED, pb.TASK_STATUS_CLAIMED),
        ("w-1", pb.TASK_STATUS_CLAIMED, pb.TASK_STATUS_COMPLETED),
    ]


async def test_posting_is_idempotent_and_bad_tasks_are_refused(client: packetbus.Client) -> None:
    queue = client.task_queue(unique("queue"))
    packet = packetbus.Packet(
        origin="planner",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST"),
        task=_task("once"),
    )
    first = await queue.post(packet)
    again = await queue.post(packet)
    assert again.posted_at == first.posted_at
    with pytest.raises(packetbus.PacketbusError) as taken:
        await queue.post(_task("once"), origin="someone-else")
    assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS

    with pytest.raises(packetbus.PacketbusError) as bad:
        await queue.post(_task("", priority=5000), origin="two words", max_attempts=1000)
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in bad.value.field_violations} == {
        "packet.task.id",
        "packet.task.priority",
        "max_attempts",
        "packet.origin",
    }
    with pytest.raises(packetbus.PacketbusError) as missing:
        await queue.get("nope")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_tasks_posted_in_one_ms_list_in_posting_order_exactly(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    # Concurrent posts land many to a ms; the order Redis ran them in is the order
    # of their "posted" events. Ids that sort against that order catch a listing
    # that breaks ties by id.
    queue = client.task_queue(unique("queue"))
    ids = [f"t-{99 - i:02d}" for i in range(40)]
    await asyncio.gather(*(queue.post(_task(t), origin="planner") for t in ids))
    events: Any = await raw_redis.xrange(_keys.task_events(queue.name))
    posted = [f[b"id"].decode() for _, f in events if f[b"r"] == b"posted"]
    assert sorted(posted) == sorted(ids)
    assert [t.task_id for t in await queue.tasks()] == posted
