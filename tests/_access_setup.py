"""Resources the access table's rows act on, made as the admin principal (who may
do everything): each helper makes fresh ones, named uniquely, and returns their
names. A packet's origin is ``admin`` unless a row asks for its own."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import packetbus
from packetbus.v1 import (
    agent_service_pb2,
    consumer_group_service_pb2,
    contents_pb2,
    context_service_pb2,
    finding_service_pb2,
    packet_pb2,
    packet_service_pb2,
    record_service_pb2,
    speech_act_pb2,
    task_service_pb2,
)
from tests._access_calls import CALL_SECONDS
from tests._access_world import ADMIN, Door, per_packet


def unique(prefix: str) -> str:
    """`prefix` and 10 random hex digits: a name no other row uses."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


# -- setup, as the admin ----------------------------------------------------------


def packet(topic: str, origin: str, **fields: Any) -> packet_pb2.Packet:
    made = packet_pb2.Packet(
        topic=topic, origin=origin, speech_act=speech_act_pb2.SPEECH_ACT_INFORM, **fields
    )
    return packetbus.fill_defaults(made)


def data_packet(topic: str, origin: str) -> packet_pb2.Packet:
    made = packet(topic, origin)
    made.data.update({"n": 1})
    return made


async def dispatched(door: Door, topic: str) -> packet_service_pb2.DispatchResult:
    request = packet_service_pb2.DispatchRequest(packets=[data_packet(topic, ADMIN)])
    response = await door.stubs.packets.Dispatch(request, metadata=door.md(ADMIN))
    (result,) = response.results
    assert isinstance(result, packet_service_pb2.DispatchResult)
    return result


async def carceled(door: Door) -> tuple[str, str]:
    """A topic with one entry in its carcel (a rejected packet): (topic, entry id)."""
    topic = unique("reject")
    result = await dispatched(door, topic)
    info = per_packet(result.error)
    assert info.reason == "POLICY_REJECTED", result
    return topic, info.meta["carcel_entry_id"]


async def held(door: Door) -> tuple[str, str]:
    """A topic with one held packet: (topic, tracking id)."""
    topic = unique("held")
    result = await dispatched(door, topic)
    assert result.HasField("held"), result
    return topic, result.tracking_id


async def group_of(
    door: Door, *, deliveries: int = 0, max_attempts: int = 0
) -> tuple[str, str, list[str]]:
    """A topic with one packet and a group reading it from the start; `deliveries`:
    leased to the admin's consumer first. (topic, group, delivery ids)."""
    topic, group = unique("topic"), "g"
    await dispatched(door, topic)
    await door.stubs.groups.CreateConsumerGroup(
        consumer_group_service_pb2.CreateConsumerGroupRequest(
            topic=topic,
            name=group,
            start_position=packet_service_pb2.START_POSITION_EARLIEST,
            ack_deadline_seconds=300,
            max_delivery_attempts=max_attempts,
        ),
        metadata=door.md(ADMIN),
    )
    ids: list[str] = []
    if deliveries:
        stream = door.stubs.groups.Pull(metadata=door.md(ADMIN), timeout=CALL_SECONDS)
        await stream.write(
            consumer_group_service_pb2.PullRequest(
                subscription=consumer_group_service_pb2.PullSubscription(
                    topic=topic, group=group, consumer=ADMIN, max_outstanding_packets=deliveries
                )
            )
        )
        response = await stream.read()
        ids = [d.delivery_id for d in response.deliveries]
        stream.cancel()
    return topic, group, ids


async def agent(door: Door, agent_id: str) -> None:
    await door.stubs.agents.RegisterAgent(
        agent_service_pb2.RegisterAgentRequest(
            agent=agent_service_pb2.Agent(id=agent_id, role="worker", heartbeat_ttl_seconds=3600)
        ),
        metadata=door.md(ADMIN),
    )


def task_packet(queue: str, origin: str) -> packet_pb2.Packet:
    made = packet_pb2.Packet(
        topic=queue,
        origin=origin,
        speech_act=speech_act_pb2.SPEECH_ACT_REQUEST,
        task=contents_pb2.Task(id=unique("task"), description="do it"),
    )
    return packetbus.fill_defaults(made)


async def claimed(door: Door, worker: str) -> tuple[str, str, int]:
    """A task posted and claimed by `worker`: (queue, task id, fencing token)."""
    queue = unique("queue")
    await door.stubs.tasks.PostTask(
        task_service_pb2.PostTaskRequest(packet=task_packet(queue, ADMIN)),
        metadata=door.md(ADMIN),
    )
    response = await door.stubs.tasks.ClaimTask(
        task_service_pb2.ClaimTaskRequest(
            queue=queue, worker=worker, lease_seconds=300, request_id=str(uuid.uuid4())
        ),
        metadata=door.md(ADMIN),
    )
    return queue, response.task.task_id, response.task.fencing_token


def finding_packet(task_id: str, origin: str) -> packet_pb2.Packet:
    return packet(
        "findings",
        origin,
        finding=contents_pb2.Finding(
            id=unique("finding"), claim="the sky is blue", confidence=0.9, task_id=task_id
        ),
    )


async def finding(door: Door) -> tuple[str, str]:
    """A task id with one finding: (task id, finding id)."""
    task_id = unique("task")
    posted = finding_packet(task_id, ADMIN)
    await door.stubs.findings.PostFinding(
        finding_service_pb2.PostFindingRequest(packet=posted), metadata=door.md(ADMIN)
    )
    return task_id, posted.finding.id


def summary_packet(origin: str) -> packet_pb2.Packet:
    return packet(
        "records",
        origin,
        session_summary=contents_pb2.SessionSummary(label="run", summary="all good"),
    )


def context_parts(
    scope: str, name: str, author: str
) -> list[context_service_pb2.PutContextRequest]:
    body = b"the plan"
    header = context_service_pb2.PutContextHeader(
        scope=scope,
        name=name,
        content_type="text/plain",
        size=len(body),
        sha256=hashlib.sha256(body).digest(),
        author=author,
        upload_id=str(uuid.uuid4()),
    )
    return [
        context_service_pb2.PutContextRequest(header=header),
        context_service_pb2.PutContextRequest(chunk=body),
    ]


async def context_doc(door: Door) -> tuple[str, str]:
    scope, name = unique("scope"), "plan"
    await door.stubs.context.PutContext(
        iter(context_parts(scope, name, ADMIN)), metadata=door.md(ADMIN)
    )
    return scope, name


def log_entry() -> context_service_pb2.LogEntry:
    entry = context_service_pb2.LogEntry(entry_id=str(uuid.uuid4()), kind="thought", text="hm")
    entry.recorded_at.GetCurrentTime()
    return entry


async def poisoned(door: Door) -> tuple[str, str]:
    """A topic with one poison packet in its carcel (nacked past its group's one
    attempt; a packet the policy refused is not requeued): (topic, entry id)."""
    topic, group, ids = await group_of(door, deliveries=1, max_attempts=1)
    response = await door.stubs.groups.Nack(
        consumer_group_service_pb2.NackRequest(
            topic=topic,
            group=group,
            nacks=[consumer_group_service_pb2.Nacked(delivery_id=ids[0], reason="poison")],
        ),
        metadata=door.md(ADMIN),
    )
    (settled,) = response.results
    assert settled.carcel_id, settled
    return topic, settled.carcel_id


async def global_key(door: Door) -> str:
    key = unique("key")
    await door.stubs.context.SetGlobalContext(
        context_service_pb2.SetGlobalContextRequest(key=key, value="v1"),
        metadata=door.md(ADMIN),
    )
    return key


async def decision(door: Door, me: str, action: str) -> tuple[str, str, Any]:
    """A held packet and `me`'s signed `action` on it (its key registered by the
    admin, which may act for any agent): (topic, tracking id, entry)."""
    from packetbus._approvals import decision_entry

    topic, tracking_id = await held(door)
    identity = await door.identity(me)
    stored = await door.admin.get_held_packet(topic, tracking_id)
    return topic, tracking_id, decision_entry(stored.packet, identity, action, reason="ok")


async def record(door: Door) -> str:
    posted = summary_packet(ADMIN)
    await door.stubs.records.PutRecord(
        record_service_pb2.PutRecordRequest(packet=posted), metadata=door.md(ADMIN)
    )
    return posted.tracking_id
