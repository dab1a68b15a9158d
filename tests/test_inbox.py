"""Agent inboxes and request/reply over them."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import custody_pb2
from tests.conftest import new_packet, unique


def test_inbox_topics_are_valid_topic_names_and_distinct() -> None:
    assert packetbus.inbox_topic("haiku-1") == "inbox/haiku-1"
    assert packetbus.inbox_topic("agent@host:7") == "inbox/agent:40host:3a7"
    assert packetbus.inbox_topic("é") == "inbox/:c3:a9"
    assert packetbus.inbox_topic("a:40") != packetbus.inbox_topic("a@")
    with pytest.raises(ValueError, match="too long"):
        packetbus.inbox_topic("x" * 300)


async def test_a_packet_sent_before_the_agent_reads_its_inbox_is_delivered_once(
    client: packetbus.Client,
) -> None:
    agent = unique("agent")
    packet = new_packet("placeholder")
    packet.task.id = "t-1"
    receipt = await client.send_to(agent, packet)
    assert receipt.topic == packetbus.inbox_topic(agent)

    async with await client.inbox(agent) as inbox:
        async with asyncio.timeout(10):
            delivery = await anext(inbox)
        assert delivery.packet.packet.task.id == "t-1"
        assert delivery.delivery_count == 1
        await delivery.ack()
    # Opening it again delivers nothing more: it was acked.
    async with await client.inbox(agent) as inbox:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await anext(inbox)
    records = [
        custody_pb2.CustodyRecord.FromString(e.record)
        for e in (await client.get_packet(packet.tracking_id)).packet.chain_of_custody
    ]
    assert [(r.action, r.counterpart) for r in records[2:]] == [
        ("delivered", f"group:inbox consumer:{agent}"),
        ("acked", "group:inbox"),
    ]


async def test_request_gets_the_matching_reply_and_other_packets_stay_in_the_inbox(
    client: packetbus.Client,
) -> None:
    asker, answerer = unique("asker"), unique("answerer")

    async def answer() -> None:
        async with await client.inbox(answerer) as inbox:
            delivery = await anext(inbox)
            question = delivery.packet
            assert question.packet.speech_act == packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST")
            reply = packetbus.Packet(origin=answerer)
            reply.finding.claim = f"the answer to {question.packet.task.description}"
            reply.finding.confidence = 0.9
            await client.reply(question, reply)
            await delivery.ack()

    async with await client.inbox(asker) as inbox:
        # Something else arrives in the asker's inbox first: it is not the reply.
        other_packet = new_packet("x")
        other_packet.origin = "someone-else"
        await client.send_to(asker, other_packet)
        answering = asyncio.create_task(answer())
        question = packetbus.Packet(conversation_id="conv-42")
        question.task.description = "life"
        reply = await inbox.request(answerer, question, timeout=10)
        await answering
        assert reply.packet.packet.finding.claim == "the answer to life"
        assert reply.packet.packet.in_reply_to == question.reply_with
        assert reply.packet.packet.conversation_id == "conv-42"
        assert question.origin == asker
        other = await anext(inbox)
        assert other.packet.packet.origin == "someone-else"
        await other.ack()

        unanswered = packetbus.Packet()
        unanswered.task.description = "nobody listens"
        with pytest.raises(packetbus.PacketbusError) as late:
            await inbox.request(unique("silent"), unanswered, timeout=1)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_reply_needs_a_request_that_expects_one(client: packetbus.Client) -> None:
    with pytest.raises(ValueError, match="no reply_with"):
        packetbus.reply_to(packetbus.Packet(origin="a"), packetbus.Packet())


async def test_a_request_rebuilt_with_its_tracking_id_is_the_same_packet(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    asker, silent = unique("asker"), unique("silent")
    tracking_id = str(uuid.uuid4())
    async with await client.inbox(asker) as inbox:
        for _ in range(2):  # the asker's process built it, crashed, and built it again
            question = packetbus.Packet(tracking_id=tracking_id)
            question.task.description = "still there?"
            with pytest.raises(packetbus.PacketbusError) as late:
                await inbox.request(silent, question, timeout=0.5)
            assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED  # not ALREADY_EXISTS
            assert question.reply_with == tracking_id
    assert await raw_redis.xlen(f"pb:{{{packetbus.inbox_topic(silent)}}}:log") == 1
