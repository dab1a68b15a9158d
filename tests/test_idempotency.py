"""Idempotency by meaning: a packet sent again, or rebuilt and stamped again, is the same write.

The fingerprint every idempotent write compares covers what the sender means,
not when it was stamped (dispatched_at), not the signatures made over that
stamp (the chain of custody), and not a tracking id a client filled in for a
write keyed by another id (a task's id). Each write path is checked three ways:
the same packet again, the same packet rebuilt (new dispatched_at; signed: a new
signature), and changed contents (ALREADY_EXISTS); each time the count of what
is stored.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from asyncio.subprocess import PIPE
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import contents_pb2, context_service_pb2, record_service_pb2, task_service_pb2
from packetbus_server import _keys
from packetbus_server._ingest import fingerprint
from tests.conftest import REPO, new_packet, unique

CLI = [sys.executable, "-m", "packetbus._cli"]
INFORM = packetbus.SpeechAct.Value("SPEECH_ACT_INFORM")


def _rebuilt(packet: packetbus.Packet, *, seconds_later: int = 7) -> packetbus.Packet:
    """`packet` as a producer would build it again after a crash: stamped anew."""
    again = packetbus.Packet.FromString(packet.SerializeToString())
    again.ClearField("chain_of_custody")
    again.dispatched_at.FromNanoseconds(
        packet.dispatched_at.ToNanoseconds() + seconds_later * 10**9
    )
    return again


async def _log_length(r: redis_asyncio.Redis, topic: str) -> int:
    return int(await r.xlen(f"pb:{{{topic}}}:log"))


async def _cli(target: str, *args: str) -> tuple[int, str, str]:
    """`packetbus --target target args...` in a subprocess (the server runs in this
    event loop, so it is awaited, not waited for): exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *CLI, "--target", target, *args, cwd=REPO, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_dispatch_twice_answers_the_original_result(
    target: str, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    argv = ["dispatch", "--topic", topic, "--origin", "cli-1", "--tracking-id", str(uuid.uuid4())]
    argv += ["--json", '{"data": {"order": 42}}']
    code, first, err = await _cli(target, *argv)
    assert code == 0, err
    code, second, err = await _cli(target, *argv)
    assert code == 0, err
    assert json.loads(first) == json.loads(second)
    assert json.loads(first)["receipt"]["cursor"]

    code, _, err = await _cli(target, *argv[:-1], '{"data": {"order": 43}}')
    assert code == 1
    assert "ALREADY_EXISTS" in err
    assert "Traceback" not in err
    assert await _log_length(raw_redis, topic) == 1


async def test_rebuilt_packet_answers_the_original_result(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    original = new_packet(topic, ttl_seconds=120)
    original.data.update({"k": "v"})
    receipt = await client.dispatch(original)

    again = _rebuilt(original)
    assert again.SerializeToString() != original.SerializeToString()
    assert await client.dispatch(again) == receipt
    [result] = await client.dispatch_batch([_rebuilt(original, seconds_later=60)])
    assert result.receipt == receipt
    stored = await client.get_packet(original.tracking_id)
    assert stored.packet.dispatched_at == original.dispatched_at  # the first send is kept

    for change in (
        lambda p: p.data.update({"k": "w"}),
        lambda p: setattr(p, "ttl_seconds", 121),
        lambda p: setattr(p, "conversation_id", "c-1"),
        lambda p: setattr(p, "origin", "someone-else"),
    ):
        changed = _rebuilt(original)
        change(changed)
        with pytest.raises(packetbus.PacketbusError) as caught:
            await client.dispatch(changed)
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert caught.value.error_info is not None
        assert caught.value.error_info.reason == "TRACKING_ID_IN_USE"
    assert await _log_length(raw_redis, topic) == 1


async def test_signed_packet_signed_again_answers_the_original_result(
    target: str, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    identity = packetbus.AgentIdentity.generate(unique("signer"))
    config = packetbus.ClientConfig(target=target, identity=identity)
    async with await packetbus.Client.connect(config=config) as bus:
        await bus.register_identity()
        original = packetbus.Packet(topic=topic, speech_act=INFORM)
        original.data.update({"k": "v"})
        receipt = await bus.dispatch(original)
        assert original.schema_version == "1.1"

        again = _rebuilt(original)  # unsigned: the client signs it again, anew
        assert await bus.dispatch(again) == receipt
        assert again.chain_of_custody[0].signature != original.chain_of_custody[0].signature
        stored = await bus.get_packet(original.tracking_id)
        assert stored.packet.chain_of_custody[0] == original.chain_of_custody[0]

        # A resend with a signature that does not hold is refused, not answered.
        forged = packetbus.Packet.FromString(again.SerializeToString())
        forged.dispatched_at.seconds += 1
        with pytest.raises(packetbus.PacketbusError) as caught:
            await bus.dispatch(forged)
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED

        changed = _rebuilt(original)
        changed.data.update({"k": "w"})
        with pytest.raises(packetbus.PacketbusError) as caught:
            await bus.dispatch(changed)
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert await _log_length(raw_redis, topic) == 1


@dataclass(frozen=True)
class WritePath:
    """One idempotent write: `build` a packet for a fresh key (a topic, queue or task
    id), `send` it (the answer to compare), `count` what is stored under that key."""

    name: str
    build: Callable[[str], packetbus.Packet]
    send: Callable[[packetbus.Client, packetbus.Packet], Awaitable[object]]
    count: Callable[[packetbus.Client, redis_asyncio.Redis, str], Awaitable[int]]
    # Whether the tracking id is the key (a rebuilt packet keeps it) or the client's
    # to fill (a rebuilt packet gets a new one, as from the CLI).
    keyed_by_tracking_id: bool


def _plain(topic: str) -> packetbus.Packet:
    packet = new_packet(topic)
    packet.data.update({"k": "v"})
    return packet


async def _dispatch(client: packetbus.Client, packet: packetbus.Packet) -> object:
    [result] = await client.dispatch_batch([packet])
    if result.HasField("error"):
        raise packetbus.PacketbusError.from_status(result.error)
    return result.receipt


async def _count_packets(client: packetbus.Client, raw: redis_asyncio.Redis, topic: str) -> int:
    return await _log_length(raw, topic)


def _task(queue: str) -> packetbus.Packet:
    # The tracking id is left to the client, as the CLI's `tasks post` leaves it:
    # the task's id is the key, and a rebuilt packet gets a new tracking id.
    return packetbus.Packet(
        topic=queue,
        origin="poster-1",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST"),
        task=contents_pb2.Task(id="t-1", description="sum the column", priority=5),
    )


async def _post_task(client: packetbus.Client, packet: packetbus.Packet) -> object:
    state = await client.task_queue(packet.topic).post(packet)
    return (state.task_id, state.posted_at, state.packet.packet.tracking_id)


async def _count_tasks(client: packetbus.Client, _: redis_asyncio.Redis, queue: str) -> int:
    return len(await client.task_queue(queue).tasks())


def _finding(task_id: str) -> packetbus.Packet:
    return packetbus.Packet(
        topic="findings",
        origin="finder-1",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
        finding=contents_pb2.Finding(
            id="f-1", task_id=task_id, claim="the sky is blue", confidence=0.9
        ),
    )


async def _post_finding(client: packetbus.Client, packet: packetbus.Packet) -> object:
    stored = (await client.post_finding(packet)).finding
    return (stored.packet, stored.content)  # its custody head is signed anew each time


async def _count_findings(client: packetbus.Client, _: redis_asyncio.Redis, task_id: str) -> int:
    return len(await client.list_findings(task_id))


def _record(label: str) -> packetbus.Packet:
    return packetbus.fill_defaults(
        packetbus.Packet(
            topic="records",
            origin="recorder-1",
            speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
            session_summary=contents_pb2.SessionSummary(label=label, date="2026-11-30"),
        )
    )


async def _put_record(client: packetbus.Client, packet: packetbus.Packet) -> object:
    stored = (await client.put_record(packet)).record
    return (stored.packet, stored.content)  # its custody head is signed anew each time


async def _count_records(client: packetbus.Client, _: redis_asyncio.Redis, label: str) -> int:
    kind = record_service_pb2.RECORD_KIND_SESSION_SUMMARY
    count, token = 0, ""
    while True:
        page = await client.list_records(kind, page_token=token)
        count += sum(1 for r in page.records if r.packet.session_summary.label == label)
        token = page.next_page_token
        if not token:
            return count


PATHS = [
    WritePath("dispatch", _plain, _dispatch, _count_packets, True),
    WritePath("task post", _task, _post_task, _count_tasks, False),
    WritePath("finding post", _finding, _post_finding, _count_findings, False),
    WritePath("record put", _record, _put_record, _count_records, True),
]


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
async def test_every_idempotent_write_compares_meaning(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, path: WritePath
) -> None:
    key = unique("key")
    original = path.build(key)
    first = await path.send(client, original)
    again = packetbus.Packet.FromString(original.SerializeToString())
    assert await path.send(client, again) == first

    rebuilt = path.build(key)  # built again: stamped anew
    if path.keyed_by_tracking_id:
        rebuilt.tracking_id = original.tracking_id
    assert await path.send(client, rebuilt) == first
    assert rebuilt.dispatched_at != original.dispatched_at
    if not path.keyed_by_tracking_id:
        assert rebuilt.tracking_id != original.tracking_id

    changed = path.build(key)
    changed.tracking_id = original.tracking_id
    changed.conversation_id = "another-conversation"
    with pytest.raises(packetbus.PacketbusError) as caught:
        await path.send(client, changed)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert await path.count(client, raw_redis, key) == 1


async def test_the_same_escalation_again_is_stored_once(client: packetbus.Client) -> None:
    task = unique("task")
    await client.post_finding(_finding(task))
    first = await client.escalate(task, ["f-1"], reason="needs a human", origin="lead-1")
    again = await client.escalate(task, ["f-1"], reason="needs a human", origin="lead-1")
    assert again.packet == first.packet
    assert again.receipt == first.receipt
    other = await client.escalate(task, ["f-1"], reason="another reason", origin="lead-1")
    assert other.packet.tracking_id != first.packet.tracking_id
    assert len(await client.list_escalations(task)) == 2


async def test_what_a_request_carries_beside_the_packet_is_compared_too(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("queue"))
    task = _task(queue.name)
    await queue.post(task, max_attempts=2)
    assert (await queue.post(_task(queue.name), max_attempts=2)).max_attempts == 2
    with pytest.raises(packetbus.PacketbusError) as caught:
        await queue.post(_task(queue.name), max_attempts=5)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS

    record = _record(unique("label"))
    await client.put_record(record, retention=600)
    assert not (await client.put_record(_rebuilt(record), retention=600)).created
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.put_record(_rebuilt(record), retention=60)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS


async def test_cli_writes_run_twice_answer_the_original(
    target: str, client: packetbus.Client, tmp_path: Path
) -> None:
    queue, task, record_id = unique("queue"), unique("task"), str(uuid.uuid4())
    agent, entry_id, scope = unique("agent"), str(uuid.uuid4()), unique("scope")
    document = tmp_path / "notes.txt"
    document.write_bytes(b"the plan")
    commands = [
        f"context put {scope} plan --author cli-1 --file {document} --upload-id {entry_id}".split(),
        f"context memory append {agent} noted --entry-id {entry_id}".split(),
        f"context trace append {task} {agent} noted --entry-id {entry_id}".split(),
        f"tasks post {queue} --id t-1 --origin cli-1 --description d".split(),
        f"findings post {task} --id f-1 --origin cli-1 --claim c --confidence 0.5".split(),
        [
            "records",
            "put",
            "session",
            '{"label": "run-1", "date": "2026-11-30"}',
            "--origin",
            "cli-1",
            "--tracking-id",
            record_id,
        ],
    ]
    for argv in commands:
        code, first, err = await _cli(target, *argv)
        assert code == 0, err
        code, second, err = await _cli(target, *argv)
        assert code == 0, (argv, err)
        one, two = json.loads(first), json.loads(second)
        assert one.pop("created", True) is True
        assert two.pop("created", False) is False
        for answer in (one, two):  # the custody head is signed anew each time
            for stored in (answer.get("task", {}), answer.get("finding"), answer.get("record")):
                if stored:
                    stored.pop("custodyHead", None)
                    stored.get("packet", stored).pop("custodyHead", None)
        assert one == two, argv
    assert (await client.get_context(scope, "plan")).document.version == 1

    assert [e.entry_id for e in await client.list_memory(agent)] == [entry_id]
    assert [e.entry_id for e in await client.list_traces(task, agent)] == [entry_id]
    assert len(await client.task_queue(queue).tasks()) == 1
    assert len(await client.list_findings(task)) == 1
    record = await client.get_record(record_service_pb2.RECORD_KIND_SESSION_SUMMARY, record_id)
    assert record.packet.origin == "cli-1"

    # A claim run again with its request id answers the task it claimed, not another.
    for task_id in ("t-2", "t-3"):
        code, _, err = await _cli(target, *f"tasks post {queue} --id {task_id} --origin o".split())
        assert code == 0, err
    claim = f"tasks claim {queue} --worker w-1 --request-id {record_id}".split()
    answers = [await _cli(target, *claim) for _ in range(2)]
    assert [code for code, _, _ in answers] == [0, 0], answers
    first, second = (json.loads(out) for _, out, _ in answers)
    assert (first["taskId"], first["fencingToken"]) == (second["taskId"], second["fencingToken"])
    states = {t.task_id: t.status for t in await client.task_queue(queue).tasks()}
    assert sorted(states.values()).count(task_service_pb2.TASK_STATUS_CLAIMED) == 1


@pytest.mark.parametrize("log", ["memory", "trace"])
async def test_a_log_entry_rebuilt_with_its_id_is_appended_once(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, log: str
) -> None:
    """An entry's id is its idempotency key, as a packet's tracking id is: rebuilt
    (stamped again: another recorded_at) it answers as the first did; with other
    contents under the same id it is ALREADY_EXISTS. Nothing is appended twice."""
    agent, task = unique("agent"), unique("task")

    async def append(entry: context_service_pb2.LogEntry) -> int:
        if log == "memory":
            return await client.append_memory(agent, entry)
        return await client.append_trace(task, agent, entry)

    first = packetbus.new_entry("saw the error", kind="thought", data={"line": 3})
    await asyncio.sleep(0.01)  # a rebuild's recorded_at differs
    rebuilt = packetbus.new_entry("saw the error", kind="thought", data={"line": 3})
    rebuilt.entry_id = first.entry_id
    assert rebuilt.recorded_at != first.recorded_at
    assert await append(first) == 1
    assert await append(rebuilt) == 1
    other = packetbus.new_entry("saw another error", kind="thought")
    other.entry_id = first.entry_id
    with pytest.raises(packetbus.PacketbusError) as caught:
        await append(other)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    key = _keys.memory_log(agent) if log == "memory" else _keys.trace_log(task, agent)
    assert await raw_redis.llen(key) == 1
    [kept] = (
        await client.list_memory(agent)
        if log == "memory"
        else await client.list_traces(task, agent)
    )
    assert kept == first  # the first as stored


def test_the_fingerprint_covers_every_packet_field_but_four() -> None:
    """Every field of Packet, present or future, is decided: a change to it is
    another packet, except the three stamped per build and the trace context (see _ingest.fingerprint)."""
    base = new_packet("fp.topic", ttl_seconds=60)
    original = fingerprint(base)
    assert fingerprint(base) == original  # and `base` is left as it was
    assert base.tracking_id
    assert base.HasField("dispatched_at")
    not_meant = set()
    for field in packetbus.Packet.DESCRIPTOR.fields:
        changed = packetbus.Packet.FromString(base.SerializeToString())
        if field.is_repeated:
            getattr(changed, field.name).add().key_id = "k"
        elif field.message_type is not None:
            getattr(changed, field.name).SetInParent()
            if field.message_type.full_name == "google.protobuf.Timestamp":
                getattr(changed, field.name).seconds += 5
        elif field.type == field.TYPE_STRING:
            setattr(changed, field.name, getattr(changed, field.name) + "x")
        else:
            setattr(changed, field.name, getattr(changed, field.name) + 1)
        assert changed.SerializeToString() != base.SerializeToString(), field.name
        if fingerprint(changed) == original:
            not_meant.add(field.name)
    assert not_meant == {"tracking_id", "dispatched_at", "chain_of_custody", "trace_context"}
    # A traced packet is left as it was, its trace context put back.
    traced = packetbus.Packet.FromString(base.SerializeToString())
    traced.trace_context.traceparent = f"00-{'a' * 32}-{'b' * 16}-01"
    sent = traced.SerializeToString()
    assert fingerprint(traced) == original
    assert traced.SerializeToString() == sent
