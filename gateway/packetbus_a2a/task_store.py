"""The A2A task store, kept in packetbus's shared context (ContextService).

Why the context service: its documents are versioned and written with
compare-and-set, which is exactly a2a-sdk's `VersionedTaskStore` contract, and
it lives in the packetbus store, so every gateway replica reads the same
tasks (GetTask on any replica) and the gateway stays stateless.

Layout: scope ``a2a-tasks``, one document per task named
``<agent id>/<task id>``, holding the Task as proto JSON
(``application/json``); the document version is the task's `TaskVersion`.
Each agent's gateway endpoint sees only its own tasks.

The task's metadata key ``packetbus.answers`` counts the agent's answers the
task includes (`answers`); `save` sets it from the answer-driven event it
writes, and a save of an answer the task already includes writes nothing, so
each answer is applied once whichever replica applies it.
"""

from __future__ import annotations

from collections import OrderedDict

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

from .answers import ANSWERS_KEY, answers_included

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
# Bounded read of one agent's tasks for ListTasks (see `list`).
_LIST_LIMIT = 100


class ContextTaskStore(VersionedTaskStore):
    """`VersionedTaskStore` over ContextService documents (see the module docstring).

    `ttl` (seconds, 0: the server's default) is how long a task outlives its
    last change. Store failures propagate as PacketbusError, which a2a-sdk
    answers as an internal error.
    """

    def __init__(self, client: Client, agent_id: str, *, ttl: int = 0) -> None:
        self._client = client
        self._agent_id = agent_id
        self._ttl = ttl
        # Task id -> (version, answers it includes) as last read or written here.
        self._answers: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def _name(self, task_id: str) -> str:
        return f"{self._agent_id}/{task_id}"

    async def save(
        self,
        task: Task,
        *,
        event: Event | None,
        prev: Task | None,
        prev_version: TaskVersion,
        context: ServerCallContext,
    ) -> TaskVersion:
        del context
        if task.status.state == TaskState.TASK_STATE_CANCELED:
            return await self._save_cancel(task)
        answers = _answers_after(event)
        if answers is not None:
            # Not answers_included(prev): a2a-sdk changes its task in place, so
            # `prev` may be `task` itself, the event already applied.
            if await self._answers_at(task.id, prev_version) >= answers:
                # Already in: a driver that lost its lease (a2a-sdk reloads the task
                # after a conflict and applies its event again). Kept once.
                return prev_version
            task.metadata.update({ANSWERS_KEY: answers})
        return await self._put(task, _expected(prev_version))

    def _remember(self, task: Task, version: int) -> None:
        self._answers[task.id] = (version, answers_included(task))
        self._answers.move_to_end(task.id)
        while len(self._answers) > _REMEMBERED:
            self._answers.popitem(last=False)

    async def _answers_at(self, task_id: str, version: TaskVersion) -> int:
        """How many answers version `version` of task `task_id` includes."""
        number = TaskStoreVersion.number_of(version)
        if number == 0:
            return 0
        known = self._answers.get(task_id)
        if known is None or known[0] != number:
            stored = await self.get(task_id, ServerCallContext())
            known = self._answers.get(task_id)
            if stored is None or known is None or known[0] != number:
                # Written since: the compare-and-set would fail anyway.
                raise ConcurrentTaskModificationError(task_id)
        return known[1]

    async def _save_cancel(self, task: Task) -> TaskVersion:
        # The SDK's rule: a cancel overwrites any non-terminal task, whatever
        # its version, but never a terminal or absent one. Compare-and-set on
        # the version just read, again if another writer got in between.
        while True:
            current = await self.get(task.id, ServerCallContext())
            if current is None or current.task.status.state in _TERMINAL:
                raise ConcurrentTaskModificationError(task.id)
            try:
                return await self._put(task, _expected(current.version))
            except ConcurrentTaskModificationError:
                continue

    async def _put(self, task: Task, expected: int) -> TaskVersion:
        data = json_format.MessageToJson(task).encode()
        try:
            document = await self._client.put_context(
                SCOPE,
                self._name(task.id),
                data,
                expected_version=expected,
                ttl=self._ttl,
                content_type="application/json",
                author=AUTHOR,
            )
        except PacketbusError as exc:
            if exc.code in (grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS):
                raise ConcurrentTaskModificationError(task.id) from exc
            raise
        self._remember(task, document.version)
        return TaskStoreVersion(document.version)

    async def get(self, task_id: str, context: ServerCallContext) -> StoredTask | None:
        del context
        try:
            value = await self._client.get_context(SCOPE, self._name(task_id))
        except PacketbusError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        task = json_format.Parse(value.data, Task())
        self._remember(task, value.document.version)
        return StoredTask(task, TaskStoreVersion(value.document.version))

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """This agent's tasks, newest change first, filtered by context id and state.

        Reads at most the first 100 documents by name and pages no further:
        page tokens are not implemented yet (the next slice).
        """
        page = await self._client.list_contexts(
            SCOPE, name_prefix=f"{self._agent_id}/", page_size=_LIST_LIMIT
        )
        tasks: list[Task] = []
        for document in page.documents:
            stored = await self.get(document.name.split("/", 1)[1], context)
            if stored is None:
                continue
            task = stored.task
            if params.context_id and task.context_id != params.context_id:
                continue
            if params.status and task.status.state != params.status:
                continue
            tasks.append(task)
        tasks.sort(key=lambda t: t.status.timestamp.ToNanoseconds(), reverse=True)
        size = params.page_size or 50
        return ListTasksResponse(
            tasks=tasks[:size], page_size=size, total_size=len(tasks), next_page_token=""
        )

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        del context
        await self._client.delete_context(SCOPE, self._name(task_id), author=AUTHOR)
