"""ExportPackets of packets in no topic's log (issue 17, item 5): `task_queue` exports
the queue's task packets, every status, in posting order, and `finding_task_id` a
task's finding packets, first posted first; each with its chain so far and a signed
head, in the export file's packet lines (`packetbus export --task-queue`,
`--finding-task-id`), verifiable offline; resumable with the same tokens; with the
permission of the listing (tasks.read on the queue, findings.read on the task id);
bad input is INVALID_ARGUMENT on its field."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.protobuf import timestamp_pb2

import packetbus
from packetbus._export import verify_export
from packetbus.v1 import contents_pb2, custody_pb2, custody_service_pb2
from packetbus_server import RunningServer, _keys
from tests._exporting import exporter_fixtures
from tests._identities import Issuer, client_as, guarded_fixtures, spiffe
from tests.conftest import unique, verified_actions
from tests.test_custody import cli, offline_verify

# Small replies: about one task packet per response, so an export takes several.
BUDGET = 400


exporter, bus = exporter_fixtures(BUDGET)


async def _queue_with_settled_tasks(bus: packetbus.Client) -> tuple[str, list[str]]:
    """A queue of 5 tasks: t-0 completed, t-1 failed (and queued again), t-2 claimed,
    t-3 and t-4 queued. Returns it and the tasks' tracking ids in posting order."""
    name = unique("exq")
    queue = bus.task_queue(name)
    posted = [
        await queue.post(packetbus.Task(id=f"t-{n}", description=f"do {n}"), origin="planner")
        for n in range(5)
    ]
    claims = []
    for _ in range(3):
        claimed = await queue.claim("worker-1", lease_seconds=60)
        assert claimed is not None
        claims.append(claimed)
    assert [c.task_id for c in claims] == ["t-0", "t-1", "t-2"]
    await claims[0].complete({"answer": 42})
    await claims[1].fail("not today")
    return name, [p.packet.packet.tracking_id for p in posted]


async def _all(
    bus: packetbus.Client, queue: str, **options: object
) -> list[custody_service_pb2.ExportPacketsResponse]:
    return [r async for r in bus.export(task_queue=queue, **options)]  # type: ignore[arg-type]


async def test_a_queue_exports_each_task_with_its_chain_and_a_signed_head(
    bus: packetbus.Client,
) -> None:
    queue, tracking_ids = await _queue_with_settled_tasks(bus)
    responses = await _all(bus, queue)
    assert len(responses) > 1  # BUDGET: several responses
    exported = [p for r in responses for p in r.packets]
    assert [p.packet.tracking_id for p in exported] == tracking_ids
    for stored, n in zip(exported, range(5), strict=True):
        state = await bus.task_queue(queue).get(f"t-{n}")
        # As GetTask shows it, with a signed head over the chain as it is now.
        assert stored.packet == state.packet.packet
        assert stored.content == state.packet.content
        assert (stored.receipt.topic, stored.receipt.cursor) == (queue, "")
        assert stored.HasField("custody_head")
        head = custody_pb2.CustodyHeadStatement.FromString(stored.custody_head.statement)
        assert head.length == len(stored.packet.chain_of_custody)
    actions = [await verified_actions(bus, stored) for stored in exported]
    assert [a[-2:] for a in actions[:3]] == [
        ["claimed", "completed"],
        ["claimed", "failed"],
        ["dispatched", "claimed"],
    ]
    assert all(a[-1] == "dispatched" for a in actions[3:])
    # Nothing of a topic's: no carcel entries, no decisions.
    assert not any(r.carcel_entries or r.decisions for r in responses)


async def test_the_cli_exports_a_queue_and_every_chain_verifies_offline(
    bus: packetbus.Client, exporter: RunningServer, tmp_path: Path
) -> None:
    queue, tracking_ids = await _queue_with_settled_tasks(bus)
    path = tmp_path / "tasks.jsonl"
    target = f"127.0.0.1:{exporter.port}"
    wrote = await asyncio.to_thread(
        cli, target, "export", "--task-queue", queue, "--out", str(path)
    )
    assert wrote.returncode == 0, wrote.stderr
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["keys"] + ["packet"] * 5
    assert [line["packet"]["packet"]["trackingId"] for line in lines[1:]] == tracking_ids

    offline = await asyncio.to_thread(offline_verify, path)
    assert offline.returncode == 0, offline.stdout
    report = await asyncio.to_thread(verify_export, path)
    assert (report.packets, report.verified, report.failures) == (5, 5, [])

    # One changed byte of a task's content fails it, by its tracking id.
    altered = tmp_path / "altered.jsonl"
    lines[2]["packet"]["packet"]["task"]["description"] = "do something else"
    altered.write_text("".join(json.dumps(line) + "\n" for line in lines))
    bad = await asyncio.to_thread(verify_export, altered)
    assert (bad.packets, bad.verified) == (5, 4)
    assert {what.split(" ")[0] for what, _ in bad.failures} == {tracking_ids[1]}

    # --topic and --task-queue name one source: argparse refuses both.
    both = await asyncio.to_thread(
        cli, target, "export", "--topic", "x", "--task-queue", queue, "--out", str(path)
    )
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


async def test_an_export_of_a_queue_resumes_after_any_response(bus: packetbus.Client) -> None:
    queue, tracking_ids = await _queue_with_settled_tasks(bus)
    responses = await _all(bus, queue)
    ids = [[p.packet.tracking_id for p in r.packets] for r in responses]
    for i, response in enumerate(responses):
        assert response.resume_token.startswith("e1.")
        rest = await _all(bus, queue, resume_token=response.resume_token)
        assert [p.packet.tracking_id for r in rest for p in r.packets] == [
            t for part in ids[i + 1 :] for t in part
        ]
    # Tasks posted since are in the rest of an export resumed from its last token.
    await bus.task_queue(queue).post(packetbus.Task(id="t-5"), origin="planner")
    later = await _all(bus, queue, resume_token=responses[-1].resume_token)
    assert [p.packet.task.id for r in later for p in r.packets] == ["t-5"]

    # A token only continues its own export: not another queue's, nor a topic's.
    for other in (
        custody_service_pb2.ExportPacketsRequest(task_queue=unique("exq")),
        custody_service_pb2.ExportPacketsRequest(topic=queue),
    ):
        other.resume_token = responses[0].resume_token
        with pytest.raises(packetbus.PacketbusError) as caught:
            _ = [
                r
                async for r in bus.export(
                    other.topic, task_queue=other.task_queue, resume_token=other.resume_token
                )
            ]
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [(v.field, v.reason) for v in caught.value.field_violations] == [
            ("resume_token", "RESUME_TOKEN_MISMATCH")
        ]
    assert tracking_ids  # the queue was not empty


async def test_tasks_of_one_score_resume_by_their_count(
    bus: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    # Tasks posted before index scores were unique share one (scripts/lib/order.lua):
    # the index orders them by task id, and a cursor counts them.
    name = unique("exq")
    queue = bus.task_queue(name)
    for task_id in ("c", "a", "d", "b"):
        await queue.post(packetbus.Task(id=task_id), origin="planner")
    await raw_redis.zadd(_keys.task_index(name), {t: 5 for t in ("a", "b", "c", "d")})

    responses = await _all(bus, name)
    assert [p.packet.task.id for r in responses for p in r.packets] == ["a", "b", "c", "d"]
    assert len(responses) == 4  # BUDGET: one task each
    for i, response in enumerate(responses):
        assert response.resume_token.split(".")[2:4] == ["t", f"5-{i + 1}"]
        rest = await _all(bus, name, resume_token=response.resume_token)
        assert [p.packet.task.id for r in rest for p in r.packets] == ["a", "b", "c", "d"][i + 1 :]


async def test_since_and_until_bound_when_a_task_was_posted(bus: packetbus.Client) -> None:
    queue, tracking_ids = await _queue_with_settled_tasks(bus)
    before = datetime.now(UTC) - timedelta(hours=1)
    assert [r async for r in bus.export(task_queue=queue, until=before)] == []
    after = await _all(bus, queue, since=before)
    assert [p.packet.tracking_id for r in after for p in r.packets] == tracking_ids


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"task_queue": "no spaces"}, [("task_queue", "TOPIC_FORMAT")]),
        ({"task_queue": "q" * 300}, [("task_queue", "LENGTH")]),
        (
            {"task_queue": "q", "topic": "t", "include_decisions": True},
            [("topic", "EXCLUSIVE"), ("include_decisions", "EXCLUSIVE")],
        ),
        (
            {"task_queue": "q", "include_carcel_entries": True},
            [("include_carcel_entries", "EXCLUSIVE")],
        ),
        ({"task_queue": "q", "resume_token": "e1.nope"}, [("resume_token", "RESUME_TOKEN")]),
        ({"task_queue": "q", "finding_task_id": "t"}, [("finding_task_id", "EXCLUSIVE")]),
        (
            {"finding_task_id": "t", "topic": "x", "since": timestamp_pb2.Timestamp(seconds=1)},
            [("topic", "EXCLUSIVE"), ("since", "EXCLUSIVE")],
        ),
        ({"finding_task_id": "t 1"}, [("finding_task_id", "CHARSET")]),
    ],
)
async def test_bad_input_is_invalid_argument_on_its_field(
    bus: packetbus.Client, request_fields: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    request = custody_service_pb2.ExportPacketsRequest(**request_fields)  # type: ignore[arg-type]
    stub = bus._custody  # the raw call: the client's export builds valid requests only
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [r async for r in stub.ExportPackets(request, timeout=10)]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = packetbus.PacketbusError.from_rpc_error(caught.value)
    assert [(v.field, v.reason) for v in error.field_violations] == expected


async def _post_findings(bus: packetbus.Client, task_id: str, count: int) -> list[str]:
    """`count` findings for `task_id`; their tracking ids, in posting order."""
    posted = [
        await bus.post_finding(
            contents_pb2.Finding(task_id=task_id, claim=f"claim {n}", confidence=0.5),
            origin="analyst-1",
        )
        for n in range(count)
    ]
    return [p.finding.packet.tracking_id for p in posted]


async def test_a_tasks_findings_export_verifies_offline_and_resumes(
    bus: packetbus.Client, exporter: RunningServer, tmp_path: Path
) -> None:
    task_id = unique("task")
    tracking_ids = await _post_findings(bus, task_id, 4)
    await _post_findings(bus, unique("task"), 2)  # another task's: not exported

    responses = [r async for r in bus.export(finding_task_id=task_id)]
    assert len(responses) > 1  # BUDGET: several responses
    exported = [p for r in responses for p in r.packets]
    assert [p.packet.tracking_id for p in exported] == tracking_ids
    assert all(p.HasField("custody_head") for p in exported)
    for i, response in enumerate(responses):
        rest = [
            r async for r in bus.export(finding_task_id=task_id, resume_token=response.resume_token)
        ]
        # (Each head is signed as it is sent: compared by tracking id.)
        assert [p.packet.tracking_id for r in rest for p in r.packets] == [
            p.packet.tracking_id for r in responses[i + 1 :] for p in r.packets
        ]
    # Not another task's export.
    with pytest.raises(packetbus.PacketbusError) as caught:
        _ = [
            r
            async for r in bus.export(
                finding_task_id=unique("task"), resume_token=responses[0].resume_token
            )
        ]
    assert [(v.field, v.reason) for v in caught.value.field_violations] == [
        ("resume_token", "RESUME_TOKEN_MISMATCH")
    ]

    path = tmp_path / "findings.jsonl"
    target = f"127.0.0.1:{exporter.port}"
    wrote = await asyncio.to_thread(
        cli, target, "export", "--finding-task-id", task_id, "--out", str(path)
    )
    assert wrote.returncode == 0, wrote.stderr
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["keys"] + ["packet"] * 4
    offline = await asyncio.to_thread(offline_verify, path)
    assert offline.returncode == 0, offline.stdout
    report = await asyncio.to_thread(verify_export, path)
    assert (report.packets, report.verified, report.failures) == (4, 4, [])


# -- authorization: tasks.read on the queue, as ListTasks ---------------------------------

WRITER = spiffe("writer-1")
READER = spiffe("reader-2")  # tasks.read on "open.*" queues only
AUDITOR = spiffe("auditor-3")  # audit.export on every topic, no tasks.read
GRANTS = {
    WRITER: [("tasks.post", "*"), ("findings.post", "*")],
    READER: [("tasks.read", "open.*"), ("findings.read", "open.*")],
    AUDITOR: [("audit.export", "*")],
}


issuer, guarded = guarded_fixtures(GRANTS, "export-tasks")


@pytest.mark.one_backend
async def test_exporting_a_queue_needs_tasks_read_on_it(
    guarded: RunningServer, issuer: Issuer
) -> None:
    target = f"127.0.0.1:{guarded.port}"
    open_queue, closed_queue = unique("open"), unique("closed")
    async with (
        await client_as(target, issuer.token(WRITER)) as writer,
        await client_as(target, issuer.token(READER)) as reader,
        await client_as(target, issuer.token(AUDITOR)) as auditor,
    ):
        for name in (open_queue, closed_queue):
            await writer.task_queue(name).post(packetbus.Task(id="t-1"), origin="writer-1")
        got = [p async for r in reader.export(task_queue=open_queue) for p in r.packets]
        assert [p.packet.task.id for p in got] == ["t-1"]

        refusals = [
            (reader, closed_queue, "tasks.read", closed_queue, READER),
            # audit.export on every topic exports no task queue.
            (auditor, open_queue, "tasks.read", open_queue, AUDITOR),
        ]
        for client, queue, permission, resource, principal in refusals:
            with pytest.raises(packetbus.PacketbusError) as caught:
                _ = [r async for r in client.export(task_queue=queue)]
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.error_info is not None
            assert caught.value.error_info.metadata == {
                "permission": permission,
                "resource": resource,
                "principal": principal,
            }
        # A task's findings: findings.read on its task id, as ListFindings.
        for task_id in (open_queue, closed_queue):
            await writer.post_finding(
                contents_pb2.Finding(task_id=task_id, claim="c", confidence=0.5), origin="writer-1"
            )
        found = [p async for r in reader.export(finding_task_id=open_queue) for p in r.packets]
        assert [p.packet.finding.task_id for p in found] == [open_queue]
        for client, principal in ((reader, READER), (auditor, AUDITOR)):
            with pytest.raises(packetbus.PacketbusError) as caught:
                _ = [r async for r in client.export(finding_task_id=closed_queue)]
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.error_info is not None
            assert caught.value.error_info.metadata == {
                "permission": "findings.read",
                "resource": closed_queue,
                "principal": principal,
            }
        # And tasks.read exports no topic: that is still audit.export's.
        with pytest.raises(packetbus.PacketbusError) as caught:
            _ = [r async for r in reader.export(open_queue)]
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.error_info is not None
        assert caught.value.error_info.metadata["permission"] == "audit.export"
