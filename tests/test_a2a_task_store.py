"""The A2A task store over the context service: compare-and-set on the document version,
a2a-sdk's VersionedTaskStore contract, against a real packetbus server."""

from __future__ import annotations

import pytest
from a2a.server.cluster.task_store import ConcurrentTaskModificationError
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.types.a2a_pb2 import Task, TaskState, TaskStatus

import packetbus
from packetbus_a2a.task_store import ContextTaskStore
from tests.conftest import unique


def task(task_id: str, state: TaskState) -> Task:
    return Task(id=task_id, context_id="ctx", status=TaskStatus(state=state))


async def test_versions_compare_and_set(client: packetbus.Client) -> None:
    store = ContextTaskStore(client, unique("agent"))
    other_agent = ContextTaskStore(client, unique("agent"))
    call = ServerCallContext()
    task_id = unique("task")

    first = await store.save(
        task(task_id, TaskState.TASK_STATE_SUBMITTED),
        event=None,
        prev=None,
        prev_version=TaskVersion.MISSING,
        context=call,
    )
    # A second "first write" of the same task loses the race.
    with pytest.raises(ConcurrentTaskModificationError):
        await store.save(
            task(task_id, TaskState.TASK_STATE_WORKING),
            event=None,
            prev=None,
            prev_version=TaskVersion.MISSING,
            context=call,
        )
    second = await store.save(
        task(task_id, TaskState.TASK_STATE_WORKING),
        event=None,
        prev=None,
        prev_version=first,
        context=call,
    )
    assert second.is_after(first)
    # A writer holding the old version is refused, and nothing changes.
    with pytest.raises(ConcurrentTaskModificationError):
        await store.save(
            task(task_id, TaskState.TASK_STATE_COMPLETED),
            event=None,
            prev=None,
            prev_version=first,
            context=call,
        )
    stored = await store.get(task_id, call)
    assert stored is not None
    assert (stored.task.status.state, stored.version) == (TaskState.TASK_STATE_WORKING, second)
    # Another agent's endpoint does not see it.
    assert await other_agent.get(task_id, call) is None

    # A cancel overwrites a non-terminal task whatever the version it holds...
    canceled = await store.save(
        task(task_id, TaskState.TASK_STATE_CANCELED),
        event=None,
        prev=None,
        prev_version=first,
        context=call,
    )
    assert canceled.is_after(second)
    # ...but never a terminal or an absent one.
    with pytest.raises(ConcurrentTaskModificationError):
        await store.save(
            task(task_id, TaskState.TASK_STATE_CANCELED),
            event=None,
            prev=None,
            prev_version=canceled,
            context=call,
        )
    with pytest.raises(ConcurrentTaskModificationError):
        await store.save(
            task(unique("task"), TaskState.TASK_STATE_CANCELED),
            event=None,
            prev=None,
            prev_version=TaskVersion.MISSING,
            context=call,
        )

    await store.delete(task_id, call)
    assert await store.get(task_id, call) is None
