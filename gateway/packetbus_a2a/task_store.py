"""The A2A task store, kept in packetbus's shared context (ContextService).

Why the context service: its documents are versioned and written with
compare-and-set, which is exactly a2a-sdk's `VersionedTaskStore` contract, and
it lives in the packetbus store, so every gateway replica reads the same
tasks (GetTask on any replica) and the gateway stays stateless.

Layout: scope ``a2a-tasks``, one document per task holding the Task as proto
JSON (``application/json``); the document version is the task's `TaskVersion`.
Its name: ``<agent id>/<task id>`` for a task made without a credential, and
``<agent id>/@<owner key>/<task id>`` for one made by a caller with a bearer
token, the owner key being the first 32 hex digits of the SHA-256 of the token's
``sub`` (ids percent-encoded, so neither holds a ``/``). So each agent's endpoint
sees only its own tasks, and a caller only the tasks it made: another
principal's task is simply not found (no leak of its existence), and ListTasks
lists one name prefix. Every call is made with the client of the request's
caller (`auth.Principals`), so the packetbus server applies that principal's
permissions (context.read / context.write on scope ``a2a-tasks``).

The task's metadata key ``packetbus.answers`` counts the agent's answers the
task includes (`answers`); `save` sets it from the answer-driven event it
writes, and a save of an answer the task already includes writes nothing, so
each answer is applied once whichever replica applies it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from urllib.parse import quote, unquote

import grpc
from a2a.server.cluster.task_store import (
    ConcurrentTaskModificationError,
    StoredTask,
    VersionedTaskStore,
)
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.types.a2a_pb2 import (
    ListTasksRequest,
    ListTasksResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatusUpdateEvent,
)
from google.protobuf import json_format

from packetbus import Client, PacketbusError
from packetbus.v1 import context_service_pb2

from . import task_pages
from .answers import ANSWERS_KEY, answers_included
from .auth import Principals, first_refusal, note, owner

SCOPE = "a2a-tasks"
AUTHOR = "a2a-gateway"  # the author named on every task document
_TERMINAL = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_REJECTED,
    }
)


class TaskStoreVersion(TaskVersion):
    """A document version as a TaskVersion (1 for a task's first write)."""

    __slots__ = ()

    @property
    def number(self) -> int:
        """The context document's version number."""
        return int(self._value)

    @staticmethod
    def number_of(version: TaskVersion) -> int:
        """`version`'s document version number: 0 for MISSING (not written yet).
        Raises TypeError for a version this store did not give."""
        if version.is_missing:
            return 0
        if isinstance(version, TaskStoreVersion):
            return version.number
        raise TypeError(f"not a version this store gave: {version!r}")


def _expected(version: TaskVersion) -> int:
    # MISSING (the SDK's "first write") is expected_version 0: must not exist.
    return TaskStoreVersion.number_of(version)


def _answers_after(event: Event | None) -> int | None:
    """How many answers the task includes once answer-driven `event` is applied
    (None for an event that is not an agent's answer; see `answers`)."""
    if isinstance(event, TaskStatusUpdateEvent | TaskArtifactUpdateEvent):
        value = event.metadata.fields.get(ANSWERS_KEY)
        if value is not None:
            return int(value.number_value)
    return None


_REMEMBERED = 10_000  # tasks whose answer count is kept (others are read again)


def owner_key(name: str) -> str:
    """The name part standing for owner `name` ("" for no owner)."""
    return hashlib.sha256(name.encode()).hexdigest()[:32] if name else ""


class ContextTaskStore(VersionedTaskStore):
    """`VersionedTaskStore` over ContextService documents (see the module docstring).

    `clients`: the packetbus client per request (a Client: that one for every
    request). `ttl` (seconds, 0: the server's default) is how long a task outlives
    its last change. Store failures propagate as PacketbusError (a refusal noted
    for `Gateway` to answer 401/403, see `auth`); a2a-sdk answers others as an
    internal error.
    """

    def __init__(self, clients: Client | Principals, agent_id: str, *, ttl: int = 0) -> None:
        self._clients = clients if isinstance(clients, Principals) else Principals(clients)
        self._agent_id = agent_id
        self._ttl = ttl
        # Document name -> (version, answers the task includes) as last read or
        # written here.
        self._answers: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def _prefix(self, context: ServerCallContext) -> str:
        """The name prefix of the tasks of this agent and caller (ends in "/")."""
        prefix = quote(self._agent_id, safe="") + "/"
        key = owner_key(owner(context))
        return prefix + (f"@{key}/" if key else "")

    def _name(self, task_id: str, context: ServerCallContext) -> str:
        return self._prefix(context) + quote(task_id, safe="")

    def _client(self, context: ServerCallContext) -> Client:
        return self._clients.client(context)

    async def save(
        self,
        task: Task,
        *,
        event: Event | None,
        prev: Task | None,
        prev_version: TaskVersion,
        context: ServerCallContext,
    ) -> TaskVersion:
        del prev
        refusal = first_refusal()
        if refusal is not None and prev_version.is_missing:
            # The packetbus server refused this request's caller (a2a-sdk then
            # saves the task FAILED): a refused request leaves no task behind.
            raise refusal
        if task.status.state == TaskState.TASK_STATE_CANCELED:
            return await self._save_cancel(task, context)
        answers = _answers_after(event)
        if answers is not None:
            # Not answers_included(prev): a2a-sdk changes its task in place, so
            # `prev` may be `task` itself, the event already applied.
            if await self._answers_at(task.id, prev_version, context) >= answers:
                # Already in: a driver that lost its lease (a2a-sdk reloads the task
                # after a conflict and applies its event again). Kept once.
                return prev_version
            task.metadata.update({ANSWERS_KEY: answers})
        return await self._put(task, _expected(prev_version), context)

    def _remember(self, name: str, task: Task, version: int) -> None:
        self._answers[name] = (version, answers_included(task))
        self._answers.move_to_end(name)
        while len(self._answers) > _REMEMBERED:
            self._answers.popitem(last=False)

    async def _answers_at(
        self, task_id: str, version: TaskVersion, context: ServerCallContext
    ) -> int:
        """How many answers version `version` of task `task_id` includes."""
        number = TaskStoreVersion.number_of(version)
        if number == 0:
            return 0
        name = self._name(task_id, context)
        known = self._answers.get(name)
        if known is None or known[0] != number:
            stored = await self.get(task_id, context)
            known = self._answers.get(name)
            if stored is None or known is None or known[0] != number:
                # Written since: the compare-and-set would fail anyway.
                raise ConcurrentTaskModificationError(task_id)
        return known[1]

    async def _save_cancel(self, task: Task, context: ServerCallContext) -> TaskVersion:
        # The SDK's rule: a cancel overwrites any non-terminal task, whatever
        # its version, but never a terminal or absent one. Compare-and-set on
        # the version just read, again if another writer got in between.
        while True:
            current = await self.get(task.id, context)
            if current is None or current.task.status.state in _TERMINAL:
                raise ConcurrentTaskModificationError(task.id)
            try:
                return await self._put(task, _expected(current.version), context)
            except ConcurrentTaskModificationError:
                continue

    async def _put(self, task: Task, expected: int, context: ServerCallContext) -> TaskVersion:
        data = json_format.MessageToJson(task).encode()
        name = self._name(task.id, context)
        try:
            document = await self._client(context).put_context(
                SCOPE,
                name,
                data,
                expected_version=expected,
                ttl=self._ttl,
                content_type="application/json",
                author=AUTHOR,
            )
        except PacketbusError as exc:
            if exc.code in (grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS):
                raise ConcurrentTaskModificationError(task.id) from exc
            note(exc)
            raise
        self._remember(name, task, document.version)
        return TaskStoreVersion(document.version)

    async def get(self, task_id: str, context: ServerCallContext) -> StoredTask | None:
        return await self._read(self._name(task_id, context), context)

    async def _read(self, name: str, context: ServerCallContext) -> StoredTask | None:
        try:
            value = await self._client(context).get_context(SCOPE, name)
        except PacketbusError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None
            note(exc)
            raise
        task = json_format.Parse(value.data, Task())
        self._remember(name, task, value.document.version)
        return StoredTask(task, TaskStoreVersion(value.document.version))

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """One page of this agent's tasks of the caller, newest change first,
        filtered by context id, state and status time (see `task_pages`).

        Raises InvalidParamsError for a page token this store did not give.
        """
        size = task_pages.page_size(params)
        best = task_pages.Best(size + 1, task_pages.decode_token(params.page_token))
        filtered = task_pages.needs_contents(params)
        # (status_timestamp_after is read from each task: its status time comes
        # from a gateway's clock, a document's updated_at from the server's.)
        async for documents in self._listings(context):
            if not filtered:
                for document in documents:
                    best.offer(self._position(document), None)
                continue
            await self._offer_matching(documents, params, context, best)
        chosen = best.newest_first()
        tasks = []
        for position, task in chosen[:size]:
            if task is None:
                stored = await self.get(position.task_id, context)
                if stored is None:
                    continue  # deleted (expired) since it was listed
                task = stored.task
            tasks.append(task)
        more = len(chosen) > size
        return ListTasksResponse(
            tasks=tasks,
            page_size=size,
            total_size=best.total,
            next_page_token=chosen[size - 1][0].token() if more else "",
        )

    def _position(self, document: context_service_pb2.ContextDocument) -> task_pages.Position:
        task_id = unquote(document.name.rsplit("/", 1)[1])
        return task_pages.Position(document.updated_at.ToNanoseconds(), task_id)

    async def _listings(
        self, context: ServerCallContext
    ) -> AsyncIterator[Sequence[context_service_pb2.ContextDocument]]:
        """The caller's task documents, one listing page at a time."""
        prefix, token = self._prefix(context), ""
        while True:
            try:
                page = await self._client(context).list_contexts(
                    SCOPE, name_prefix=prefix, page_size=task_pages.LISTING_PAGE, page_token=token
                )
            except PacketbusError as exc:
                note(exc)
                raise
            # Only this prefix's own names: a caller without an owner must not
            # list the owned tasks under it (their names hold one more "/").
            yield [d for d in page.documents if "/" not in d.name[len(prefix) :]]
            token = page.next_page_token
            if not token:
                return

    async def _offer_matching(
        self,
        documents: Sequence[context_service_pb2.ContextDocument],
        params: ListTasksRequest,
        context: ServerCallContext,
        best: task_pages.Best,
    ) -> None:
        """Read `documents` (FETCH_CONCURRENCY at a time) and offer those matching."""
        step = task_pages.FETCH_CONCURRENCY
        for start in range(0, len(documents), step):
            chunk = documents[start : start + step]
            read = await asyncio.gather(*(self._read(d.name, context) for d in chunk))
            for document, stored in zip(chunk, read, strict=True):
                if stored is not None and task_pages.matches(stored.task, params):
                    best.offer(self._position(document), stored.task)

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        try:
            await self._client(context).delete_context(
                SCOPE, self._name(task_id, context), author=AUTHOR
            )
        except PacketbusError as exc:
            note(exc)
            raise
