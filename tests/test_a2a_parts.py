"""A2A parts of every kind through the gateway, and parts over the packet limit as
context documents (packetbus_a2a.parts): a real `packetbus serve` whose context
documents may be at most CONTEXT_LIMIT bytes, a real gateway, the a2a-sdk client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from a2a.types.a2a_pb2 import ListTasksRequest, Message, Part, Role, TaskState
from a2a.utils.errors import InvalidParamsError
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct, Value
from hypothesis import given
from hypothesis import strategies as st

import packetbus
from packetbus import Packet, SpeechAct
from packetbus._inbox import inbox_topic
from packetbus_a2a import A2AAgent, A2ARequest
from packetbus_a2a.parts import (
    HEADROOM,
    SCOPE,
    PartCodec,
    PartRefused,
    as_part,
    entry_part,
    message_packet,
    part_content,
    part_entry,
    part_from_content,
)
from packetbus_a2a.wire import answer_packet, read_answer, tracking_id
from packetbus_server import Limits, RunningServer, ServerConfig, start
from tests._a2a import answering
from tests.conftest import unique
from tests.test_a2a_gateway import a2a_client, responses, start_gateway, stop

pytestmark = pytest.mark.one_backend

# This module's server: context documents up to 12 MiB. The gateway's task store keeps
# each task as one JSON document, a BIG part twice in it (history and artifact, base64).
CONTEXT_LIMIT = 12 * 1024 * 1024
PACKET_LIMIT = 1024 * 1024  # the default packet limit
AGENT = unique("a2a-echo")
BIG = 3_000_000  # bytes: over the packet limit, under the context limit


@pytest.fixture(scope="module")
async def small_server(redis_url: str) -> AsyncIterator[RunningServer]:
    limits = Limits(min_ack_deadline_seconds=1, max_context_bytes=CONTEXT_LIMIT)
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits))
    yield srv
    await srv.stop(grace=0)


@pytest.fixture(scope="module")
def target(small_server: RunningServer) -> str:
    """Overrides conftest's: `client` and the gateway talk to `small_server`."""
    return f"127.0.0.1:{small_server.port}"


@pytest.fixture(scope="module")
def gateway(target: str) -> Iterator[str]:
    """A gateway to `small_server`: AGENT's base URL on it."""
    process, url = start_gateway(target)
    yield f"{url}/agents/{AGENT}"
    stop(process)


@pytest.fixture
async def echo(client: packetbus.Client) -> AsyncIterator[A2AAgent]:
    """AGENT answering each request with an artifact "echo" of exactly its parts and
    the final message "got N parts"; a request whose text is "too big" answers with
    an artifact over the context limit, and fails with what that raised."""

    async def answer(request: A2ARequest) -> None:
        if request.text == "too big":
            try:
                await request.artifact("huge", b"\0" * (CONTEXT_LIMIT + 1))
            except PartRefused as exc:
                await request.fail(str(exc))
            return
        await request.artifact("echo", *request.parts)
        await request.finish(f"got {len(request.parts)} parts")

    async with answering(client, AGENT, answer, role="echo") as agent:
        yield agent


def message(*parts: Part, context_id: str = "") -> Message:
    return Message(
        role=Role.ROLE_USER, message_id=str(uuid.uuid4()), context_id=context_id, parts=parts
    )


def data_part(value: Any, **fields: Any) -> Part:
    part = Part(**fields)
    json_format.ParseDict(value, part.data)
    return part


def meta(**values: Any) -> Struct:
    struct = Struct()
    struct.update(values)
    return struct


async def stored_request(client: packetbus.Client, task_id: str, message_id: str) -> Packet:
    found = await client.get_packet(tracking_id(task_id, message_id))
    packet: Packet = found.packet
    return packet


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_every_kind_of_part_reaches_the_agent_and_comes_back(
    gateway: str, echo: A2AAgent, client: packetbus.Client, binding: str
) -> None:
    sent = message(
        Part(text="summarize these"),
        data_part({"rows": [1, 2.5, None, "x"], "ok": True}, metadata=meta(schema="v2")),
        Part(raw=bytes(range(256)) * 4, media_type="application/pdf", filename="report.pdf"),
        Part(url="https://example.com/a.png", media_type="image/png", filename="a.png"),
    )
    async with a2a_client(gateway, binding=binding) as a2a:
        [response] = await responses(a2a, sent)
    task = response.task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [p.text for p in task.status.message.parts] == ["got 4 parts"]
    [artifact] = task.artifacts
    assert artifact.name == "echo"
    assert list(artifact.parts) == list(sent.parts)  # every field, byte for byte

    # In the packet: four inline entries, the text for text-only readers, no document.
    request = await stored_request(client, task.id, sent.message_id)
    fields = json_format.MessageToDict(request.data)
    assert [sorted(e) for e in fields["parts"]] == [
        ["text"],
        ["data", "metadata"],
        ["filename", "media_type", "raw"],
        ["filename", "media_type", "url"],
    ]
    assert fields["text"] == "summarize these"
    assert json_format.Parse(fields["message"], Message()).parts == []  # parts travel once


async def test_a_part_over_the_packet_limit_travels_as_a_document(
    gateway: str, echo: A2AAgent, client: packetbus.Client
) -> None:
    big = os.urandom(BIG)
    sent = message(
        Part(raw=big, media_type="video/mp4", filename="clip.mp4", metadata=meta(take=3)),
        Part(text="small"),
    )
    async with a2a_client(gateway) as a2a:
        [response] = await responses(a2a, sent)
    task = response.task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    [artifact] = task.artifacts
    assert list(artifact.parts) == list(sent.parts)
    assert artifact.parts[0].raw == big

    # The request holds a reference; the document holds exactly the bytes, typed.
    request = await stored_request(client, task.id, sent.message_id)
    assert request.ByteSize() <= PACKET_LIMIT - HEADROOM
    [first, second] = json_format.MessageToDict(request.data)["parts"]
    name = f"{task.id}/{tracking_id(task.id, sent.message_id)}/0"
    assert first["document"]["name"] == name
    assert (first["document"]["kind"], first["document"]["size"]) == ("raw", BIG)
    assert (first["filename"], first["media_type"], "raw" in first) == (
        "clip.mp4",
        "video/mp4",
        False,
    )
    assert second == {"text": "small"}
    document = await client.get_context(SCOPE, name)
    assert document.data == big
    assert document.document.content_type == "video/mp4"
    assert document.document.version == 1
    # The agent's artifact went the same way, under its answer's name.
    answer_name = f"{task.id}/{tracking_id(task.id, 'answer 1')}/0"
    assert (await client.get_context(SCOPE, answer_name)).data == big


async def test_over_the_context_limit_is_invalid_params_and_nothing_is_stored(
    gateway: str, client: packetbus.Client
) -> None:
    # No agent reads this inbox: a request there would stay to be counted.
    nobody = unique("a2a-nobody")
    await client.register_agent(nobody, role="none", ttl=300)
    context_id = str(uuid.uuid4())
    sent = message(Part(raw=b"\1" * (CONTEXT_LIMIT + 1)), context_id=context_id)
    url = gateway.rsplit("/agents/", 1)[0] + f"/agents/{nobody}"
    async with a2a_client(url) as a2a:
        with pytest.raises(InvalidParamsError) as refused:
            await responses(a2a, sent)
        assert refused.value.message == (
            f"part of {CONTEXT_LIMIT + 1} bytes cannot be a context document "
            f"(header.size must be 0..{CONTEXT_LIMIT} bytes)"
        )
        listed = await a2a.list_tasks(ListTasksRequest(context_id=context_id))
        assert (list(listed.tasks), listed.total_size) == ([], 0)
    seen = []
    async with client.subscribe(inbox_topic(nobody), start=packetbus.EARLIEST) as stream:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                async for stored in stream:
                    seen.append(stored)
    assert seen == []


async def test_a_message_too_large_without_its_parts_is_invalid_params_when_streaming(
    gateway: str, echo: A2AAgent
) -> None:
    # Its metadata alone passes the packet limit: no part can move out to make room.
    sent = message(Part(text="hi"))
    sent.metadata.update({"note": "n" * PACKET_LIMIT})
    async with a2a_client(gateway, streaming=True) as a2a:
        with pytest.raises(InvalidParamsError) as refused:
            await responses(a2a, sent)
    assert refused.value.message.startswith("the packet is ")
    assert refused.value.message.endswith(
        f" bytes with every part in a document; at most {PACKET_LIMIT - HEADROOM} fit"
    )


async def test_an_answer_over_the_context_limit_fails_the_task(
    gateway: str, echo: A2AAgent
) -> None:
    async with a2a_client(gateway) as a2a:
        [response] = await responses(a2a, message(Part(text="too big")))
    task = response.task
    assert task.status.state == TaskState.TASK_STATE_FAILED
    assert list(task.artifacts) == []  # nothing half-sent
    assert [p.text for p in task.status.message.parts] == [
        f"part of {CONTEXT_LIMIT + 1} bytes cannot be a context document "
        f"(header.size must be 0..{CONTEXT_LIMIT} bytes)"
    ]


async def test_a_retried_request_writes_the_same_documents(client: packetbus.Client) -> None:
    codec = PartCodec(client)
    task_id = str(uuid.uuid4())
    sent = message(Part(text="a" * BIG), Part(raw=b"b" * (PACKET_LIMIT // 2)))
    first = await message_packet(codec, sent, task_id=task_id, context_id="c")
    again = await message_packet(PartCodec(client), sent, task_id=task_id, context_id="c")
    assert again == first  # the same packet: the same tracking id, the same references
    entries = json_format.MessageToDict(first.data)["parts"]
    assert [("document" in e) for e in entries] == [True, False]
    assert "text" not in json_format.MessageToDict(first.data)  # a text part is a document
    name = entries[0]["document"]["name"]
    value = await client.get_context(SCOPE, name)
    assert value.document.version == 1  # the second put answered the first commit
    assert value.document.content_type == "text/plain; charset=utf-8"
    assert await codec.unpack(entries) == list(sent.parts)


async def test_answers_carry_any_parts(client: packetbus.Client) -> None:
    codec = PartCodec(client)
    given_parts = [as_part("hi"), as_part({"n": 1}), as_part(b"\0\1")]
    assert given_parts == [
        Part(text="hi"),
        data_part({"n": 1}),
        Part(raw=b"\0\1", media_type="application/octet-stream"),
    ]

    def build(entries: list[dict[str, Any]]) -> Packet:
        return answer_packet("artifact", entries, name="out")

    packet = await codec.pack(given_parts, build, task_id="t", what="w", author="someone")
    answer = read_answer(packet)
    assert answer is not None
    assert (answer.kind, answer.name, answer.text) == ("artifact", "out", "hi")
    assert await codec.unpack(answer.entries) == given_parts

    # The text-only form from before parts still reads as one text part.
    old = Packet(speech_act=SpeechAct.SPEECH_ACT_INFORM, protocol="a2a")
    old.data.update({"a2a": "final", "text": "done"})
    legacy = read_answer(old)
    assert legacy is not None
    assert (legacy.kind, legacy.text, legacy.entries) == ("final", "done", ({"text": "done"},))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def parts(draw: st.DrawFn) -> Part:
    kind = draw(st.sampled_from(["text", "raw", "url", "data"]))
    part = Part(
        media_type=draw(st.sampled_from(["", "text/plain", "application/x-thing"])),
        filename=draw(st.sampled_from(["", "a.bin", "résumé.pdf"])),
    )
    if draw(st.booleans()):
        part.metadata.update({"k": draw(json_values)})
    if kind == "text":
        part.text = draw(st.text(max_size=50))
    elif kind == "raw":
        part.raw = draw(st.binary(max_size=50))
    elif kind == "url":
        part.url = draw(st.text(max_size=50))
    else:
        part.data.CopyFrom(json_format.Parse(json.dumps(draw(json_values)), Value()))
    return part


@given(parts())
def test_entries_and_documents_hold_parts_exactly(part: Part) -> None:
    entry = part_entry(part)
    assert entry_part(entry) == part
    # Through a packet's Struct, as it travels.
    carried = Struct()
    carried.update({"parts": [entry]})
    [back] = json_format.MessageToDict(carried)["parts"]
    assert entry_part(back) == part
    # As a document: the entry without its content, plus the content.
    kind, content = part_content(part)
    rest = {k: v for k, v in entry.items() if k != kind}
    assert part_from_content(rest, kind, content) == part
