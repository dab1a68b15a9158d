"""Governance beyond Dispatch: tasks, findings, records and escalations are judged by
the same policy before anything is written (issue 14, item 5; _governance)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import (
    contents_pb2,
    finding_service_pb2,
    finding_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)
from packetbus_server import RunningServer
from tests._governed import (
    ALLOW_ALL,
    DEFAULT_REASON,
    REJECT_ALL,
    error_info,
    rpc_error_info,
    set_policy,
)
from tests._store_keys import key_names, new_keys
from tests.conftest import unique

SOME_ALLOWED = """
default = "reject"

[[rules]]
id = "open-queues"
decision = "allow"
content_type = "task"
topic = "open.*"

[[rules]]
id = "no-guesses"
decision = "reject"
reason = "findings need confidence"
content_type = "finding"
[rules.fields]
confidence = { lt = 0.5 }

[[rules]]
id = "findings"
decision = "allow"
content_type = "finding"

[[rules]]
id = "records"
decision = "allow"
content_type = "record"
"""

HOLD_ALL = """
default = "allow"

[approval]
approvers = ["guardian.*"]

[[rules]]
id = "review-everything"
decision = "hold"
reason = "a guardian looks first"
"""


@pytest.fixture
async def bus(governed: tuple[RunningServer, Path]) -> AsyncIterator[packetbus.Client]:
    srv, path = governed
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client:
        await set_policy(client, path, ALLOW_ALL)
        yield client


@pytest.fixture
async def channel(governed: tuple[RunningServer, Path]) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{governed[0].port}") as ch:
        yield ch


def decision_keys(topic: str, tracking_id: str) -> set[bytes]:
    """The keys a rejection may create: the topic's carcel, counts, decision log and
    the tracking id's record (scripts/policy_decide.lua), and the topic index."""
    tag = f"pb:{{{topic}}}:"
    names = ("carcel", "polstats", "decisions", f"pkt:{tracking_id}")
    return {f"{tag}{n}".encode() for n in names} | {b"pb:topics"}


def task_packet(queue: str, task_id: str = "t-1") -> packetbus.Packet:
    packet = packetbus.Packet(
        topic=queue,
        origin="outsider-1",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST"),
        task=packetbus.Task(id=task_id, type="build"),
    )
    return packetbus.fill_defaults(packet)


def finding_packet(topic: str, task_id: str, confidence: float = 0.9) -> packetbus.Packet:
    packet = packetbus.Packet(
        topic=topic,
        origin="outsider-1",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
        finding=packetbus.Finding(
            task_id=task_id, id="f-1", claim="the sky is blue", confidence=confidence
        ),
    )
    return packetbus.fill_defaults(packet)


async def refused(call: object) -> packetbus.PacketbusError:
    with pytest.raises(packetbus.PacketbusError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def carcel_entry(
    raw_redis: redis_asyncio.Redis, topic: str, entry_id: str
) -> dict[bytes, bytes]:
    """The fields of entry `entry_id` of `topic`'s carcel (it must be there)."""
    found: Any = await raw_redis.xrange(f"pb:{{{topic}}}:carcel", entry_id, entry_id)
    [(_, fields)] = found
    return dict(fields)


async def assert_rejected_into_carcel(
    raw_redis: redis_asyncio.Redis,
    exc: packetbus.PacketbusError,
    topic: str,
    tracking_id: str,
    rule: tuple[str, str],
) -> None:
    assert exc.code == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(exc)
    assert (info["reason"], info["rule_id"], info["rule_reason"]) == ("POLICY_REJECTED", *rule)
    fields = await carcel_entry(raw_redis, topic, info["carcel_entry_id"])
    assert fields[b"i"] == tracking_id.encode()
    assert (fields[b"u"], fields[b"r"]) == (rule[0].encode(), rule[1].encode())


async def test_with_default_reject_tasks_findings_and_records_are_refused_into_the_carcel(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    version = await set_policy(bus, governed[1], REJECT_ALL)
    queue, findings, records = unique("q"), unique("fnd"), unique("rec")
    task = task_packet(queue)
    finding = finding_packet(findings, unique("task"))
    record = packetbus.fill_defaults(
        packetbus.Packet(
            topic=records,
            origin="outsider-1",
            speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
            session_summary=contents_pb2.SessionSummary(label="s", date="2026-11-30"),
        )
    )
    before = await key_names(raw_redis)

    exc = await refused(bus.task_queue(queue).post(task))
    await assert_rejected_into_carcel(
        raw_redis, exc, queue, task.tracking_id, ("default", DEFAULT_REASON)
    )
    assert error_info(exc)["policy_version"] == version
    exc = await refused(bus.post_finding(finding))
    await assert_rejected_into_carcel(
        raw_redis, exc, findings, finding.tracking_id, ("default", DEFAULT_REASON)
    )
    exc = await refused(bus.put_record(record))
    await assert_rejected_into_carcel(
        raw_redis, exc, records, record.tracking_id, ("default", DEFAULT_REASON)
    )

    # Nothing but the decisions: no task, no finding, no record.
    assert await new_keys(raw_redis, before) <= (
        decision_keys(queue, task.tracking_id)
        | decision_keys(findings, finding.tracking_id)
        | decision_keys(records, record.tracking_id)
    )
    for topic in (queue, findings, records):
        stats = await bus.policy_stats(topic)
        assert dict(stats.by_decision) == {"rejected": 1}
        assert dict(stats.by_rule) == {"default": 1}


async def test_bad_input_is_invalid_argument_whatever_the_policy_and_never_carceled(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    """A finding too large to escalate is checked on its sealed form: still before the
    policy judges it, so it is the caller's mistake, not a rejection."""
    await set_policy(bus, governed[1], REJECT_ALL)
    topic = unique("fnd")
    packet = finding_packet(topic, unique("task"))
    packet.finding.claim = "c" * (1024 * 1024 - 1500)
    before = await key_names(raw_redis)
    exc = await refused(bus.post_finding(packet))
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in exc.field_violations] == [("packet", "FINDING_TOO_LARGE")]
    bad_task = task_packet(topic)
    bad_task.task.priority = 5000
    exc = await refused(bus.task_queue(topic).post(bad_task))
    assert exc.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in exc.field_violations] == ["packet.task.priority"]
    assert await new_keys(raw_redis, before) == set()
    # The same post, valid: the policy's to refuse.
    packet.finding.claim = "short"
    assert (await refused(bus.post_finding(packet))).code == grpc.StatusCode.PERMISSION_DENIED


async def test_escalate_is_judged_with_the_callers_origin(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    task_id = unique("task")
    await bus.post_finding(finding_packet(unique("fnd"), task_id))
    await set_policy(
        bus,
        governed[1],
        """
default = "allow"
[[rules]]
id = "no-outsider-escalations"
decision = "reject"
reason = "outsiders do not page humans"
speech_act = "ESCALATE"
origin = "outsider-*"
""",
    )
    before = await key_names(raw_redis)
    exc = await refused(bus.escalate(task_id, ["f-1"], reason="look", origin="outsider-1"))
    assert exc.code == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(exc)
    assert (info["reason"], info["rule_id"], info["rule_reason"]) == (
        "POLICY_REJECTED",
        "no-outsider-escalations",
        "outsiders do not page humans",
    )
    fields = await carcel_entry(raw_redis, "escalations", info["carcel_entry_id"])
    assert fields[b"u"] == b"no-outsider-escalations"
    assert await bus.list_escalations(task_id) == []
    assert b"pb:{escalations}:log" not in await new_keys(raw_redis, before)
    # Another origin is not this rule's: escalated.
    escalation = await bus.escalate(task_id, ["f-1"], reason="look", origin="planner-1")
    assert escalation.receipt.cursor
    assert [e.packet.tracking_id for e in await bus.list_escalations(task_id)] == [
        escalation.packet.tracking_id
    ]


async def test_rules_by_content_type_topic_and_fields_allow_some_posts(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    await set_policy(bus, governed[1], SOME_ALLOWED)
    task_id = unique("task")
    open_queue = unique("open")
    posted = await bus.task_queue(open_queue).post(task_packet(open_queue))
    assert posted.status == task_service_pb2.TASK_STATUS_QUEUED
    closed = unique("closed")
    exc = await refused(bus.task_queue(closed).post(task_packet(closed)))
    assert error_info(exc)["rule_id"] == "default"

    topic = unique("fnd")
    guess = finding_packet(topic, task_id, confidence=0.2)
    exc = await refused(bus.post_finding(guess))
    await assert_rejected_into_carcel(
        raw_redis, exc, topic, guess.tracking_id, ("no-guesses", "findings need confidence")
    )
    assert (await bus.post_finding(finding_packet(topic, task_id))).created
    assert [f.packet.finding.confidence for f in await bus.list_findings(task_id)] == [
        pytest.approx(0.9)
    ]
    put = await bus.put_record(
        contents_pb2.SessionSummary(label="s", date="2026-11-30"), origin="outsider-1"
    )
    assert put.created


async def test_a_refused_post_retried_answers_the_same_even_after_a_reload(
    bus: packetbus.Client,
    governed: tuple[RunningServer, Path],
    channel: grpc.aio.Channel,
    raw_redis: redis_asyncio.Redis,
) -> None:
    await set_policy(bus, governed[1], REJECT_ALL)
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    queue = unique("q")
    request = task_service_pb2.PostTaskRequest(packet=task_packet(queue))
    answers = []
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PostTask(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        answers.append(rpc_error_info(caught.value))
    assert answers[0] == answers[1]
    assert await raw_redis.xlen(f"pb:{{{queue}}}:carcel") == 1
    assert dict((await bus.policy_stats(queue)).by_decision) == {"rejected": 1}

    # The same post under other request fields is not a retry.
    other = task_service_pb2.PostTaskRequest(packet=request.packet, max_attempts=7)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PostTask(other, timeout=10)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # A reload flips the decision for new posts; the refused one answers as it did.
    await set_policy(bus, governed[1], ALLOW_ALL)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PostTask(request, timeout=10)
    assert rpc_error_info(caught.value) == answers[0]
    assert not await raw_redis.exists(f"pb:{{{queue}}}:task:t-1")
    fresh = task_service_pb2.PostTaskRequest(packet=task_packet(queue))
    posted = await stub.PostTask(fresh, timeout=10)
    assert posted.created
    assert posted.task.status == task_service_pb2.TASK_STATUS_QUEUED


async def test_a_hold_rule_refuses_posts_that_cannot_be_held_and_writes_nothing(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    version = await set_policy(bus, governed[1], HOLD_ALL)
    queue = unique("q")
    before = await key_names(raw_redis)
    for what, call in (
        ("task", bus.task_queue(queue).post(task_packet(queue))),
        ("finding", bus.post_finding(finding_packet(queue, unique("task")))),
        (
            "record",
            bus.put_record(contents_pb2.SessionSummary(label="s"), origin="o-1", topic=queue),
        ),
    ):
        exc = await refused(call)
        assert exc.code == grpc.StatusCode.FAILED_PRECONDITION, what
        assert error_info(exc) == {
            "reason": "POLICY_HOLD_UNSUPPORTED",
            "rule_id": "review-everything",
            "rule_reason": "a guardian looks first",
            "policy_version": version,
        }
        assert f"a {what} cannot be held" in exc.message
    assert await new_keys(raw_redis, before) == set()


async def test_a_held_escalation_is_approvable_and_then_listed(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], channel: grpc.aio.Channel
) -> None:
    task_id = unique("task")
    await bus.post_finding(finding_packet(unique("fnd"), task_id))
    approver = packetbus.AgentIdentity.generate(unique("guardian"))
    await bus.register_identity(approver)
    await set_policy(bus, governed[1], HOLD_ALL)
    stub = finding_service_pb2_grpc.FindingServiceStub(channel)
    request = finding_service_pb2.EscalateRequest(
        task_id=task_id, origin="planner-1", reason="look", finding_ids=["f-1"]
    )
    held = await stub.Escalate(request, timeout=10)
    assert (held.held.rule_id, held.held.reason) == ("review-everything", "a guardian looks first")
    assert held.escalation.receipt.topic == "escalations"
    assert not held.escalation.receipt.cursor
    tracking_id = held.escalation.packet.tracking_id
    assert (await stub.Escalate(request, timeout=10)).held == held.held  # a retry: held still
    assert await bus.list_escalations(task_id) == []

    receipt = await bus.approve_packet("escalations", tracking_id, identity=approver)
    assert receipt.cursor
    [listed] = await bus.list_escalations(task_id)
    assert listed.packet.tracking_id == tracking_id
    assert listed.packet.origin == "planner-1"
