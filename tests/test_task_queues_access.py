"""ListTaskQueues under authorization: each caller sees the queues it holds tasks.read
on, the others left out as if absent (the call is not refused)."""

from __future__ import annotations

import pytest

import packetbus
from packetbus_server import RunningServer
from tests._identities import Issuer, client_as, guarded_fixtures, spiffe
from tests.conftest import unique

# About who may call, not how the store behaves: one backend (see conftest).
pytestmark = pytest.mark.one_backend

ROOT = unique("acl")
ADMIN = spiffe("queues-admin")
TEAM_A = spiffe("queues-team-a")
POSTER = spiffe("queues-poster")  # may post to every queue, read none
NOBODY = spiffe("queues-nobody")  # authenticated, no role at all
GRANTS = {
    ADMIN: [("*", "*")],
    TEAM_A: [("tasks.read", f"{ROOT}.a.*")],
    POSTER: [("tasks.post", "*")],
}

issuer, guarded = guarded_fixtures(GRANTS, "task-queues-access")


async def _listed(target: str, token: str) -> list[str]:
    async with await client_as(target, token) as client:
        return [s.queue async for s in client.list_task_queues(ROOT, page_size=1)]


async def test_each_caller_sees_the_queues_it_may_read(
    guarded: RunningServer, issuer: Issuer
) -> None:
    target = f"127.0.0.1:{guarded.port}"
    names = [f"{ROOT}.a.one", f"{ROOT}.a.two", f"{ROOT}.b.one"]
    async with await client_as(target, issuer.token(ADMIN)) as admin:
        for name in names:
            await admin.task_queue(name).post(packetbus.Task(id="t"), origin="queues-admin")

    assert await _listed(target, issuer.token(ADMIN)) == names
    # Paged one at a time, the queue it may not read is skipped, not a gap or a refusal.
    assert await _listed(target, issuer.token(TEAM_A)) == names[:2]
    assert await _listed(target, issuer.token(POSTER)) == []
    assert await _listed(target, issuer.token(NOBODY)) == []
