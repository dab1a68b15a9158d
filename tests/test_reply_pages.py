"""Every listing of many large items ends its reply at the byte budget and hands out
a token for the rest. Each test stores more than one 16 MiB message's worth, then
reads it all through the client, and page by page through a channel with gRPC's
default 4 MiB receive limit (what a client in another language has unless it sets
more): every page fits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

import packetbus
from packetbus._context import new_entry
from packetbus.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    context_service_pb2,
    context_service_pb2_grpc,
    finding_service_pb2,
    finding_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
    record_service_pb2,
    record_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)
from packetbus_server import RunningServer
from packetbus_server._limits import Limits
from tests.conftest import unique
from tests.test_policy import bus, governed, spawn_packet

__all__ = ["bus", "governed"]  # the governed server's fixtures, used here

BUDGET = Limits().reply_budget_bytes
# Together more than the 16 MiB message limit.
TOTAL = 18 * 1024 * 1024


@pytest.fixture
async def default_channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    """A channel with gRPC's default receive limit (4 MiB)."""
    async with grpc.aio.insecure_channel(target) as channel:
        yield channel


async def test_tasks_list_in_pages_by_bytes(
    client: packetbus.Client, default_channel: grpc.aio.Channel
) -> None:
    queue = client.task_queue(unique("queue"))
    size = 900 * 1024
    posted = [
        (
            await queue.post(packetbus.Task(id=f"t{i:02}", description="d" * size), origin="o")
        ).task_id
        for i in range(TOTAL // size + 1)
    ]
    assert [t.task_id for t in await queue.tasks()] == posted

    stub = task_service_pb2_grpc.TaskServiceStub(default_channel)
    seen, token, pages = [], "", 0
    while True:
        page = await stub.ListTasks(
            task_service_pb2.ListTasksRequest(queue=queue.name, page_token=token)
        )
        assert page.ByteSize() <= BUDGET
        seen += [t.task_id for t in page.tasks]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == posted
    assert pages >= TOTAL // BUDGET


async def test_findings_list_in_pages_by_bytes(
    client: packetbus.Client, default_channel: grpc.aio.Channel
) -> None:
    task = unique("task")
    size = 900 * 1024
    posted = []
    for i in range(TOTAL // size + 1):
        finding = packetbus.Finding(task_id=task, id=f"f{i:02}", claim="c" * size, confidence=0.5)
        posted.append((await client.post_finding(finding, origin="o")).finding.packet.finding.id)
    assert [f.packet.finding.id for f in await client.list_findings(task)] == posted

    stub = finding_service_pb2_grpc.FindingServiceStub(default_channel)
    seen, token = [], ""
    while True:
        page = await stub.ListFindings(
            finding_service_pb2.ListFindingsRequest(task_id=task, page_token=token)
        )
        assert 0 < page.ByteSize() <= BUDGET
        seen += [f.packet.finding.id for f in page.findings]
        token = page.next_page_token
        if not token:
            break
    assert seen == posted

    # Escalations carry their findings: each over 900 KiB, more than 16 MiB together.
    escalated = [
        (await client.escalate(task, [f], reason="r", origin="o")).packet.tracking_id
        for f in posted
    ]
    assert [e.packet.tracking_id for e in await client.list_escalations(task)] == escalated
    seen, token = [], ""
    while True:
        escalations = await stub.ListEscalations(
            finding_service_pb2.ListEscalationsRequest(task_id=task, page_token=token)
        )
        assert escalations.ByteSize() <= BUDGET
        seen += [e.packet.tracking_id for e in escalations.escalations]
        token = escalations.next_page_token
        if not token:
            break
    assert seen == escalated


async def test_records_list_in_pages_by_bytes(
    client: packetbus.Client, default_channel: grpc.aio.Channel
) -> None:
    label = unique("big")
    size = 900 * 1024
    ids = [
        (
            await client.put_record(
                packetbus.SessionSummary(label=f"{label}-{i}", summary="s" * size), origin="o"
            )
        ).record_id
        for i in range(TOTAL // size + 1)
    ]
    stub = record_service_pb2_grpc.RecordServiceStub(default_channel)
    seen: list[str] = []
    token = ""
    while len(seen) < len(ids):
        page = await stub.ListRecords(
            record_service_pb2.ListRecordsRequest(
                kind=record_service_pb2.RECORD_KIND_SESSION_SUMMARY, page_token=token
            )
        )
        assert 0 < page.ByteSize() <= BUDGET
        seen += [
            r.packet.tracking_id
            for r in page.records
            if r.packet.session_summary.label.startswith(label)
        ]
        token = page.next_page_token
        assert token or len(seen) == len(ids)
    assert seen == ids[::-1]


async def test_memory_and_traces_list_in_pages_by_bytes(
    client: packetbus.Client, default_channel: grpc.aio.Channel
) -> None:
    agent, task = unique("agent"), unique("task")
    size = 60 * 1024
    count = TOTAL // size + 1
    entries = [new_entry("m" * size) for _ in range(count)]
    for entry in entries:
        await client.append_memory(agent, entry)
        await client.append_trace(task, agent, entry)
    ids = [e.entry_id for e in entries]
    assert [e.entry_id for e in await client.list_memory(agent)] == ids[::-1]
    assert [e.entry_id for e in await client.list_traces(task, agent)] == ids
    assert [e.entry_id for e in await client.list_memory(agent, limit=3)] == ids[::-1][:3]

    stub = context_service_pb2_grpc.ContextServiceStub(default_channel)
    # Entries appended between pages move every offset: the next page still starts
    # right after the last entry returned, nothing repeated, nothing skipped.
    seen, token, added = [], "", []
    while True:
        page = await stub.ListMemory(
            context_service_pb2.ListMemoryRequest(agent=agent, page_token=token)
        )
        assert 0 < page.ByteSize() <= BUDGET
        seen += [e.entry_id for e in page.entries]
        token = page.next_page_token
        if not token:
            break
        newer = new_entry("n")
        await client.append_memory(agent, newer)
        added.append(newer.entry_id)
    assert seen == ids[::-1]
    assert len(added) >= TOTAL // BUDGET

    seen, token = [], ""
    while True:
        traces = await stub.ListTraces(
            context_service_pb2.ListTracesRequest(task_id=task, agent=agent, page_token=token)
        )
        assert 0 < traces.ByteSize() <= BUDGET
        seen += [e.entry_id for e in traces.entries]
        token = traces.next_page_token
        if not token:
            break
    assert seen == ids


async def test_the_global_context_lists_in_pages_by_bytes(
    client: packetbus.Client, default_channel: grpc.aio.Channel
) -> None:
    prefix = f"big-{uuid.uuid4().hex[:8]}"
    size = 64 * 1024 - 64
    keys = [f"{prefix}-{i:03}" for i in range(TOTAL // size + 1)]
    try:
        for key in keys:
            await client.set_global_context(key, "v" * size)
        listed = await client.list_global_context()
        assert sorted(k for k in listed if k.startswith(prefix)) == keys

        stub = context_service_pb2_grpc.ContextServiceStub(default_channel)
        seen, token = [], ""
        while True:
            page = await stub.ListGlobalContext(
                context_service_pb2.ListGlobalContextRequest(page_token=token)
            )
            assert 0 < page.ByteSize() <= BUDGET
            seen += sorted(k for k in page.entries if k.startswith(prefix))
            token = page.next_page_token
            if not token:
                break
        assert seen == keys
    finally:
        for key in keys:
            await client.delete_global_context(key)


@pytest.mark.parametrize("token", ["x", "1-0", "٣", "12:not-a-uuid", "99999999999:0"])
async def test_page_tokens_not_from_a_listing_are_invalid(
    default_channel: grpc.aio.Channel, token: str
) -> None:
    findings = finding_service_pb2_grpc.FindingServiceStub(default_channel)
    context = context_service_pb2_grpc.ContextServiceStub(default_channel)
    tasks = task_service_pb2_grpc.TaskServiceStub(default_channel)
    calls = [
        findings.ListFindings(
            finding_service_pb2.ListFindingsRequest(task_id="t", page_token=token)
        ),
        findings.DetectConflicts(
            finding_service_pb2.DetectConflictsRequest(task_id="t", page_token=token)
        ),
        context.ListMemory(context_service_pb2.ListMemoryRequest(agent="a", page_token=token)),
        context.ListTraces(
            context_service_pb2.ListTracesRequest(task_id="t", agent="a", page_token=token)
        ),
        tasks.ListTaskResults(
            task_service_pb2.ListTaskResultsRequest(queue="q", task_id="t", page_token=token)
        ),
    ]
    if not token[:1].isdigit() or ":" not in token:
        calls.append(
            tasks.ListTasks(task_service_pb2.ListTasksRequest(queue="q", page_token=token))
        )
    if token != "1-0":
        calls.append(
            findings.ListEscalations(finding_service_pb2.ListEscalationsRequest(page_token=token))
        )
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_held_packets_list_in_pages_by_bytes(
    bus: packetbus.Client, governed: tuple[RunningServer, Path]
) -> None:
    topic = unique("gov")
    packets = []
    for _ in range(20):
        packet = spawn_packet(topic)
        packet.data.update({"blob": "h" * 900 * 1024})
        packets.append(packet)
    for offset in range(0, len(packets), 4):
        results = await bus.dispatch_batch(packets[offset : offset + 4])
        assert [r.WhichOneof("outcome") for r in results] == ["held"] * len(results)
    sent = [p.tracking_id for p in packets]
    assert [h.packet.packet.tracking_id async for h in bus.list_held_packets(topic)] == sent

    async with grpc.aio.insecure_channel(f"127.0.0.1:{governed[0].port}") as channel:
        stub = policy_service_pb2_grpc.PolicyServiceStub(channel)
        seen, token = [], ""
        while True:
            page = await stub.ListHeldPackets(
                policy_service_pb2.ListHeldPacketsRequest(topic=topic, page_token=token)
            )
            assert 0 < page.ByteSize() <= BUDGET
            seen += [h.packet.packet.tracking_id for h in page.packets]
            token = page.next_page_token
            if not token:
                break
    assert seen == sent


async def test_conflicts_list_in_pages_and_a_post_answers_what_fits(
    client: packetbus.Client, default_channel: grpc.aio.Channel
) -> None:
    # Each conflict carries its subject: here a claim of 600 KiB. Six findings and
    # six refutations of it conflict pairwise: 36 conflicts, about 21 MiB.
    task = unique("task")
    claim = "c" * 600 * 1024
    answers = []
    for i in range(12):
        finding = packetbus.Finding(
            task_id=task, id=f"f{i:02}", claim=claim, confidence=0.5, refutes=i % 2 == 1
        )
        answers.append(await client.post_finding(finding, origin="o"))
    # The last post conflicts with the six findings before it: more than fit in one
    # reply beside the finding itself, so it answers with the first ones and says so.
    last = answers[-1]
    assert 0 < len(last.conflicts) < 6
    assert last.conflicts_truncated
    assert last.ByteSize() <= BUDGET
    assert not answers[1].conflicts_truncated

    pairs = [(c.first_finding_id, c.second_finding_id) for c in await client.detect_conflicts(task)]
    assert len(pairs) == len(set(pairs)) == 36

    stub = finding_service_pb2_grpc.FindingServiceStub(default_channel)
    seen, token = [], ""
    while True:
        page = await stub.DetectConflicts(
            finding_service_pb2.DetectConflictsRequest(task_id=task, page_token=token)
        )
        assert 0 < page.ByteSize() <= BUDGET
        seen += [(c.first_finding_id, c.second_finding_id) for c in page.conflicts]
        token = page.next_page_token
        if not token:
            break
    assert seen == pairs


async def test_agents_list_in_pages_by_bytes(
    client: packetbus.Client, default_channel: grpc.aio.Channel
) -> None:
    # 64 labels of 1,024 characters: about 68 KiB an agent; 70 of them pass 4 MiB.
    role = unique("role")
    labels = {f"l{i:02}": "v" * 1024 for i in range(64)}
    ids = sorted(f"{role}-{i:03}" for i in range(70))
    try:
        for agent_id in ids:
            await client.register_agent(agent_id, role=role, labels=labels, ttl=600)
        assert [a.id for a in await client.list_agents(role=role)] == ids

        stub = agent_service_pb2_grpc.AgentServiceStub(default_channel)
        seen, token, pages = [], "", 0
        while True:
            page = await stub.ListAgents(
                agent_service_pb2.ListAgentsRequest(role=role, page_size=1000, page_token=token)
            )
            assert 0 < page.ByteSize() <= BUDGET
            seen += [a.id for a in page.agents]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert (seen, pages) == (ids, 2)
    finally:
        for agent_id in ids:
            await client.deregister_agent(agent_id, allow_missing=True)
