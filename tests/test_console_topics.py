"""The console's Topics and consumer groups API (issue 19), without authentication: a
real packetbus server, a real `packetbus console` process and httpx. The topics
listing and its live twin, a topic's retention and groups (outstanding, consumers,
lag), browsing its packets a page at a time from a cursor, and bad input answered
400 with nothing else done. (Permissions: test_console_topics_auth.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packetbus
from tests._console import output, sse_events, start_console, stop
from tests.conftest import new_packet, unique


@pytest.fixture(scope="module")
def console(target: str) -> Iterator[str]:
    process, url = start_console(target)
    yield url
    stop(process)


@pytest.fixture
async def http(console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console, timeout=20) as client:
        yield client


async def dispatch(client: packetbus.Client, topic: str, n: int) -> list[str]:
    results = await client.dispatch_batch([new_packet(topic) for _ in range(n)])
    assert all(r.WhichOneof("outcome") == "receipt" for r in results)
    return [r.receipt.cursor for r in results]


async def test_the_listing_gives_each_topics_size_and_groups(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    prefix = unique("ctopics") + "."
    cursors = await dispatch(client, prefix + "a", 2)
    await client.create_consumer_group(prefix + "b", "workers")

    answer = await http.get("/api/topics", params={"prefix": prefix})

    assert answer.status_code == 200
    doc = answer.json()
    assert doc["truncated"] is False
    a, b = doc["topics"]
    assert (a["name"], a["packets"], a["firstCursor"], a["lastCursor"]) == (
        prefix + "a",
        "2",
        cursors[0],
        cursors[1],
    )
    assert (a["consumerGroups"], a["carcelEntries"]) == (0, "0")
    assert (b["name"], b["packets"], b["consumerGroups"]) == (prefix + "b", "0", 1)
    assert b["retention"]["policy"] == "RETENTION_POLICY_UNSPECIFIED"

    cut = await http.get("/api/topics", params={"prefix": prefix, "limit": "1"})
    assert [t["name"] for t in cut.json()["topics"]] == [prefix + "a"]
    assert cut.json()["truncated"] is True


def _names(snapshot: dict[str, Any]) -> list[str]:
    return [topic["name"] for topic in snapshot["topics"]]


async def test_the_live_listing_pushes_a_new_topic(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    prefix = unique("clive") + "."
    await dispatch(client, prefix + "first", 1)
    params = {"prefix": prefix, "interval": "0.25"}
    async with http.stream("GET", "/api/topics/events", params=params) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse_events(stream)
        async with asyncio.timeout(15):
            _, kind, first = await anext(events)
            assert kind == "snapshot"
            assert _names(first) == [prefix + "first"]
            await dispatch(client, prefix + "second", 1)
            _, kind, later = await anext(events)
    assert kind == "snapshot"
    assert _names(later) == [prefix + "first", prefix + "second"]


async def test_a_topic_shows_its_retention_and_groups_with_lag(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    topic = unique("cdetail") + "/with/slashes"
    await client.set_topic_retention(topic, max_packets=100)
    await dispatch(client, topic, 3)
    await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    async with client.consume(topic, "g", consumer="c1") as consumer:
        async with asyncio.timeout(20):
            await anext(consumer)  # pulled: the three are leased, none acked

        answer = await http.get(f"/api/topics/{topic}")

    assert answer.status_code == 200
    doc = answer.json()
    assert (doc["topic"], doc["packets"], doc["groupsRefused"]) == (topic, "3", "")
    assert doc["retention"]["maxPackets"] == "100"
    [group] = doc["groups"]
    assert (group["name"], group["consumers"], group["lag"]) == ("g", "1", "0")
    assert int(group["outstanding"]) >= 1
    assert group["lastDeliveredCursor"]

    async with http.stream("GET", f"/api/topics/{topic}/events") as stream:
        assert stream.status_code == 200
        _, kind, live = await anext(sse_events(stream))
    assert (kind, live["topic"]) == ("snapshot", topic)


async def test_browsing_pages_through_a_topic_from_a_cursor(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    topic = unique("cbrowse")
    packets = [new_packet(topic) for _ in range(5)]
    results = await client.dispatch_batch(packets)
    cursors = [r.receipt.cursor for r in results]

    first = (await http.get(f"/api/topics/{topic}/packets", params={"limit": "2"})).json()
    assert [p["cursor"] for p in first["packets"]] == cursors[:2]
    assert first["nextCursor"] == cursors[1]
    row = first["packets"][0]
    assert row["trackingId"] == packets[0].tracking_id
    assert row["origin"] == packets[0].origin
    assert row["speechAct"] == packetbus.SpeechAct.Name(packets[0].speech_act)
    assert row["contentBytes"] > 0
    assert row["storedAt"].endswith("Z")
    assert first["gaps"] == []

    params = {"after": first["nextCursor"], "limit": "10"}
    rest = (await http.get(f"/api/topics/{topic}/packets", params=params)).json()
    assert [p["cursor"] for p in rest["packets"]] == cursors[2:]
    assert rest["nextCursor"] == cursors[-1]

    # At the end: nothing more now, answered at once, the cursor kept.
    params = {"after": rest["nextCursor"]}
    loop = asyncio.get_running_loop()
    started = loop.time()
    end = (await http.get(f"/api/topics/{topic}/packets", params=params)).json()
    assert loop.time() - started < 5
    assert end == {"packets": [], "nextCursor": cursors[-1], "gaps": []}


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/topics", {"limit": "0"}),
        ("/api/topics", {"prefix": "jobs.*"}),
        ("/api/topics/t/packets", {"limit": "201"}),
        ("/api/topics/t/packets", {"limit": "ten"}),
        ("/api/topics/t/packets", {"after": "not-a-cursor"}),
        ("/api/topics/bad topic", {}),
        ("/api/topics/bad topic/packets", {}),
        ("/api/topics/t/events", {"interval": "0"}),
    ],
)
async def test_bad_input_is_a_json_400(
    http: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    answer = await http.get(path, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "INVALID_ARGUMENT"
    assert answer.json()["error"]


_ROUTES = (
    "/api/topics?prefix={}&limit={}",
    "/api/topics/{}",
    "/api/topics/{}/packets?after={}&limit={}",
    "/api/topics/{}/events?interval={}",
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    template=st.sampled_from(_ROUTES),
    segment=st.text(max_size=300),
    value=st.one_of(st.text(max_size=40), st.integers()),
)
async def test_arbitrary_segments_and_values_are_never_a_500(
    console: str, template: str, segment: str, value: object
) -> None:
    path = template.format(quote(segment, safe=""), *[quote(str(value), safe="")] * 2)
    # Streamed: a live route that accepts answers a stream that never ends.
    async with (
        httpx.AsyncClient(timeout=15) as http,
        http.stream("GET", console + path) as response,
    ):
        status, kind = response.status_code, response.headers["content-type"]
        body = await response.aread() if kind == "application/json" else b""
    assert status < 500, (path, status, body)
    if status >= 400:
        assert kind == "application/json"
        assert set(json.loads(body)) == {"error", "code"}
    assert "Traceback" not in output(console)


async def test_a_slash_sent_escaped_stays_in_the_topic_name(
    http: httpx.AsyncClient, client: packetbus.Client
) -> None:
    # Topics whose last segment is a route's own word: escaped, each is itself.
    root = unique("console.slash")
    await dispatch(client, f"{root}/events", 2)
    await dispatch(client, f"{root}/packets", 1)
    for name, count in ((f"{root}/events", "2"), (f"{root}/packets", "1")):
        detail = await http.get(f"/api/topics/{quote(name, safe='')}")
        assert (detail.status_code, detail.json()["topic"]) == (200, name), detail.text
        assert detail.json()["packets"] == count
        page = await http.get(f"/api/topics/{quote(name, safe='')}/packets")
        assert len(page.json()["packets"]) == int(count)
        async with http.stream("GET", f"/api/topics/{quote(name, safe='')}/events") as live:
            events = aiter(sse_events(live))
            _, event, data = await anext(events)
        assert (event, data["topic"], data["packets"]) == ("snapshot", name, count)
    # Unescaped, the last segment is the route's: topic root's packets (there are none).
    plain = await http.get(f"/api/topics/{root}/packets")
    assert (plain.status_code, plain.json()["packets"]) == (200, [])
    # An escaped NUL is no way around the topic check.
    nul = await http.get(f"/api/topics/{root}%00%2Fevents")
    assert (nul.status_code, nul.json()["code"]) == (400, "INVALID_ARGUMENT")
