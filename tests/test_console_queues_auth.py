"""The console's task queue and findings routes with authentication: a signed-in
principal sees only the queues it holds tasks.read on, and a call on one it may not
read (its tasks, a task, its events; findings without findings.read) is refused
403 as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

import packetbus
from packetbus_console.sessions import COOKIE
from packetbus_server import RunningServer
from tests._console import CHANGE, start_console, stop
from tests._identities import Issuer, client_as, guarded_fixtures, spiffe
from tests.conftest import unique

# About who may call, not how the store behaves: one backend (see conftest).
pytestmark = pytest.mark.one_backend

ROOT = unique("console-acl")
ADMIN = spiffe("console-queues-admin")
VIEWER = spiffe("console-queues-viewer")
GRANTS = {ADMIN: [("*", "*")], VIEWER: [("tasks.read", f"{ROOT}.a.*")]}

issuer, guarded = guarded_fixtures(GRANTS, "console-queues-auth")


@pytest.fixture(scope="module")
def console(guarded: RunningServer) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k != "PACKETBUS_TOKEN"}
    process, url = start_console(f"127.0.0.1:{guarded.port}", env=env)
    yield url
    stop(process)


@pytest.fixture
async def viewer(console: str, issuer: Issuer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console, timeout=20) as http:
        signed_in = await http.post(
            "/api/session", json={"token": issuer.token(VIEWER)}, headers=CHANGE
        )
        assert signed_in.status_code == 200, signed_in.text
        yield http


async def test_a_viewer_sees_the_queues_it_may_read_and_is_refused_the_others(
    guarded: RunningServer, issuer: Issuer, viewer: httpx.AsyncClient
) -> None:
    async with await client_as(f"127.0.0.1:{guarded.port}", issuer.token(ADMIN)) as admin:
        for name in (f"{ROOT}.a.one", f"{ROOT}.b.one"):
            await admin.task_queue(name).post(packetbus.Task(id="t"), origin="admin")

    listed = (await viewer.get("/api/queues", params={"prefix": ROOT})).json()
    assert [q["queue"] for q in listed["queues"]] == [f"{ROOT}.a.one"]
    assert (await viewer.get(f"/api/queues/{ROOT}.a.one/tasks")).status_code == 200

    for path in (
        f"/api/queues/{ROOT}.b.one/tasks",
        f"/api/queues/{ROOT}.b.one/tasks/t",
        f"/api/queues/{ROOT}.b.one/events",
        "/api/findings?taskId=t",
        "/api/escalations",
    ):
        refused = await viewer.get(path)
        assert refused.status_code == 403, (path, refused.text)
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["code"] == "PERMISSION_DENIED", path


async def test_without_a_session_the_routes_are_401(console: str) -> None:
    async with httpx.AsyncClient(base_url=console, timeout=20) as http:
        for path in ("/api/queues", "/api/findings?taskId=t", "/api/escalations"):
            refused = await http.get(path)
            assert (refused.status_code, refused.json()["code"]) == (401, "UNAUTHENTICATED")


async def test_the_live_twins_refuse_as_their_plain_routes_do(
    console: str, viewer: httpx.AsyncClient
) -> None:
    # A stream refused before it starts is a JSON answer (the page then reads the plain
    # route for it), never a 200 stream: for a viewer without the grant, and without
    # a session or with a cookie that names none.
    for path in ("/api/findings/events?taskId=t", "/api/escalations/events"):
        async with viewer.stream("GET", path) as refused:
            body = json.loads(await refused.aread())
        assert (refused.status_code, body["code"]) == (403, "PERMISSION_DENIED"), path
    async with httpx.AsyncClient(base_url=console, timeout=20) as http:
        for cookie in ("", "forged"):
            if cookie:
                http.cookies.set(COOKIE, cookie)
            for path in ("/api/queues/events", "/api/findings/events?taskId=t"):
                async with http.stream("GET", path) as refused:
                    body = json.loads(await refused.aread())
                assert (refused.status_code, body["code"]) == (401, "UNAUTHENTICATED"), path
