"""Task attempts counted exactly: a lease that runs out is a failed attempt (poison tasks
end in the carcel), and consumer groups' carcel entries count the deliveries made."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import packetbus
from packetbus.v1 import custody_pb2
from packetbus.v1 import task_service_pb2 as pb
from tests.conftest import unique, verified_actions


def _task(task_id: str) -> packetbus.Task:
    return packetbus.Task(id=task_id, description=f"do {task_id}")


async def _events(queue: packetbus.TaskQueue, after: str, count: int) -> list[pb.TaskEvent]:
    events: list[pb.TaskEvent] = []
    async with asyncio.timeout(10):
        async for event in queue.watch(after_cursor=after):
            events.append(event)
            if len(events) == count:
                return events
    raise AssertionError("unreachable")


async def test_a_task_whose_workers_die_ends_in_the_carcel_after_max_attempts(
    client: packetbus.Client,
) -> None:
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("poison"), origin="planner", max_attempts=2)
    [posted] = await _events(queue, "0-0", 1)

    # Two workers claim it in turn and die (their leases run out).
    first = await queue.claim("doomed-1", lease_seconds=1)
    assert first is not None
    await asyncio.sleep(1.1)
    second = await queue.claim("doomed-2", lease_seconds=1)
    assert second is not None
    assert second.task_id == "poison"
    assert (second.state.claims, second.state.failures) == (2, 1)
    await asyncio.sleep(1.1)
    # Its last attempt ran out: the next claim finds it in the carcel, not the queue.
    assert await queue.claim("doomed-3", lease_seconds=1) is None
    assert await queue.claim("doomed-4", lease_seconds=1) is None

    state = await queue.get("poison")
    assert (state.status, state.claims, state.failures, state.max_attempts) == (
        pb.TASK_STATUS_CARCELED,
        2,
        2,
        2,
    )
    assert not state.worker
    assert [t.task_id for t in await queue.tasks(pb.TASK_STATUS_CARCELED)] == ["poison"]
    assert await queue.tasks(pb.TASK_STATUS_QUEUED) == []
    [entry] = [e async for e in client.carcel_entries(name)]
    assert (entry.reason, entry.source, entry.delivery_count) == (
        "max attempts",
        f"queue:{name}",
        2,
    )
    assert entry.detail == "its lease ran out on its last attempt (2)"
    assert entry.packet.packet.task.id == "poison"
    assert [e.id async for e in client.carcel_entries(name, reason="max attempts")] == [entry.id]

    events = await _events(queue, posted.cursor, 4)
    assert [(e.old_status, e.new_status, e.actor, e.reason) for e in events] == [
        (pb.TASK_STATUS_QUEUED, pb.TASK_STATUS_CLAIMED, "doomed-1", ""),
        (pb.TASK_STATUS_CLAIMED, pb.TASK_STATUS_QUEUED, "server", "lease expired"),
        (pb.TASK_STATUS_QUEUED, pb.TASK_STATUS_CLAIMED, "doomed-2", ""),
        (pb.TASK_STATUS_CLAIMED, pb.TASK_STATUS_CARCELED, "server", "lease expired"),
    ]
    assert [e.fencing_token for e in events] == [1, 1, 2, 2]
    assert await verified_actions(client, state.packet) == [
        "received",
        "dispatched",
        "claimed",
        "claimed",
        "carceled",
    ]
    # The late worker learns where its task went.
    with pytest.raises(packetbus.PacketbusError) as late:
        await second.complete({"too": "late"})
    assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "it is in the carcel" in late.value.message
    assert await queue.results("poison") == []

    # Requeued: its failures forgiven, claimable once more.
    assert await client.requeue_carcel_entry(name, entry.id) == ""
    again = await queue.claim("fixed", lease_seconds=5)
    assert again is not None
    assert (again.task_id, again.state.claims, again.state.failures) == ("poison", 3, 0)
    await again.complete()
    assert (await queue.get("poison")).status == pb.TASK_STATUS_COMPLETED


async def test_a_lease_that_ran_out_is_counted_by_reads_and_settlements_too(
    client: packetbus.Client,
) -> None:
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("once"), origin="planner", max_attempts=1)
    await queue.post(_task("twice"), origin="planner", max_attempts=2)
    once = await queue.claim("w1", lease_seconds=1)
    twice = await queue.claim("w1", lease_seconds=1)
    assert once is not None
    assert twice is not None
    await asyncio.sleep(1.1)

    # No claim since: reading the queue counts the run-out leases, exactly once.
    for _ in range(2):
        states = {t.task_id: t for t in await queue.tasks()}
        assert {k: (s.status, s.failures, s.claims) for k, s in states.items()} == {
            "once": (pb.TASK_STATUS_CARCELED, 1, 1),
            "twice": (pb.TASK_STATUS_QUEUED, 1, 1),
        }
    once_state = await queue.get("once")
    assert once_state.status == pb.TASK_STATUS_CARCELED
    assert len([e async for e in client.carcel_entries(name)]) == 1
    # The carcel move was signed, by the read that made it.
    assert (await verified_actions(client, once_state.packet))[-1] == "carceled"

    # A settlement meeting a run-out lease counts it too, once.
    again = await queue.claim("w2", lease_seconds=1)
    assert again is not None
    assert again.task_id == "twice"
    await asyncio.sleep(1.1)
    with pytest.raises(packetbus.PacketbusError) as late:
        await again.fail("too late")
    assert late.value.code == grpc.StatusCode.FAILED_PRECONDITION
    state = await queue.get("twice")
    assert (state.status, state.failures, state.claims) == (pb.TASK_STATUS_CARCELED, 2, 2)
    assert len([e async for e in client.carcel_entries(name)]) == 2


async def test_failures_and_run_out_leases_add_up_to_max_attempts(
    client: packetbus.Client,
) -> None:
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("mixed"), origin="planner", max_attempts=3)
    claimed = await queue.claim("w1", lease_seconds=1)
    assert claimed is not None
    assert (await claimed.fail("boom")).status == pb.TASK_STATUS_QUEUED
    claimed = await queue.claim("w2", lease_seconds=1)
    assert claimed is not None
    await claimed.release("not me")  # a release is no failure
    claimed = await queue.claim("w3", lease_seconds=1)
    assert claimed is not None
    await asyncio.sleep(1.1)  # runs out: failure 2
    claimed = await queue.claim("w4", lease_seconds=5)
    assert claimed is not None
    assert (claimed.state.claims, claimed.state.failures) == (4, 2)
    final = await claimed.fail("boom again")
    assert final.status == pb.TASK_STATUS_CARCELED
    state = await queue.get("mixed")
    assert (state.status, state.claims, state.failures) == (pb.TASK_STATUS_CARCELED, 4, 3)
    [entry] = [e async for e in client.carcel_entries(name)]
    assert (entry.id, entry.delivery_count, entry.detail) == (final.carcel_id, 4, "boom again")
    assert [(r.worker, r.error) for r in await queue.results("mixed")] == [
        ("w1", "boom"),
        ("w4", "boom again"),
    ]


async def test_a_requeued_tasks_next_carcel_entry_counts_the_claims_since_the_requeue(
    client: packetbus.Client,
) -> None:
    # As a requeued packet's deliveries count from 1 again in its group, so a task's
    # carcel entry counts the claims of the attempts that put it there, not earlier rounds.
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("again"), origin="planner", max_attempts=2)
    for round_ in range(2):
        for attempt in range(2):
            claimed = await queue.claim(f"w{round_}{attempt}", lease_seconds=5)
            assert claimed is not None
            last = await claimed.fail(f"boom {round_}{attempt}")
        assert last.status == pb.TASK_STATUS_CARCELED
        entry = await client.get_carcel_entry(name, last.carcel_id)
        assert (entry.delivery_count, entry.detail) == (2, f"boom {round_}1")
        if round_ == 0:
            assert await client.requeue_carcel_entry(name, entry.id) == ""
    state = await queue.get("again")
    assert (state.status, state.claims, state.failures) == (pb.TASK_STATUS_CARCELED, 4, 2)


async def _dispatch_one(client: packetbus.Client, topic: str) -> str:
    packet = packetbus.Packet(
        topic=topic, origin="tester-1", speech_act=packetbus.SpeechAct.SPEECH_ACT_INFORM
    )
    packet.data.update({"n": 1})
    await client.dispatch(packet)
    return packet.tracking_id


async def test_a_carcel_entry_counts_the_deliveries_made_exactly(
    client: packetbus.Client, topic: str
) -> None:
    """2 deliveries whose leases ran out: the carcel entry says 2 (not 3), and so
    does its carcel hop; a nacked last attempt says its own count."""
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=1, max_delivery_attempts=2
    )
    poison = await _dispatch_one(client, topic)
    counts: list[int] = []
    async with client.consume(topic, "g", consumer="dies") as consumer:
        async with asyncio.timeout(10):
            while len(counts) < 2:
                delivery = await anext(consumer)
                counts.append(delivery.delivery_count)  # never settled: its lease runs out
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5):
                await anext(consumer)
    assert counts == [1, 2]
    async with asyncio.timeout(10):
        while not (entries := [e async for e in client.carcel_entries(topic)]):  # noqa: ASYNC110 (the store's state)
            await asyncio.sleep(0.1)
    [entry] = entries
    assert (entry.packet.packet.tracking_id, entry.reason, entry.delivery_count) == (
        poison,
        "max delivery attempts",
        2,
    )
    hops = [
        custody_pb2.CustodyRecord.FromString(e.record) for e in entry.packet.packet.chain_of_custody
    ]
    assert [(h.action, h.attempt) for h in hops][-3:] == [
        ("delivered", 1),
        ("delivered", 2),
        ("carceled", 2),
    ]

    # A nack of the last attempt: its own count.
    nacked = await _dispatch_one(client, topic)
    async with client.consume(topic, "g", consumer="picky") as consumer:
        async with asyncio.timeout(10):
            while True:
                delivery = await anext(consumer)
                [result] = await delivery.nack(reason="no")
                if result.carcel_id:
                    break
    [entry] = [e async for e in client.carcel_entries(topic) if e.id == result.carcel_id]
    assert (entry.packet.packet.tracking_id, entry.delivery_count) == (nacked, 2)


async def test_a_groups_delivery_counts_are_exact_through_release_nack_extend_and_run_out(
    client: packetbus.Client, topic: str
) -> None:
    """A release does not count an attempt, a nack and a run-out lease count one each,
    an extension none; the last attempt acked leaves the carcel empty."""
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, ack_deadline_seconds=1, max_delivery_attempts=3
    )
    tracking_id = await _dispatch_one(client, topic)
    counts: list[int] = []
    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(15):
            delivery = await anext(consumer)
            counts.append(delivery.delivery_count)
            await consumer.release(delivery)
            delivery = await anext(consumer)
            counts.append(delivery.delivery_count)
            await delivery.nack(reason="again")
            delivery = await anext(consumer)
            counts.append(delivery.delivery_count)
            await asyncio.sleep(0.6)
            await delivery.extend()  # counts nothing
            # Then its lease runs out: delivered once more, its count raised once.
            delivery = await anext(consumer)
            counts.append(delivery.delivery_count)
            await delivery.ack()
    assert delivery.packet.packet.tracking_id == tracking_id
    assert counts == [1, 1, 2, 3]
    assert [e async for e in client.carcel_entries(topic)] == []


async def test_releases_past_max_attempts_count_so_a_release_loop_ends_in_the_carcel(
    client: packetbus.Client, topic: str
) -> None:
    """Each release adds two hops (released, delivered): a consumer that kept
    releasing one packet grew its chain without bound (1,626 entries in 5 s, found
    from Node). The first max_delivery_attempts releases count nothing; later ones
    count as nacks, so the packet reaches the carcel with a bounded chain. At
    least 10 are free, even in a group of fewer attempts."""
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=2
    )
    tracking_id = await _dispatch_one(client, topic)
    counts: list[int] = []
    async with client.consume(topic, "g", consumer="fickle") as consumer:
        async with asyncio.timeout(15):
            while True:
                try:
                    delivery = await asyncio.wait_for(anext(consumer), 2)
                except TimeoutError:
                    break  # nothing more comes: carceled
                counts.append(delivery.delivery_count)
                await consumer.release(delivery)
    # Ten free releases at count 1, then each release counts: 1, 2, then the carcel.
    assert counts == [1] * 11 + [2]
    [entry] = [e async for e in client.carcel_entries(topic)]
    assert entry.packet.packet.tracking_id == tracking_id
    assert entry.delivery_count == 2
    actions = await verified_actions(client, await client.get_packet(tracking_id))
    assert actions == [
        "received",
        "dispatched",
        *(["delivered", "released"] * 12),
        "carceled",
    ]
    # Requeued, its releases are forgiven with its attempts: free again.
    await client.requeue_carcel_entry(topic, entry.id)
    async with client.consume(topic, "g", consumer="fickle") as consumer:
        async with asyncio.timeout(15):
            delivery = await anext(consumer)
            await consumer.release(delivery)
            again = await anext(consumer)
            await again.ack()
    assert (delivery.delivery_count, again.delivery_count) == (1, 1)


async def test_a_watch_sees_a_run_out_lease_in_a_queue_nobody_claims_from(
    client: packetbus.Client,
) -> None:
    name = unique("queue")
    queue = client.task_queue(name)
    await queue.post(_task("lonely"), origin="planner", max_attempts=1)
    [posted] = await _events(queue, "0-0", 1)
    claimed = await queue.claim("dies", lease_seconds=1)
    assert claimed is not None
    [claim] = await _events(queue, posted.cursor, 1)
    await asyncio.sleep(1.1)
    # Only a watch: it counts the run-out lease itself and sees the carcel move.
    [carceled] = await _events(queue, claim.cursor, 1)
    assert (carceled.old_status, carceled.new_status, carceled.actor, carceled.reason) == (
        pb.TASK_STATUS_CLAIMED,
        pb.TASK_STATUS_CARCELED,
        "server",
        "lease expired",
    )
