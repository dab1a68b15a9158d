"""Identity binds packets (issue 14, items 3 and 4): each packet of a batch is
authorized alone, and a packet's origin (and every field that names its author) is
the caller's agent id or one it may act for. Server and callers: tests/_binding.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import (
    consumer_group_service_pb2,
    contents_pb2,
    context_service_pb2,
    custody_service_pb2,
    finding_service_pb2,
    packet_service_pb2,
    record_service_pb2,
    task_service_pb2,
)
from packetbus_server import RunningServer, _keys
from tests._binding import (
    COORDINATOR,
    PERMISSION_DENIED,
    POLICY,
    WORKER_1,
    Caller,
    denied,
    first_response,
    packet_as,
    refused,
    serve_bound,
    stored_nowhere,
)
from tests._principals import TokenIssuer, error_info
from tests._store_keys import key_names, new_keys
from tests.conftest import unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend


@pytest.fixture(scope="module")
async def bound(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningServer, TokenIssuer]]:
    srv, issuer = await serve_bound(redis_url, tmp_path_factory.mktemp("binding"), POLICY)
    yield srv, issuer
    await srv.stop(grace=0)


@pytest.fixture
async def callers(
    bound: tuple[RunningServer, TokenIssuer],
) -> AsyncIterator[Callable[[str], Caller]]:
    srv, issuer = bound
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield lambda name: Caller(channel, issuer, name)


# -- Dispatch: each packet authorized alone ----------------------------------------------


async def test_each_packet_of_a_batch_is_authorized_alone_and_refused_ones_leave_nothing(
    callers: Callable[[str], Caller], raw_redis: redis_asyncio.Redis
) -> None:
    coordinator = callers(COORDINATOR)
    own, as_worker, as_planner = unique("jobs"), unique("jobs"), unique("jobs")
    elsewhere = unique("other")
    governed_allowed, governed_refused = unique("jobs.gov"), unique("jobs.gov")
    packets = [
        packet_as(own, "coordinator"),
        packet_as(as_worker, "worker-1"),  # agents.act_for on worker-*
        packet_as(as_planner, "planner"),  # not granted: spoofing
        packet_as(elsewhere, "coordinator"),  # no topics.publish on other.*
        packet_as(governed_allowed, "coordinator"),  # the policy rejects it: carceled
        packet_as(governed_refused, "planner"),  # refused before governance
    ]
    before = await key_names(raw_redis)

    results = await coordinator.dispatch(*packets)

    for i in (0, 1):
        assert results[i].WhichOneof("outcome") == "receipt", results[i]
        assert results[i].receipt.topic == packets[i].topic
    assert results[4].error.code == PERMISSION_DENIED  # the policy's rejection
    assert error_info(results[4].error)["reason"] != "PERMISSION_DENIED"
    for i, permission, resource in [
        (2, "agents.act_for", "planner"),
        (3, "topics.publish", elsewhere),
        (5, "agents.act_for", "planner"),
    ]:
        assert results[i].tracking_id == packets[i].tracking_id
        assert results[i].error.code == PERMISSION_DENIED
        assert error_info(results[i].error) == denied(COORDINATOR, permission, resource)
    assert "packets[2].origin" in results[2].error.message
    # Stored: located (on a single Redis the location key holds the record too).
    assert await raw_redis.get(_keys.packet_location(packets[0].tracking_id))
    assert await raw_redis.get(_keys.packet_location(packets[1].tracking_id))
    assert await raw_redis.xlen(_keys.topic_log(own)) == 1
    assert await raw_redis.xlen(_keys.topic_log(as_worker)) == 1
    assert await raw_redis.exists(_keys.carcel(governed_allowed))
    written = await new_keys(raw_redis, before)
    for i in (2, 3, 5):
        topic, tracking_id = packets[i].topic, packets[i].tracking_id
        assert await stored_nowhere(raw_redis, topic, tracking_id), i
        assert not [k for k in written if topic.encode() in k or tracking_id.encode() in k]

    # A retry of the same batch answers the same: the refused ones were never stored.
    again = await coordinator.dispatch(*packets)
    assert [r.WhichOneof("outcome") for r in again] == [r.WhichOneof("outcome") for r in results]
    assert again[0].receipt.cursor == results[0].receipt.cursor


async def test_a_coordinator_acts_for_its_workers_and_no_one_else(
    callers: Callable[[str], Caller],
) -> None:
    coordinator, worker = callers(COORDINATOR), callers(WORKER_1)
    topic = unique("jobs")
    as_workers = await coordinator.dispatch(
        packet_as(topic, "worker-1"), packet_as(topic, "worker-7")
    )
    assert [r.WhichOneof("outcome") for r in as_workers] == ["receipt", "receipt"]
    # A worker is granted no agents.act_for: it sends as itself only.
    [own] = await worker.dispatch(packet_as(topic, "worker-1"))
    [spoofed] = await worker.dispatch(packet_as(topic, "coordinator"))
    [sibling] = await worker.dispatch(packet_as(topic, "worker-2"))
    assert own.WhichOneof("outcome") == "receipt"
    assert error_info(spoofed.error) == denied(WORKER_1, "agents.act_for", "coordinator")
    assert error_info(sibling.error) == denied(WORKER_1, "agents.act_for", "worker-2")


# -- Every other write that names its author -------------------------------------------


def _refusals(worker: Caller, as_whom: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call per write path, naming `as_whom` as its author; everything else valid."""
    queue, task_id = unique("jobs"), unique("task")
    task = packet_as(queue, as_whom)
    task.task.CopyFrom(packetbus.Task(id=task_id, description="do it"))
    finding = packet_as(unique("jobs"), as_whom)
    finding.finding.CopyFrom(packetbus.Finding(task_id=task_id, id="f-1", claim="x", confidence=1))
    record = packet_as(unique("records"), as_whom)
    record.session_summary.CopyFrom(
        contents_pb2.SessionSummary(label=unique("s"), date="2026-11-30", summary="ok")
    )
    body = b"notes"
    header = context_service_pb2.PutContextHeader(
        scope="team",
        name=unique("doc"),
        size=len(body),
        sha256=hashlib.sha256(body).digest(),
        author=as_whom,
    )
    entry = context_service_pb2.LogEntry(entry_id=str(uuid.uuid4()), text="remember")

    async def uploads() -> AsyncIterator[context_service_pb2.PutContextRequest]:
        yield context_service_pb2.PutContextRequest(header=header)
        yield context_service_pb2.PutContextRequest(chunk=body)

    m = worker.metadata
    return {
        "packet.origin@PostTask": lambda: worker.tasks.PostTask(
            task_service_pb2.PostTaskRequest(packet=task), metadata=m
        ),
        "packet.origin@PostFinding": lambda: worker.findings.PostFinding(
            finding_service_pb2.PostFindingRequest(packet=finding), metadata=m
        ),
        "packet.origin@PutRecord": lambda: worker.records.PutRecord(
            record_service_pb2.PutRecordRequest(packet=record), metadata=m
        ),
        "header.author@PutContext": lambda: worker.context.PutContext(uploads(), metadata=m),
        "author@DeleteContext": lambda: worker.context.DeleteContext(
            context_service_pb2.DeleteContextRequest(scope="team", name="doc", author=as_whom),
            metadata=m,
        ),
        "agent@AppendMemory": lambda: worker.context.AppendMemory(
            context_service_pb2.AppendMemoryRequest(agent=as_whom, entry=entry), metadata=m
        ),
        "agent@AppendTrace": lambda: worker.context.AppendTrace(
            context_service_pb2.AppendTraceRequest(task_id=task_id, agent=as_whom, entry=entry),
            metadata=m,
        ),
        "worker@ClaimTask": lambda: worker.tasks.ClaimTask(
            task_service_pb2.ClaimTaskRequest(queue=queue, worker=as_whom), metadata=m
        ),
        "origin@Escalate": lambda: worker.findings.Escalate(
            finding_service_pb2.EscalateRequest(
                task_id=task_id, origin=as_whom, reason="help", finding_ids=["f-1"]
            ),
            metadata=m,
        ),
    }


async def test_every_write_that_names_an_agent_is_bound_to_the_caller(
    callers: Callable[[str], Caller], raw_redis: redis_asyncio.Redis
) -> None:
    worker = callers(WORKER_1)
    for name, call in _refusals(worker, "planner").items():
        field = name.partition("@")[0]
        before = await key_names(raw_redis)
        code, info, message = await refused(call())
        assert code == grpc.StatusCode.PERMISSION_DENIED, name
        assert info == denied(WORKER_1, "agents.act_for", "planner"), name
        assert message.startswith(f"{field} names agent 'planner'"), (name, message)
        assert await new_keys(raw_redis, before) == set(), name

    # The same writes naming the caller's own agent go through.
    calls = _refusals(worker, "worker-1")
    for name in [
        "packet.origin@PostTask",
        "packet.origin@PostFinding",
        "packet.origin@PutRecord",
        "header.author@PutContext",
        "agent@AppendMemory",
        "agent@AppendTrace",
        "origin@Escalate",  # its finding f-1 was posted just before
        "author@DeleteContext",
    ]:
        await calls[name]()
    claim = await calls["worker@ClaimTask"]()
    assert claim.HasField("task")


async def test_a_coordinator_posts_tasks_as_its_worker(
    callers: Callable[[str], Caller],
) -> None:
    coordinator = callers(COORDINATOR)
    task = packet_as(unique("jobs"), "worker-1")
    task.task.CopyFrom(packetbus.Task(id="t-1", description="do it"))
    posted = await coordinator.tasks.PostTask(
        task_service_pb2.PostTaskRequest(packet=task), metadata=coordinator.metadata
    )
    assert posted.created
    task.origin, task.tracking_id, task.task.id = "planner", str(uuid.uuid4()), "t-2"
    code, info, _ = await refused(
        coordinator.tasks.PostTask(
            task_service_pb2.PostTaskRequest(packet=task), metadata=coordinator.metadata
        )
    )
    assert (code, info) == (
        grpc.StatusCode.PERMISSION_DENIED,
        denied(COORDINATOR, "agents.act_for", "planner"),
    )


# -- The rules checked inside the services ----------------------------------------------


async def test_the_in_service_rules_name_their_permission_and_resource(
    callers: Callable[[str], Caller], raw_redis: redis_asyncio.Redis
) -> None:
    worker, coordinator = callers(WORKER_1), callers(COORDINATOR)
    outside = unique("other")

    async def pulls() -> AsyncIterator[consumer_group_service_pb2.PullRequest]:
        yield consumer_group_service_pb2.PullRequest(
            subscription=consumer_group_service_pb2.PullSubscription(
                topic=outside, group="g", consumer="worker-1"
            )
        )
        await asyncio.sleep(30)

    record = packet_as(unique("records"), "worker-1")
    record.swarm_registry.CopyFrom(contents_pb2.SwarmRegistry(swarm_id="s-1"))
    body = b"x"

    async def uploads() -> AsyncIterator[context_service_pb2.PutContextRequest]:
        header = context_service_pb2.PutContextHeader(
            scope="secret", name="doc", size=1, sha256=hashlib.sha256(body).digest()
        )
        header.author = "worker-1"
        yield context_service_pb2.PutContextRequest(header=header)
        yield context_service_pb2.PutContextRequest(chunk=body)

    m = worker.metadata
    cases: list[tuple[Callable[[], Awaitable[Any]], str, str]] = [
        (
            lambda: first_response(worker.groups.Pull(pulls(), metadata=m)),
            "topics.consume",
            outside,
        ),
        (lambda: worker.context.PutContext(uploads(), metadata=m), "context.write", "secret"),
        (
            lambda: worker.records.PutRecord(
                record_service_pb2.PutRecordRequest(packet=record), metadata=m
            ),
            "records.write",
            "swarm_registry",
        ),
    ]
    for call, permission, resource in cases:
        before = await key_names(raw_redis)
        code, info, _ = await refused(call())
        assert code == grpc.StatusCode.PERMISSION_DENIED, permission
        assert info == denied(WORKER_1, permission, resource)
        assert await new_keys(raw_redis, before) == set(), permission

    # GetPacket and VerifyCustody: without the permission on the packet's topic, the
    # packet is not there for the caller (its existence is not revealed).
    mine = unique("jobs")
    [receipt] = await worker.dispatch(packet_as(mine, "worker-1"))
    [theirs] = await coordinator.dispatch(packet_as(mine, "coordinator"))
    assert receipt.WhichOneof("outcome") == theirs.WhichOneof("outcome") == "receipt"
    got = await worker.packets.GetPacket(
        packet_service_pb2.GetPacketRequest(tracking_id=theirs.tracking_id), metadata=m
    )
    assert got.packet.packet.origin == "coordinator"
    never = str(uuid.uuid4())
    for tracking_id in (theirs.tracking_id, never):
        for call in (
            coordinator.packets.GetPacket(
                packet_service_pb2.GetPacketRequest(tracking_id=tracking_id),
                metadata=coordinator.metadata,
            ),
            coordinator.custody.VerifyCustody(
                custody_service_pb2.VerifyCustodyRequest(tracking_id=tracking_id),
                metadata=coordinator.metadata,
            ),
        ):
            code, info, message = await refused(call)
            assert (code, info) == (grpc.StatusCode.NOT_FOUND, {})
            assert message == f"no packet with tracking_id {tracking_id} (never stored, or expired)"
    verified = await worker.custody.VerifyCustody(
        custody_service_pb2.VerifyCustodyRequest(tracking_id=theirs.tracking_id), metadata=m
    )
    assert verified.verified
