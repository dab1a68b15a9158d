"""A task's A2A event stream as a packetbus topic, shared by every gateway replica.

a2a-sdk's `TaskEventStream`: the replica that applies an event to a task
`publish`es it with the task version it produced; any replica serving
SubscribeToTask for that task `subscribe`s to the events after the version of
the snapshot it sent. Here each task's events are the packets of one topic,
``a2a.events.<uuid>`` (a name derived from agent and task id, so any task id
makes a valid topic), read as a fan-out subscription from the first packet.

An event's packet: speech act INFORM, protocol ``a2a``, origin the task's
reply address (`wire.reply_address`), tracking id derived
from (task, version), ``data`` ``{"a2a": "event", "version": V, "event":
<base64 of the a2a StreamResponse bytes, deterministic serialization>}``.
An event too large for a packet (an artifact with large parts) is put in a
context document instead (scope ``a2a-events``, name ``<agent>/<task>/<version>``,
written once) and the packet says ``"document": {"version", "size", "sha256"}``;
readers check the digest.
Publishing an event again (a retry, or a new driver publishing the snapshot
of a version whose event its old driver may not have published) stores it
once; a *different* event at the same version is ALREADY_EXISTS, which only a
second writer could cause: the first one stands, and the second is logged.

`subscribe` also keeps the task moving when the replica that followed its
answers is gone: while a subscriber waits, the replica tries once a second to
take the task's driver lease (`lease`) and, once it has it, follows the
answers itself (`driver`). Every event is read from the topic, so a
subscriber sees each event once, in version order, whoever produced it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextvars import ContextVar
from typing import Any

import grpc
from a2a.server.cluster.event_stream import TaskEventStream, VersionedEvent
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.types.a2a_pb2 import Message, StreamResponse, Task, TaskArtifactUpdateEvent
from google.protobuf import json_format

from packetbus import EARLIEST, Client, Packet, PacketbusError, SpeechAct

from .parts import PartCodec
from .task_store import TaskStoreVersion
from .wire import PROTOCOL, reply_address

_log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("0c4f7d0e-3a8b-4f0c-9d55-6a2a2e7e0b1d")
DOCUMENTS_SCOPE = "a2a-events"  # events too large for a packet
_EVENT_MEDIA_TYPE = "application/x-protobuf; messageType=a2a.v1.StreamResponse"

# Follows a task's answers while the caller holds its lease (see `driver`), for
# the caller of the SubscribeToTask being served.
Drive = Callable[[str, ServerCallContext], Coroutine[Any, Any, None]]
# The call context of the SubscribeToTask being served (set by the request handler:
# a2a-sdk's TaskEventStream.subscribe is not given it).
subscriber: ContextVar[ServerCallContext | None] = ContextVar(
    "packetbus_a2a_subscriber", default=None
)


def events_topic(agent_id: str, task_id: str) -> str:
    """The topic holding agent `agent_id`'s task `task_id`'s events."""
    key = f"{agent_id}\n{task_id}"
    return f"a2a.events.{uuid.uuid5(_NAMESPACE, key)}"


def event_response(event: Event) -> StreamResponse:
    """`event` as the StreamResponse that carries it."""
    if isinstance(event, Task):
        return StreamResponse(task=event)
    if isinstance(event, Message):
        return StreamResponse(message=event)
    if isinstance(event, TaskArtifactUpdateEvent):
        return StreamResponse(artifact_update=event)
    return StreamResponse(status_update=event)


def _event(response: StreamResponse) -> Event:
    which = response.WhichOneof("payload")
    if which == "task":
        return response.task
    if which == "message":
        return response.message
    if which == "artifact_update":
        return response.artifact_update
    if which == "status_update":
        return response.status_update
    raise ValueError(f"an event packet without an event ({which!r})")


def event_packet(agent_id: str, task_id: str, version: int, fields: dict[str, Any]) -> Packet:
    """The packet carrying one event of a task: `fields` (see the module docstring)."""
    packet = Packet(
        tracking_id=str(uuid.uuid5(_NAMESPACE, f"{agent_id}\n{task_id}\n{version}")),
        topic=events_topic(agent_id, task_id),
        origin=reply_address(task_id),
        speech_act=SpeechAct.SPEECH_ACT_INFORM,
        protocol=PROTOCOL,
    )
    packet.data.update({"a2a": "event", "version": version, **fields})
    return packet


def _version_of(packet: Packet) -> tuple[dict[str, Any], TaskVersion] | None:
    if packet.WhichOneof("contents") != "data":
        return None
    fields = json_format.MessageToDict(packet.data)
    if fields.get("a2a") != "event":
        return None
    return fields, TaskStoreVersion(int(fields["version"]))


class TopicEventStream(TaskEventStream):
    """`TaskEventStream` over packetbus topics for agent `agent_id`'s tasks.

    `drive(task_id)`, when given, is how this replica takes over following a
    task's answers (it returns when the task no longer needs a driver here);
    `subscribe` calls it while a subscriber waits (see the module docstring).
    """

    def __init__(self, client: Client, agent_id: str, *, drive: Drive | None = None) -> None:
        self._client = client
        self._agent_id = agent_id
        self._drive = drive
        self._parts = PartCodec(client)

    async def publish(self, task_id: str, event: VersionedEvent) -> None:
        """Store `event` on the task's topic (once; see the module docstring)."""
        if not await self.publish_unless_taken(task_id, event):
            _log.warning(
                "task %s: another event was published at version %s first; it stands",
                task_id,
                TaskStoreVersion.number_of(event.version),
            )

    async def publish_unless_taken(self, task_id: str, event: VersionedEvent) -> bool:
        """Store `event` on the task's topic; False when another event already has
        its version (nothing stored). Raises PacketbusError for a store failure."""
        version = TaskStoreVersion.number_of(event.version)
        body = event_response(event.event).SerializeToString(deterministic=True)
        if len(body) * 4 // 3 + 1024 <= await self._parts.budget():
            fields: dict[str, Any] = {"event": base64.b64encode(body).decode()}
        else:
            document = await self._put_document(task_id, version, body)
            if document is None:
                return False
            fields = {"document": document}
        try:
            await self._client.dispatch(event_packet(self._agent_id, task_id, version, fields))
        except PacketbusError as exc:
            if exc.code != grpc.StatusCode.ALREADY_EXISTS:
                raise
            return False
        return True

    def _document_name(self, task_id: str, version: int) -> str:
        return f"{self._agent_id}/{task_id}/{version}"

    async def _put_document(self, task_id: str, version: int, body: bytes) -> dict[str, Any] | None:
        """Put an event too large for a packet in its context document; what the
        packet says of it, or None when that version's document holds another event."""
        name, digest = self._document_name(task_id, version), hashlib.sha256(body).hexdigest()
        try:
            document = await self._client.put_context(
                DOCUMENTS_SCOPE,
                name,
                body,
                expected_version=0,
                content_type=_EVENT_MEDIA_TYPE,
                author="a2a-gateway",
            )
        except PacketbusError as exc:
            if exc.code not in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED):
                raise
            # Written before (a retry, or the same event from a new driver)?
            existing = await self._client.get_context(DOCUMENTS_SCOPE, name)
            if hashlib.sha256(existing.data).hexdigest() != digest:
                return None
            document = existing.document
        return {"version": document.version, "size": len(body), "sha256": digest}

    async def read(self, task_id: str, packet: Packet) -> VersionedEvent | None:
        """The versioned event `packet` carries, or None for a packet that carries
        none. Raises PacketbusError when its document is gone (NOT_FOUND) or is not
        the one the packet names (DATA_LOSS)."""
        found = _version_of(packet)
        if found is None:
            return None
        fields, version = found
        if "event" in fields:
            body = base64.b64decode(fields["event"])
        else:
            ref = fields["document"]
            name = self._document_name(task_id, TaskStoreVersion.number_of(version))
            value = await self._client.get_context(
                DOCUMENTS_SCOPE, name, version=int(ref["version"])
            )
            body = value.data
            if hashlib.sha256(body).hexdigest() != ref["sha256"]:
                raise PacketbusError(
                    grpc.StatusCode.DATA_LOSS, f"context {DOCUMENTS_SCOPE}/{name} is not the event"
                )
        return VersionedEvent(_event(StreamResponse.FromString(body)), version)

    async def subscribe(
        self, task_id: str, *, after: TaskVersion
    ) -> AsyncGenerator[VersionedEvent, None]:
        """Task `task_id`'s events newer than `after`, in version order, until the
        caller stops (a2a-sdk stops at a final or interrupted state)."""
        driver: asyncio.Task[None] | None = None
        if self._drive is not None:
            context = subscriber.get() or ServerCallContext()
            driver = asyncio.create_task(self._drive(task_id, context))
        try:
            topic = events_topic(self._agent_id, task_id)
            newest = after
            async with self._client.subscribe(topic, start=EARLIEST) as stored_packets:
                async for stored in stored_packets:
                    versioned = await self.read(task_id, stored.packet)
                    if versioned is None or not versioned.version.is_after(newest):
                        continue
                    newest = versioned.version
                    yield versioned
        finally:
            if driver is not None:
                driver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driver

    async def destroy(self, task_id: str) -> None:
        """Nothing to free: the topic keeps the events for its retention, and
        subscribers stop at the final event."""
        del task_id
