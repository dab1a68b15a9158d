"""ListTasks pages of the A2A task store (issue 18): page size, opaque page tokens that
any replica continues, total size, filters, newest change first, one owner's tasks only,
against a real packetbus server authenticating real JWTs (see test_a2a_auth)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.types.a2a_pb2 import ListTasksRequest, Task, TaskState, TaskStatus
from a2a.utils.errors import InvalidParamsError
from google.protobuf.timestamp_pb2 import Timestamp

import packetbus
from packetbus_a2a.auth import BearerUser, Principals
from packetbus_a2a.task_store import SCOPE, ContextTaskStore
from packetbus_server import RunningServer
from tests._identities import Issuer, guarded_fixtures, spiffe
from tests.conftest import unique

# About paging, not storage (test_a2a_task_store and test_context cover the backends).
pytestmark = pytest.mark.one_backend

ALICE, BOB = spiffe("alice"), spiffe("bob")
GRANTS = {name: [("context.*", SCOPE), ("agents.act_for", "a2a*")] for name in (ALICE, BOB)}

issuer, guarded = guarded_fixtures(GRANTS, "a2a-pages")


@pytest.fixture
async def base(guarded: RunningServer) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(f"127.0.0.1:{guarded.port}", token=None) as c:
        yield c


def as_caller(token: str, name: str) -> ServerCallContext:
    return ServerCallContext(user=BearerUser(token, name))


async def test_list_tasks_pages(base: packetbus.Client, issuer: Issuer) -> None:
    agent_id = unique("paged")
    store = ContextTaskStore(Principals(base), agent_id)
    alice, bob = as_caller(issuer.token(ALICE), ALICE), as_caller(issuer.token(BOB), BOB)
    states = [TaskState.TASK_STATE_WORKING, TaskState.TASK_STATE_COMPLETED]
    made = []
    for i in range(120):
        status = TaskStatus(state=states[i % 2], timestamp=Timestamp(seconds=1_800_000_000 + i))
        task = Task(id=f"t{i:03d}", context_id=f"c{i % 3}", status=status)
        await store.save(
            task, event=None, prev=None, prev_version=TaskVersion.MISSING, context=alice
        )
        made.append(task.id)
    await store.save(
        Task(id="bobs", context_id="c0", status=TaskStatus(state=states[0])),
        event=None,
        prev=None,
        prev_version=TaskVersion.MISSING,
        context=bob,
    )

    # Default page size 50: 50, 50, 20, newest change first, each task once.
    seen, token, sizes = [], "", []
    while True:
        page = await store.list(ListTasksRequest(page_token=token), alice)
        assert (page.page_size, page.total_size) == (50, 120)
        sizes.append(len(page.tasks))
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert sizes == [50, 50, 20]
    assert sorted(seen) == sorted(made)
    # Written in order t000..t119: the newest change first (ties: by id, descending).
    assert seen == sorted(made, reverse=True)

    # Filters, with their own total; a small page; the token goes on from the last task.
    first = await store.list(ListTasksRequest(context_id="c1", page_size=7), alice)
    assert first.total_size == 40
    assert [t.id for t in first.tasks] == [f"t{i:03d}" for i in range(118, 96, -3)][:7]
    rest = await store.list(
        ListTasksRequest(context_id="c1", page_size=100, page_token=first.next_page_token), alice
    )
    assert len(rest.tasks) == 33
    assert rest.next_page_token == ""
    done = await store.list(ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED), alice)
    assert done.total_size == 60
    assert {t.status.state for t in done.tasks} == {TaskState.TASK_STATE_COMPLETED}
    recent = await store.list(
        ListTasksRequest(status_timestamp_after=Timestamp(seconds=1_800_000_100)), alice
    )
    assert [t.id for t in recent.tasks] == [f"t{i:03d}" for i in range(119, 99, -1)]
    # Bob sees his one task, never alice's.
    assert [t.id for t in (await store.list(ListTasksRequest(), bob)).tasks] == ["bobs"]
    with pytest.raises(InvalidParamsError):
        await store.list(ListTasksRequest(page_token="not-a-token"), alice)
