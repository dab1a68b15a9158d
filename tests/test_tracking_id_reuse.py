"""A tracking id names one packet: a task, finding or record post that reuses the
tracking id of a packet of another place (another kind, another queue, task or record
kind, or a topic's) is refused with ALREADY_EXISTS and stores nothing, so GetPacket
and VerifyCustody of that id keep answering the first packet (README: get; issue 17,
item 5). Without this a finding posted under a task's tracking id took the id over:
GetPacket answered the finding and VerifyCustody vouched for it.
"""

from __future__ import annotations

import grpc
import pytest

import packetbus
from packetbus.v1 import contents_pb2
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
