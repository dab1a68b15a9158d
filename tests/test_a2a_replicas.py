"""A2A tasks across gateway replicas: streams that resume elsewhere, a replica killed
mid-task, follow-up messages (input required) and cancels recorded on another
replica. Real `packetbus serve`, real `packetbus a2a serve` processes, the
unmodified a2a-sdk client, and a packetbus agent using the helper."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from a2a.client import Client as A2AClient
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)

import packetbus
from packetbus import EARLIEST, SpeechAct
from packetbus._export import verify_export
from packetbus._inbox import inbox_topic
from packetbus_a2a import A2ARequest
from packetbus_a2a.answers import ANSWERS_KEY
from packetbus_a2a.event_stream import DOCUMENTS_SCOPE, TopicEventStream, events_topic
from packetbus_a2a.task_store import SCOPE, TaskStoreVersion
from packetbus_a2a.wire import reply_address, tracking_id
from tests._a2a import answering
from tests.conftest import run_cli, unique
from tests.test_a2a_gateway import a2a_client as gateway_client
from tests.test_a2a_gateway import responses, start_gateway, stop, texts, user_message

pytestmark = pytest.mark.one_backend

Serve = Callable[[A2ARequest], Awaitable[None]]


@contextlib.asynccontextmanager
async def running_agent(client: packetbus.Client, serve: Serve) -> AsyncIterator[str]:
    """A registered agent whose every request `serve` answers: its id."""
    agent_id = unique("a2a-replica")
    async with answering(client, agent_id, serve, role="stepper"):
        yield agent_id


@contextlib.asynccontextmanager
async def a2a_client(url: str, *, streaming: bool = False) -> AsyncIterator[A2AClient]:
    """The a2a-sdk client (JSON-RPC) waiting up to 30 s between events: a takeover
    waits for the lost replica's lease to expire (5 s)."""
    async with gateway_client(url, streaming=streaming, wait=30) as a2a:
        yield a2a


@contextlib.contextmanager
def two_replicas(target: str) -> Iterator[tuple[Replica, Replica]]:
    """Two gateway processes on one packetbus server; each stopped (drained) at
    the end unless a test killed it."""
    first, second = (Replica(*start_gateway(target)) for _ in range(2))
    try:
        yield first, second
    finally:
        for replica in (first, second):
            if replica.process.poll() is None:
                stop(replica.process)


@dataclass(frozen=True)
class Replica:
    process: subprocess.Popen[str]
    url: str

    def agent_url(self, agent_id: str) -> str:
        return f"{self.url}/agents/{agent_id}"


def kind(response: StreamResponse) -> str:
    return response.WhichOneof("payload") or ""


async def until_status(stream: AsyncIterator[StreamResponse], text: str) -> list[StreamResponse]:
    """Read `stream` up to and including the status update whose message is `text`."""
    seen: list[StreamResponse] = []
    async with asyncio.timeout(20):
        async for response in stream:
            seen.append(response)
            update = response.status_update
            if kind(response) == "status_update" and texts(update.status.message) == [text]:
                return seen
    raise AssertionError(f"the stream ended before status {text!r}: {seen}")


async def test_stream_resumes_on_another_replica_after_the_first_is_killed(
    target: str, client: packetbus.Client
) -> None:
    go_on = asyncio.Event()

    async def serve(request: A2ARequest) -> None:
        await request.status("step 0")
        await go_on.wait()
        for i in (1, 2, 3):
            await request.artifact(f"part {i}", f"text {i}")
        await request.finish("all done")

    with two_replicas(target) as (first, second):
        async with running_agent(client, serve) as agent_id:
            async with a2a_client(first.agent_url(agent_id), streaming=True) as a2a:
                stream = a2a.send_message(SendMessageRequest(message=user_message("count")))
                seen = await until_status(stream, "step 0")
                task_id = seen[0].task.id
                first.process.kill()  # no drain: the replica following the task is gone
                first.process.wait(timeout=10)
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]

            async with a2a_client(second.agent_url(agent_id), streaming=True) as other:
                events = other.subscribe(SubscribeToTaskRequest(id=task_id))
                async with asyncio.timeout(30):
                    snapshot = await anext(events)
                    # Answers arrive only now: the second replica must take the task over
                    # (once the first one's lease expires) and apply them.
                    go_on.set()
                    rest = [response async for response in events]
                stored = await other.get_task(GetTaskRequest(id=task_id))

    assert kind(snapshot) == "task"
    assert snapshot.task.status.state == TaskState.TASK_STATE_WORKING
    assert texts(snapshot.task.status.message) == ["step 0"]
    assert list(snapshot.task.artifacts) == []
    # Every remaining event exactly once, in order.
    assert [kind(r) for r in rest] == ["artifact_update"] * 3 + ["status_update"]
    assert [r.artifact_update.artifact.name for r in rest[:3]] == ["part 1", "part 2", "part 3"]
    assert [[p.text for p in r.artifact_update.artifact.parts] for r in rest[:3]] == [
        ["text 1"],
        ["text 2"],
        ["text 3"],
    ]
    assert rest[3].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert texts(rest[3].status_update.status.message) == ["all done"]
    # The task as stored: each answer applied once (status, 3 artifacts, final).
    assert stored.status.state == TaskState.TASK_STATE_COMPLETED
    assert [a.name for a in stored.artifacts] == ["part 1", "part 2", "part 3"]
    assert stored.metadata.fields[ANSWERS_KEY].number_value == 5

    # The event topic holds each version once, in order, ending with the final one.
    versions = await logged_versions(client, agent_id, task_id)
    assert versions == sorted(set(versions))
    document = await client.get_context(SCOPE, f"{agent_id}/{task_id}")
    assert versions[-1] == document.document.version


async def logged_versions(client: packetbus.Client, agent_id: str, task_id: str) -> list[int]:
    """The versions of the events on the task's topic, up to its final event."""
    versions: list[int] = []
    reader = TopicEventStream(client, agent_id)
    async with client.subscribe(events_topic(agent_id, task_id), start=EARLIEST) as log:
        async with asyncio.timeout(10):
            async for stored in log:
                event = await reader.read(task_id, stored.packet)
                assert event is not None
                versions.append(TaskStoreVersion.number_of(event.version))
                state = getattr(event.event, "status", None)
                if state is not None and state.state == TaskState.TASK_STATE_COMPLETED:
                    return versions
    raise AssertionError("unreachable")


async def test_stream_resumes_elsewhere_while_the_first_replica_drives(
    target: str, client: packetbus.Client
) -> None:
    two_sent, go_on = asyncio.Event(), asyncio.Event()

    async def serve(request: A2ARequest) -> None:
        await request.status("step 0")
        await request.artifact("part 1", "text 1")
        await request.artifact("part 2", "text 2")
        two_sent.set()
        await go_on.wait()
        await request.artifact("part 3", "text 3")
        await request.finish("all done")

    with two_replicas(target) as (first, second):
        async with running_agent(client, serve) as agent_id:
            async with a2a_client(first.agent_url(agent_id), streaming=True) as a2a:
                stream = a2a.send_message(SendMessageRequest(message=user_message("count")))
                seen = await until_status(stream, "step 0")
                task_id = seen[0].task.id
                await stream.aclose()  # type: ignore[attr-defined]  # the client goes away
            await asyncio.wait_for(two_sent.wait(), 10)
            async with a2a_client(second.agent_url(agent_id), streaming=True) as other:
                async with asyncio.timeout(20):
                    # The first replica still follows the task: wait until it applied both.
                    while len((await other.get_task(GetTaskRequest(id=task_id))).artifacts) < 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    events = other.subscribe(SubscribeToTaskRequest(id=task_id))
                    snapshot = await anext(events)
                    go_on.set()
                    rest = [response async for response in events]

    assert kind(snapshot) == "task"
    assert [a.name for a in snapshot.task.artifacts] == ["part 1", "part 2"]
    assert [kind(r) for r in rest] == ["artifact_update", "status_update"]
    assert rest[0].artifact_update.artifact.name == "part 3"
    assert rest[1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    versions = await logged_versions(client, agent_id, task_id)
    assert versions == sorted(set(versions))


async def test_follow_up_message_after_input_required(
    target: str, client: packetbus.Client
) -> None:
    async def serve(request: A2ARequest) -> None:
        if request.text == "translate this":
            await request.status("reading")
            await request.ask("into which language?")
        else:
            await request.artifact("translation", f"[{request.text}] this")
            await request.finish("translated")

    with two_replicas(target) as (first, second):
        async with running_agent(client, serve) as agent_id:
            async with a2a_client(first.agent_url(agent_id)) as a2a:
                [asked] = await responses(a2a, user_message("translate this"))
            assert asked.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            assert texts(asked.task.status.message) == ["into which language?"]

            # The reply goes to another replica; only the new answers are applied.
            reply = user_message("french")
            reply.task_id, reply.context_id = asked.task.id, asked.task.context_id
            async with a2a_client(second.agent_url(agent_id), streaming=True) as other:
                events = await responses(other, reply)
                stored = await other.get_task(GetTaskRequest(id=asked.task.id))

    assert [kind(e) for e in events][-2:] == ["artifact_update", "status_update"]
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert stored.status.state == TaskState.TASK_STATE_COMPLETED
    assert texts(stored.status.message) == ["translated"]
    assert [a.name for a in stored.artifacts] == ["translation"]
    assert [p.text for p in stored.artifacts[0].parts] == ["[french] this"]
    assert stored.metadata.fields[ANSWERS_KEY].number_value == 4
    assert [texts(m) for m in stored.history if m.role == Role.ROLE_USER] == [
        ["translate this"],
        ["french"],
    ]


async def test_cancel_on_another_replica_reaches_the_agent(
    target: str, client: packetbus.Client
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def serve(request: A2ARequest) -> None:
        await request.status("working on it")
        started.set()

    with two_replicas(target) as (first, second):
        async with running_agent(client, serve) as agent_id:
            async with a2a_client(first.agent_url(agent_id)) as a2a:
                [response] = await responses(
                    a2a, user_message("a long job"), return_immediately=True
                )
                task_id = response.task.id
                await asyncio.wait_for(started.wait(), 10)
            async with a2a_client(second.agent_url(agent_id)) as other:
                canceled = await other.cancel_task(CancelTaskRequest(id=task_id))
            assert canceled.status.state == TaskState.TASK_STATE_CANCELED
            cancel = await client.verify_custody(tracking_id(task_id, "cancel"))
            assert cancel.verified
            assert cancel.packet.packet.speech_act == SpeechAct.SPEECH_ACT_CANCEL
            assert cancel.packet.packet.reply_with == task_id
            cancelled.set()
            async with a2a_client(first.agent_url(agent_id)) as a2a:
                assert (await a2a.get_task(GetTaskRequest(id=task_id))).status.state == (
                    TaskState.TASK_STATE_CANCELED
                )
    assert cancelled.is_set()


async def test_an_event_over_the_packet_limit_reaches_another_replica(
    target: str, client: packetbus.Client
) -> None:
    go_on = asyncio.Event()
    blob = bytes(range(256)) * 8192  # 2 MiB: the event cannot be one packet

    async def serve(request: A2ARequest) -> None:
        await request.status("step 0")
        await go_on.wait()
        await request.artifact("blob", Part(raw=blob, media_type="application/octet-stream"))
        await request.finish("all done")

    with two_replicas(target) as (first, second):
        async with (
            running_agent(client, serve) as agent_id,
            a2a_client(first.agent_url(agent_id), streaming=True) as a2a,
            a2a_client(second.agent_url(agent_id), streaming=True) as other,
        ):
            stream = a2a.send_message(SendMessageRequest(message=user_message("big")))
            seen = await until_status(stream, "step 0")
            task_id = seen[0].task.id
            events = other.subscribe(SubscribeToTaskRequest(id=task_id))
            async with asyncio.timeout(30):
                snapshot = await anext(events)
                go_on.set()
                rest = [response async for response in events]
            await stream.aclose()  # type: ignore[attr-defined]

    assert kind(snapshot) == "task"
    assert [kind(r) for r in rest] == ["artifact_update", "status_update"]
    [part] = rest[0].artifact_update.artifact.parts
    assert part.raw == blob
    assert part.media_type == "application/octet-stream"
    assert rest[1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    # The artifact's event went as a document (one), the others as packets.
    listed = await client.list_contexts(DOCUMENTS_SCOPE, name_prefix=f"{agent_id}/{task_id}/")
    [document] = listed.documents
    assert document.size > len(blob)


async def test_get_task_takes_over_a_task_whose_replica_died(
    target: str, client: packetbus.Client
) -> None:
    started, go_on = asyncio.Event(), asyncio.Event()

    async def serve(request: A2ARequest) -> None:
        await request.status("step 0")
        started.set()
        await go_on.wait()
        await request.artifact("result", "42")
        await request.finish("all done")

    with two_replicas(target) as (first, second):
        async with running_agent(client, serve) as agent_id:
            async with a2a_client(first.agent_url(agent_id)) as a2a:
                [response] = await responses(a2a, user_message("compute"), return_immediately=True)
                task_id = response.task.id
                await asyncio.wait_for(started.wait(), 10)
            first.process.kill()  # the replica following the task dies; its blocking callers too
            first.process.wait(timeout=10)
            go_on.set()  # the answers arrive with nobody following them
            async with a2a_client(second.agent_url(agent_id)) as other:
                async with asyncio.timeout(30):
                    # A client polling GetTask elsewhere sees the task go on once the
                    # dead replica's lease has expired (5 s).
                    while True:
                        task = await other.get_task(GetTaskRequest(id=task_id))
                        if task.status.state == TaskState.TASK_STATE_COMPLETED:
                            break
                        await asyncio.sleep(0.5)

    assert texts(task.status.message) == ["all done"]
    assert [a.name for a in task.artifacts] == ["result"]
    assert task.metadata.fields[ANSWERS_KEY].number_value == 3


async def test_every_exchange_is_in_the_export_and_verifies_offline(
    target: str, client: packetbus.Client, tmp_path: Path
) -> None:
    async def serve(request: A2ARequest) -> None:
        await request.status("reading")
        await request.artifact("summary", request.text.upper())
        await request.finish("done")

    gateway, url = start_gateway(target)
    try:
        async with (
            running_agent(client, serve) as agent_id,
            a2a_client(f"{url}/agents/{agent_id}", streaming=True) as a2a,
        ):
            events = await responses(a2a, user_message("audit me"))
            task_id = events[0].task.id
    finally:
        stop(gateway)

    # The request in the agent's inbox, the answers in the task's reply inbox, and
    # the task's A2A events: each topic exports with chains that verify offline.
    topics = {
        "request": (inbox_topic(agent_id), 1),
        "answers": (inbox_topic(reply_address(task_id)), 3),
        "events": (events_topic(agent_id, task_id), len(events)),
    }
    for what, (topic, count) in topics.items():
        path = tmp_path / f"{what}.jsonl"
        wrote = await asyncio.to_thread(
            run_cli, "--target", target, "export", "--topic", topic, "--out", str(path)
        )
        assert wrote.returncode == 0, wrote.stderr
        report = await asyncio.to_thread(verify_export, path)
        assert (what, report.packets, report.verified, report.failures) == (what, count, count, [])
