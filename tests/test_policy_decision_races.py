"""Decisions on one held packet sent at once, or after it stopped being held: each
call is answered by what became of the packet (PolicyService: "Approving again
answers the same receipt", "Denying again answers the same carcel entry", "an
approved packet is FAILED_PRECONDITION", one not held is NOT_FOUND), never by the
state it was in when the call first looked."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import redis.asyncio as redis_asyncio

import packetbus
from packetbus import _custody
from packetbus._approvals import decision_entry
from packetbus.v1 import policy_service_pb2 as pb
from packetbus.v1 import policy_service_pb2_grpc
from packetbus_server import RunningServer
from tests.conftest import unique
from tests.test_policy import approver, bus, governed, policy_file, spawn_packet

# Fixtures of test_policy's governed server, used here by name.
__all__ = ["approver", "bus", "governed", "policy_file"]

CALLERS = 10


async def _held(bus: packetbus.Client, *, ttl_seconds: int = 0) -> tuple[str, pb.HeldPacket]:
    topic = unique("gov")
    packet = spawn_packet(topic)
    if ttl_seconds:
        packet.ttl_seconds = ttl_seconds
    [result] = await bus.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"
    return topic, await bus.get_held_packet(topic, packet.tracking_id)


async def _decide_at_once(
    target: str, calls: list[pb.ApprovePacketRequest | pb.DenyPacketRequest]
) -> list[tuple[str, Any]]:
    """Each call on a channel of its own, all sent at once: (status code, response)."""
    channels = [grpc.aio.insecure_channel(target) for _ in calls]
    try:
        for channel in channels:
            await channel.channel_ready()

        async def one(channel: grpc.aio.Channel, request: Any) -> tuple[str, Any]:
            stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
            method = (
                stub.ApprovePacket
                if isinstance(request, pb.ApprovePacketRequest)
                else stub.DenyPacket
            )
            try:
                return "OK", await method(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name), exc.details()

        return list(
            await asyncio.gather(*(one(c, r) for c, r in zip(channels, calls, strict=True)))
        )
    finally:
        for channel in channels:
            await channel.close()


def _denial(
    topic: str, held: pb.HeldPacket, who: packetbus.AgentIdentity, why: str
) -> pb.DenyPacketRequest:
    entry = decision_entry(held.packet, who, _custody.DENIED, reason=why)
    return pb.DenyPacketRequest(
        topic=topic, tracking_id=held.packet.packet.tracking_id, denial=entry
    )


def _approval(
    topic: str, held: pb.HeldPacket, who: packetbus.AgentIdentity
) -> pb.ApprovePacketRequest:
    entry = decision_entry(held.packet, who, _custody.APPROVED)
    return pb.ApprovePacketRequest(
        topic=topic, tracking_id=held.packet.packet.tracking_id, approval=entry
    )


async def test_10_denials_at_once_all_answer_the_one_carcel_entry(
    bus: packetbus.Client,
    governed: tuple[RunningServer, Any],
    raw_redis: redis_asyncio.Redis,
    approver: packetbus.AgentIdentity,
) -> None:
    target = f"127.0.0.1:{governed[0].port}"
    for _ in range(3):  # a race: not every round interleaves the calls the same way
        topic, held = await _held(bus)
        answers = await _decide_at_once(
            target, [_denial(topic, held, approver, f"no {i}") for i in range(CALLERS)]
        )
        assert Counter(code for code, _ in answers) == {"OK": CALLERS}, answers
        assert len({r.carcel_entry_id for _, r in answers}) == 1
        assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1
        assert dict((await bus.policy_stats(topic)).by_decision) == {"held": 1, "denied": 1}


async def test_approvals_and_denials_at_once_each_answer_the_one_decision_made(
    bus: packetbus.Client,
    governed: tuple[RunningServer, Any],
    raw_redis: redis_asyncio.Redis,
    approver: packetbus.AgentIdentity,
) -> None:
    target = f"127.0.0.1:{governed[0].port}"
    for _ in range(3):  # either may win: each time, every answer agrees with the winner
        topic, held = await _held(bus)
        calls: list[pb.ApprovePacketRequest | pb.DenyPacketRequest] = []
        for i in range(CALLERS // 2):
            calls += [_approval(topic, held, approver), _denial(topic, held, approver, f"no {i}")]
        answers = await _decide_at_once(target, calls)
        decisions = dict((await bus.policy_stats(topic)).by_decision)
        approves = Counter(
            code
            for (code, _), c in zip(answers, calls, strict=True)
            if isinstance(c, pb.ApprovePacketRequest)
        )
        denies = Counter(
            code
            for (code, _), c in zip(answers, calls, strict=True)
            if isinstance(c, pb.DenyPacketRequest)
        )
        if decisions == {"held": 1, "approved": 1}:
            assert approves == {"OK": CALLERS // 2}, answers
            assert denies == {"FAILED_PRECONDITION": CALLERS // 2}, answers
            assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 1
        else:
            assert decisions == {"held": 1, "denied": 1}
            assert denies == {"OK": CALLERS // 2}, answers
            assert approves == {"FAILED_PRECONDITION": CALLERS // 2}, answers
            assert await raw_redis.xlen(f"pb:{{{topic}}}:carcel") == 1
        refusals = [d for code, d in answers if code != "OK"]
        # A denial refused says the packet was approved only when it was.
        if decisions.get("denied"):
            assert not any("was approved" in d for d in refusals), refusals
