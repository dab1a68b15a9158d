"""Who sees which topics (issue 19): ListTopics filters by topics.subscribe, never
refusing the call, and the console's Topics routes answer as packetbus decides.

A real packetbus server authenticating real JWTs and authorizing by a policy file,
a real `packetbus console` process without a token of its own, and httpx signed in
as principals with different grants.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest

import packetbus
from packetbus_server import RunningServer
from tests._console import CHANGE, start_console, stop
from tests._identities import Issuer, client_as, guarded_fixtures, spiffe
from tests.conftest import new_packet, unique

# About who may call, not how the store behaves: one backend (see conftest).
pytestmark = pytest.mark.one_backend

SPACE = unique("tauth")
OPEN, SHUT = f"{SPACE}.open.", f"{SPACE}.shut."
ADMIN = spiffe("topics-admin")
READER = spiffe("topics-reader")  # topics and groups under OPEN
SUBSCRIBER = spiffe("topics-subscriber")  # topics.subscribe everywhere, no groups.read
STRANGER = spiffe("topics-stranger")  # nothing on topics
GRANTS = {
    ADMIN: [("*", "*")],
    READER: [("topics.subscribe", OPEN + "*"), ("groups.read", OPEN + "*")],
    SUBSCRIBER: [("topics.subscribe", "*")],
    STRANGER: [("agents.read", "*")],
}


issuer, guarded = guarded_fixtures(GRANTS, "topics-auth")


@pytest.fixture(scope="module")
def target(guarded: RunningServer) -> str:
    return f"127.0.0.1:{guarded.port}"


@pytest.fixture(scope="module")
async def topics(target: str, issuer: Issuer) -> dict[str, str]:
    """Two topics under OPEN and one under SHUT, one packet and one group each."""
    names = {"a": OPEN + "a", "b": OPEN + "b", "shut": SHUT + "x"}
    async with await client_as(target, issuer.token(ADMIN)) as admin:
        for name in names.values():
            await admin.dispatch_batch([new_packet(name)])
            await admin.create_consumer_group(name, "g", start=packetbus.EARLIEST)
    return names


@pytest.fixture(scope="module")
def console(target: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k != "PACKETBUS_TOKEN"}
    process, url = start_console(target, env=env)
    yield url
    stop(process)


@asynccontextmanager
async def signed_in(console: str, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of the console with a session for `token`."""
    async with httpx.AsyncClient(base_url=console, timeout=20) as http:
        answer = await http.post("/api/session", json={"token": token}, headers=CHANGE)
        assert answer.status_code == 200, answer.text
        yield http


async def names_seen(target: str, token: str) -> list[str]:
    async with await client_as(target, token) as client:
        return [t.name async for t in client.list_topics(SPACE)]


async def test_a_listing_leaves_out_the_topics_a_caller_may_not_read(
    target: str, issuer: Issuer, topics: dict[str, str]
) -> None:
    assert await names_seen(target, issuer.token(ADMIN)) == [
        topics["a"],
        topics["b"],
        topics["shut"],
    ]
    assert await names_seen(target, issuer.token(READER)) == [topics["a"], topics["b"]]
    # Not refused: an empty listing.
    assert await names_seen(target, issuer.token(STRANGER)) == []


async def test_the_console_lists_and_shows_only_what_the_principal_may_read(
    console: str, issuer: Issuer, topics: dict[str, str]
) -> None:
    async with signed_in(console, issuer.token(READER)) as http:
        listing = await http.get("/api/topics", params={"prefix": SPACE})
        assert [t["name"] for t in listing.json()["topics"]] == [topics["a"], topics["b"]]

        shown = await http.get(f"/api/topics/{topics['a']}")
        assert shown.status_code == 200
        assert [g["name"] for g in shown.json()["groups"]] == ["g"]
        browsed = await http.get(f"/api/topics/{topics['a']}/packets")
        assert browsed.status_code == 200
        assert len(browsed.json()["packets"]) == 1

        for path in (f"/api/topics/{topics['shut']}", f"/api/topics/{topics['shut']}/packets"):
            refused = await http.get(path)
            assert refused.status_code == 403, path
            assert refused.json()["code"] == "PERMISSION_DENIED"
            assert "topics.subscribe" in refused.json()["error"]


async def test_without_groups_read_a_topic_is_shown_with_its_groups_refused(
    console: str, issuer: Issuer, topics: dict[str, str]
) -> None:
    async with signed_in(console, issuer.token(SUBSCRIBER)) as http:
        shown = await http.get(f"/api/topics/{topics['shut']}")
    assert shown.status_code == 200
    doc = shown.json()
    assert (doc["topic"], doc["packets"], doc["groups"]) == (topics["shut"], "1", None)
    assert "groups.read" in doc["groupsRefused"]


async def test_without_a_session_the_topics_routes_are_401(
    console: str, topics: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=console, timeout=20) as http:
        for path in (
            "/api/topics",
            f"/api/topics/{topics['a']}",
            f"/api/topics/{topics['a']}/packets",
        ):
            answer = await http.get(path)
            assert answer.status_code == 401, path
            assert answer.json()["code"] == "UNAUTHENTICATED"
