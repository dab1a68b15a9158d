"""Each FAILED_PRECONDITION and ALREADY_EXISTS a call can end with, end to end on a
real server and store: its ErrorInfo reason (domain "packetbus"), as the README's
table and the RPC's proto comment say. test_refusal_reasons.py holds the rule
that no site sends either code without one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import pytest

import packetbus
from packetbus.v1 import context_service_pb2
from packetbus_server import RunningServer
from tests._governed import error_info, set_policy
from tests.conftest import new_packet, unique

POLICY = """
default = "allow"

[approval]
approvers = ["guardian-*"]

[[rules]]
id = "hold-held"
decision = "hold"
reason = "a guardian looks first"
topic = "held.*"

[[rules]]
id = "no-data-here"
decision = "reject"
reason = "not on refused topics"
topic = "refused.*"
"""


async def refused(call: Awaitable[object]) -> packetbus.PacketbusError:
    with pytest.raises(packetbus.PacketbusError) as caught:
        await call
    return caught.value


def assert_reason(
    error: packetbus.PacketbusError, code: grpc.StatusCode, reason: str
) -> dict[str, str]:
    assert error.code == code, error
    info = error_info(error)
    assert info["reason"] == reason
    return info


# Without a policy (the session's server).


async def test_a_task_id_or_a_claim_request_id_in_use(client: packetbus.Client) -> None:
    queue = client.task_queue(unique("queue"))
    await queue.post(packetbus.Task(id="t", description="x"), origin="a")
    taken = await refused(queue.post(packetbus.Task(id="t", description="y"), origin="a"))
    assert_reason(taken, grpc.StatusCode.ALREADY_EXISTS, "TASK_ID_IN_USE")
    request_id = str(uuid.uuid4())
    claimed = await queue.claim("w-1", request_id=request_id)
    assert claimed is not None
    other = await refused(queue.claim("w-2", request_id=request_id))
    assert_reason(other, grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_IN_USE")


async def test_a_finding_id_in_use(client: packetbus.Client) -> None:
    task = unique("task")
    await client.post_finding(
        packetbus.Finding(task_id=task, id="f", claim="c", confidence=0.5), origin="a"
    )
    taken = await refused(
        client.post_finding(
            packetbus.Finding(task_id=task, id="f", claim="other", confidence=0.5), origin="a"
        )
    )
    assert_reason(taken, grpc.StatusCode.ALREADY_EXISTS, "FINDING_ID_IN_USE")


async def test_a_records_tracking_id_in_use(client: packetbus.Client) -> None:
    tracking_id = str(uuid.uuid4())
    await client.put_record(
        packetbus.SessionSummary(label="s-1", date="2026-11-21", summary="one"),
        origin="a",
        tracking_id=tracking_id,
    )
    taken = await refused(
        client.put_record(
            packetbus.SessionSummary(label="s-1", date="2026-11-21", summary="two"),
            origin="a",
            tracking_id=tracking_id,
        )
    )
    assert_reason(taken, grpc.StatusCode.ALREADY_EXISTS, "TRACKING_ID_IN_USE")


async def test_a_group_with_other_settings(client: packetbus.Client, topic: str) -> None:
    await client.create_consumer_group(topic, "g", ack_deadline_seconds=30)
    other = await refused(client.create_consumer_group(topic, "g", ack_deadline_seconds=60))
    assert_reason(other, grpc.StatusCode.ALREADY_EXISTS, "GROUP_SETTINGS_DIFFER")


async def test_a_parent_not_registered_or_a_cycle(client: packetbus.Client) -> None:
    root, child = unique("root"), unique("child")
    orphan = await refused(client.register_agent(child, parent_id=unique("nobody")))
    assert_reason(orphan, grpc.StatusCode.FAILED_PRECONDITION, "PARENT_NOT_REGISTERED")
    await client.register_agent(root, ttl=60)
    await client.register_agent(child, parent_id=root, ttl=60)
    cycle = await refused(client.register_agent(root, parent_id=child, ttl=60))
    assert_reason(cycle, grpc.StatusCode.FAILED_PRECONDITION, "PARENT_CYCLE")


async def test_a_key_registered_to_another_agent(client: packetbus.Client) -> None:
    owner = packetbus.AgentIdentity.generate(unique("owner"))
    await client.register_identity(owner)
    # The same key (with a valid proof) for another agent id, by either RPC.
    thief = packetbus.AgentIdentity(unique("thief"), owner.signer)
    by_custody = await refused(client.register_identity(thief))
    assert_reason(by_custody, grpc.StatusCode.ALREADY_EXISTS, "KEY_ID_IN_USE")
    by_registry = await refused(client.register_agent(thief.agent_id, identity=thief))
    assert_reason(by_registry, grpc.StatusCode.ALREADY_EXISTS, "KEY_ID_IN_USE")


async def test_an_upload_id_in_use(client: packetbus.Client) -> None:
    scope, upload = unique("scope"), str(uuid.uuid4())
    await client.put_context(scope, "doc", b"data", upload_id=upload, author="w-1")
    other = await refused(client.put_context(scope, "doc", b"else", upload_id=upload, author="w-1"))
    assert_reason(other, grpc.StatusCode.ALREADY_EXISTS, "UPLOAD_ID_IN_USE")


async def test_a_log_entry_id_in_use(client: packetbus.Client) -> None:
    agent, entry_id = unique("agent"), str(uuid.uuid4())
    first = context_service_pb2.LogEntry(entry_id=entry_id, kind="thought", text="one")
    second = context_service_pb2.LogEntry(entry_id=entry_id, kind="thought", text="two")
    await client.append_memory(agent, first)
    memory = await refused(client.append_memory(agent, second))
    assert_reason(memory, grpc.StatusCode.ALREADY_EXISTS, "ENTRY_ID_IN_USE")
    task = unique("task")
    await client.append_trace(task, agent, first)
    trace = await refused(client.append_trace(task, agent, second))
    assert_reason(trace, grpc.StatusCode.ALREADY_EXISTS, "ENTRY_ID_IN_USE")


async def test_a_requeue_whose_group_is_gone(client: packetbus.Client, topic: str) -> None:
    await client.create_consumer_group(
        topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1
    )
    await client.dispatch(new_packet(topic))
    async with client.consume(topic, "g", consumer="c") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(consumer)
            [result] = await delivery.nack(reason="no")
    assert result.carcel_id
    assert await client.delete_consumer_group(topic, "g")
    gone = await refused(client.requeue_carcel_entry(topic, result.carcel_id))
    assert_reason(gone, grpc.StatusCode.FAILED_PRECONDITION, "SOURCE_GONE")
    assert [e.id async for e in client.carcel_entries(topic)] == [result.carcel_id]


# Under a policy.


@pytest.fixture
async def bus(governed: tuple[RunningServer, Path]) -> AsyncIterator[packetbus.Client]:
    srv, path = governed
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as c:
        await set_policy(c, path, POLICY)
        yield c


@pytest.fixture
async def approver(bus: packetbus.Client) -> packetbus.AgentIdentity:
    identity = packetbus.AgentIdentity.generate(unique("guardian-"))
    await bus.register_identity(identity)
    return identity


async def _held(bus: packetbus.Client) -> packetbus.Packet:
    packet = new_packet(unique("held."))
    [result] = await bus.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"
    return packet


async def test_approving_a_denied_packet_and_denying_an_approved_one(
    bus: packetbus.Client, approver: packetbus.AgentIdentity
) -> None:
    denied = await _held(bus)
    await bus.deny_packet(denied.topic, denied.tracking_id, reason="no", identity=approver)
    late = await refused(bus.approve_packet(denied.topic, denied.tracking_id, identity=approver))
    assert_reason(late, grpc.StatusCode.FAILED_PRECONDITION, "PACKET_DENIED")

    approved = await _held(bus)
    await bus.approve_packet(approved.topic, approved.tracking_id, identity=approver)
    late = await refused(
        bus.deny_packet(approved.topic, approved.tracking_id, reason="no", identity=approver)
    )
    assert_reason(late, grpc.StatusCode.FAILED_PRECONDITION, "PACKET_APPROVED")


async def test_approving_a_packet_whose_tracking_id_was_taken_while_held(
    bus: packetbus.Client, approver: packetbus.AgentIdentity
) -> None:
    # By a packet on another topic.
    held = await _held(bus)
    elsewhere = new_packet(unique("free"))
    elsewhere.tracking_id = held.tracking_id
    [stored] = await bus.dispatch_batch([elsewhere])
    assert stored.HasField("receipt")
    taken = await refused(bus.approve_packet(held.topic, held.tracking_id, identity=approver))
    assert_reason(taken, grpc.StatusCode.FAILED_PRECONDITION, "TRACKING_ID_IN_USE")

    # By a task.
    held = await _held(bus)
    task = new_packet(unique("free"), task=packetbus.Task(id="t", description="x"))
    task.speech_act = packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST")
    task.tracking_id = held.tracking_id
    await bus.task_queue(task.topic).post(task)
    placed = await refused(bus.approve_packet(held.topic, held.tracking_id, identity=approver))
    assert_reason(placed, grpc.StatusCode.FAILED_PRECONDITION, "TRACKING_ID_IN_USE")


async def test_requeuing_what_a_policy_refused(bus: packetbus.Client) -> None:
    topic = unique("refused.")
    [result] = await bus.dispatch_batch([new_packet(topic)])
    assert result.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    [entry] = [e async for e in bus.carcel_entries(topic)]
    again = await refused(bus.requeue_carcel_entry(topic, entry.id))
    info = assert_reason(again, grpc.StatusCode.FAILED_PRECONDITION, "REFUSED_BY_POLICY")
    assert info == {"reason": "REFUSED_BY_POLICY"}


async def test_a_refused_post_whose_tracking_id_a_dispatched_packet_holds(
    bus: packetbus.Client, governed: tuple[RunningServer, Path]
) -> None:
    topic = unique("refused.")
    # Stored while no rule refused the topic: the tracking id is that packet's.
    await set_policy(bus, governed[1], POLICY.replace('"refused.*"', '"nothing.*"'))
    dispatched = new_packet(topic)
    [stored] = await bus.dispatch_batch([dispatched])
    assert stored.HasField("receipt")
    await set_policy(bus, governed[1], POLICY)
    task = new_packet(topic, task=packetbus.Task(id="t", description="x"))
    task.speech_act = packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST")
    task.tracking_id = dispatched.tracking_id
    taken = await refused(bus.task_queue(topic).post(task))
    assert_reason(taken, grpc.StatusCode.ALREADY_EXISTS, "TRACKING_ID_IN_USE")
