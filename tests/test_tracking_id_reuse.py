"""A tracking id names one packet: a task, finding or record post that reuses the
tracking id of a packet of another place (another kind, another queue, task or record
kind, or a topic's) is refused with ALREADY_EXISTS and stores nothing, so GetPacket
and VerifyCustody of that id keep answering the first packet (README: get; issue 17,
item 5). Without this a finding posted under a task's tracking id took the id over:
GetPacket answered the finding and VerifyCustody vouched for it. The same holds for a
topic Dispatch: it refuses (ALREADY_EXISTS, nothing written) a tracking id a task,
finding or record holds, and a retry of a packet it stored answers as before, whether
the packet would be stored or a governance policy rejects or holds it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.rpc import code_pb2

import packetbus
from packetbus.v1 import contents_pb2
from packetbus_server import RunningServer, _keys
from tests._governed import ALLOW_ALL, REJECT_ALL, set_policy
from tests.conftest import unique


def _finding_packet(tracking_id: str, task_id: str) -> packetbus.Packet:
    packet = packetbus.Packet(
        topic="findings",
        origin="mallory",
        tracking_id=tracking_id,
        speech_act=packetbus.SpeechAct.SPEECH_ACT_INFORM,
    )
    packet.finding.task_id = task_id
    packet.finding.claim = "mallory's claim"
    packet.finding.confidence = 0.5
    return packet


def _task_packet(tracking_id: str, queue: str, task_id: str) -> packetbus.Packet:
    packet = packetbus.Packet(
        topic=queue,
        origin="mallory",
        tracking_id=tracking_id,
        speech_act=packetbus.SpeechAct.SPEECH_ACT_REQUEST,
    )
    packet.task.id = task_id
    packet.task.description = "mallory's task"
    return packet


def _record_packet(tracking_id: str) -> packetbus.Packet:
    packet = packetbus.Packet(
        topic="records",
        origin="mallory",
        tracking_id=tracking_id,
        speech_act=packetbus.SpeechAct.SPEECH_ACT_INFORM,
    )
    packet.session_summary.CopyFrom(
        contents_pb2.SessionSummary(label=unique("s"), date="2026-11-30", summary="mallory's")
    )
    return packet


async def _refused(call: object) -> None:
    with pytest.raises(packetbus.PacketbusError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert "another packet" in caught.value.message


async def test_a_tasks_tracking_id_is_not_taken_by_a_finding_a_task_or_a_record(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("queue"))
    posted = await queue.post(packetbus.Task(id="t-1", description="the real task"), origin="p")
    tracking_id = posted.packet.packet.tracking_id

    await _refused(client.post_finding(_finding_packet(tracking_id, unique("task"))))
    other_queue = client.task_queue(unique("queue"))
    await _refused(other_queue.post(_task_packet(tracking_id, other_queue.name, "t-2")))
    await _refused(client.put_record(_record_packet(tracking_id)))

    got = await client.get_packet(tracking_id)
    assert got.packet.task.description == "the real task"
    assert (await client.verify_custody(tracking_id)).verified
    # Nothing of the refused posts was stored.
    assert [t.task_id for t in await other_queue.tasks()] == []


async def test_a_findings_tracking_id_is_not_taken_by_a_task(client: packetbus.Client) -> None:
    posted = await client.post_finding(
        contents_pb2.Finding(task_id=unique("task"), claim="the sky is blue", confidence=0.9),
        origin="analyst-1",
    )
    tracking_id = posted.finding.packet.tracking_id
    queue = client.task_queue(unique("queue"))
    await _refused(queue.post(_task_packet(tracking_id, queue.name, "t-1")))
    assert (await client.get_packet(tracking_id)).packet.finding.claim == "the sky is blue"


async def test_a_topic_packets_tracking_id_is_not_taken_by_a_task(
    client: packetbus.Client,
) -> None:
    packet = packetbus.Packet(
        topic=unique("topic"), origin="o", speech_act=packetbus.SpeechAct.SPEECH_ACT_INFORM
    )
    packet.finding.claim = "on a topic"
    await client.dispatch(packet)
    queue = client.task_queue(unique("queue"))
    await _refused(queue.post(_task_packet(packet.tracking_id, queue.name, "t-1")))
    assert [t.task_id for t in await queue.tasks()] == []


async def test_posting_the_same_task_again_is_still_idempotent(client: packetbus.Client) -> None:
    queue = client.task_queue(unique("queue"))
    packet = packetbus.Packet(origin="p", speech_act=packetbus.SpeechAct.SPEECH_ACT_REQUEST)
    packet.task.id = "t-1"
    packet.task.description = "again"
    await queue.post(packet)
    await queue.post(packet)
    assert len(await queue.tasks()) == 1
    assert (await client.get_packet(packet.tracking_id)).packet.task.description == "again"


# -- a topic dispatch of a task's, finding's or record's tracking id ---------------------


def _topic_packet(tracking_id: str, topic: str) -> packetbus.Packet:
    packet = packetbus.Packet(
        topic=topic,
        origin="mallory",
        tracking_id=tracking_id,
        speech_act=packetbus.SpeechAct.SPEECH_ACT_INFORM,
    )
    packet.finding.claim = "mallory's topic packet"
    return packet


async def test_a_dispatch_does_not_take_a_tracking_id_a_task_finding_or_record_holds(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    queue = client.task_queue(unique("queue"))
    task = await queue.post(packetbus.Task(id="t-1", description="the real task"), origin="p")
    finding = await client.post_finding(
        contents_pb2.Finding(task_id=unique("task"), claim="the real finding", confidence=0.9),
        origin="analyst-1",
    )
    record = await client.put_record(
        contents_pb2.SessionSummary(label=unique("s"), date="2026-11-30", summary="the real one"),
        origin="c-1",
    )
    held = [
        task.packet.packet.tracking_id,
        finding.finding.packet.tracking_id,
        record.record.packet.tracking_id,
    ]
    topic = unique("topic")
    fresh = _topic_packet(str(uuid.uuid4()), topic)
    # In one batch: each refused in its own result, the fresh packet stored.
    results = await client.dispatch_batch([*(_topic_packet(t, topic) for t in held), fresh])
    assert [r.WhichOneof("outcome") for r in results] == ["error"] * 3 + ["receipt"]
    assert [r.error.code for r in results[:3]] == [code_pb2.ALREADY_EXISTS] * 3
    assert [r.tracking_id for r in results] == [*held, fresh.tracking_id]
    # Alone too (a one-packet call takes the same path on every backend).
    for tracking_id in held:
        with pytest.raises(packetbus.PacketbusError) as caught:
            await client.dispatch(_topic_packet(tracking_id, unique("topic")))
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS

    # Nothing of them was written: the topic holds the fresh packet only, and
    # no topic claims the held ids.
    assert await raw_redis.xlen(_keys.topic_log(topic)) == 1
    for tracking_id in held:
        assert await raw_redis.exists(_keys.packet_location(tracking_id)) == 0
        assert not await raw_redis.exists(_keys.packet_record(topic, tracking_id))
    assert (await client.get_packet(held[0])).packet.task.description == "the real task"
    assert (await client.get_packet(held[1])).packet.finding.claim == "the real finding"
    assert (await client.get_packet(held[2])).packet.session_summary.summary == "the real one"
    for tracking_id in held:
        assert (await client.verify_custody(tracking_id)).verified


async def test_a_retried_dispatch_answers_as_before_even_once_a_place_is_noted(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    topic = unique("topic")
    packet = _topic_packet(str(uuid.uuid4()), topic)
    first = await client.dispatch(packet)
    # A post refuses an id a topic holds, but one racing the dispatch (its check
    # before the dispatch, its note after) leaves a place beside the location:
    # the dispatch stored first, so its retry still answers its receipt.
    place = _keys.packet_place(packet.tracking_id)
    await raw_redis.set(place, '["task", "q", "q", "t-1"]', px=60_000)
    try:
        again = await client.dispatch(packet)
    finally:
        await raw_redis.delete(place)
    assert again == first
    assert await raw_redis.xlen(_keys.topic_log(topic)) == 1


async def test_a_claim_in_flight_on_a_placed_id_stores_nothing_on_a_cluster(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, backend: str
) -> None:
    if backend != "cluster":
        pytest.skip("only a Redis Cluster claims locations outside the dispatch script")
    topic = unique("topic")
    packet = _topic_packet(str(uuid.uuid4()), topic)
    # Another dispatch of this id claimed its location a moment ago and, finding the
    # place a task noted, is about to give it back: this one must not store it.
    place = _keys.packet_place(packet.tracking_id)
    await raw_redis.set(place, '["task", "q", "q", "t-1"]', px=60_000)
    await raw_redis.set(_keys.packet_location(packet.tracking_id), topic, px=60_000)
    try:
        [result] = await client.dispatch_batch([packet])
    finally:
        await raw_redis.delete(place, _keys.packet_location(packet.tracking_id))
    assert result.error.code == code_pb2.ALREADY_EXISTS, result
    assert await raw_redis.exists(_keys.topic_log(topic)) == 0


# -- the same under a governance policy that rejects or holds the dispatch ----------------

HOLD_ALL = """
default = "allow"

[approval]
approvers = ["guardian.*"]

[[rules]]
id = "review-everything"
decision = "hold"
reason = "a guardian looks first"
"""


@pytest.mark.parametrize("policy", [REJECT_ALL, HOLD_ALL], ids=["rejected", "held"])
async def test_a_governed_dispatch_does_not_take_a_tasks_tracking_id(
    governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis, policy: str
) -> None:
    srv, path = governed
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client:
        await set_policy(client, path, ALLOW_ALL)
        posted = await client.task_queue(unique("queue")).post(
            packetbus.Task(id="t-1", description="the real task"), origin="p"
        )
        held = posted.packet.packet.tracking_id
        await set_policy(client, path, policy)
        topic = unique("topic")
        fresh = _topic_packet(str(uuid.uuid4()), topic)
        results = await client.dispatch_batch([_topic_packet(held, topic), fresh])
        await set_policy(client, path, ALLOW_ALL)

        assert results[0].error.code == code_pb2.ALREADY_EXISTS
        # The policy did judge the batch: the fresh packet was rejected or held.
        if policy == REJECT_ALL:
            assert results[1].error.code == code_pb2.PERMISSION_DENIED
        else:
            assert results[1].WhichOneof("outcome") == "held"
        # Of the refused packet nothing was written: one decision, the fresh one's.
        log = _keys.carcel(topic) if policy == REJECT_ALL else _keys.held(topic)
        assert await raw_redis.xlen(log) == 1
        assert not await raw_redis.exists(_keys.packet_record(topic, held))
        assert await raw_redis.exists(_keys.packet_location(held)) == 0
        assert (await client.get_packet(held)).packet.task.description == "the real task"


async def test_a_held_packet_is_not_approved_over_a_task_that_took_its_tracking_id(
    governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    srv, path = governed
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client:
        await set_policy(client, path, ALLOW_ALL)
        guardian = packetbus.AgentIdentity.generate(unique("guardian"))
        await client.register_identity(guardian)
        topic = unique("topic")
        packet = _topic_packet(str(uuid.uuid4()), topic)
        await set_policy(client, path, HOLD_ALL)
        [result] = await client.dispatch_batch([packet])
        await set_policy(client, path, ALLOW_ALL)
        assert result.WhichOneof("outcome") == "held"

        # A held packet claims no location (its record is its topic's), so the post
        # stores; the approval then refuses, and nothing is stored on the topic.
        queue = client.task_queue(unique("queue"))
        await queue.post(_task_packet(packet.tracking_id, queue.name, "t-1"))
        with pytest.raises(packetbus.PacketbusError) as caught:
            await client.approve_packet(topic, packet.tracking_id, identity=guardian)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "task, finding or record" in caught.value.message
        assert await raw_redis.xlen(_keys.topic_log(topic)) == 0
        assert await raw_redis.exists(_keys.packet_location(packet.tracking_id)) == 0
        assert (await client.get_packet(packet.tracking_id)).packet.task.id == "t-1"
