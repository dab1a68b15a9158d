"""The operator console's API (issue 19), without authentication.

A real packetbus server under a policy file (a hold rule, approvers), a real
`packetbus console` process with an approver key, and httpx against its API:
the registry and its live events, a held packet approved and then delivered, a
carceled packet requeued and delivered again, a packet's custody and its export
line verified offline, the CSRF guard, sign-in refused without authentication,
and the CLI's refusals. (With JWTs and grants: test_console_auth.py.)
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import packetbus
from packetbus._export import verify_export
from packetbus_server import Limits, RunningServer, ServerConfig, start
from tests._console import APPROVER, CHANGE, hold_spawns, sse_events, start_console, stop
from tests.conftest import new_packet, run_cli, unique

POLICY = hold_spawns("console.*")


@pytest.fixture(scope="module")
async def governed(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    path = tmp_path_factory.mktemp("console-policy") / "policy.toml"
    path.write_text(POLICY)
    limits = Limits(policy_reload_seconds=0.05, min_ack_deadline_seconds=1)
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits, policy_file=path)
    )
    yield srv
    await srv.stop(grace=0)


@pytest.fixture(scope="module")
def target(governed: RunningServer) -> str:
    return f"127.0.0.1:{governed.port}"


@pytest.fixture(scope="module")
async def approver_key(target: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    identity = packetbus.AgentIdentity.generate(unique(APPROVER))
    async with await packetbus.Client.connect(target) as bus:
        await bus.register_identity(identity)
    path = tmp_path_factory.mktemp("console-keys") / "approver.key"
    identity.save(path)
    return path


@pytest.fixture(scope="module")
def console(target: str, approver_key: Path) -> Iterator[str]:
    process, url = start_console(target, "--agent-key", str(approver_key))
    yield url
    stop(process)


@pytest.fixture
async def bus(target: str) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(target) as client:
        yield client


@pytest.fixture
async def http(console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console, timeout=20) as client:
        yield client


async def test_me_without_authentication_is_local_with_every_grant(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.get("/api/me")
    assert answer.status_code == 200
    assert answer.json() == {
        "principal": "local",
        "authenticated": False,
        "source": "local",
        "agentId": "",
        "roles": [],
        "grants": [{"permission": "*", "resource": "*"}],
    }


async def test_agents_are_listed_and_their_joining_and_going_stale_stream_as_events(
    http: httpx.AsyncClient, bus: packetbus.Client
) -> None:
    agent = unique("console-agent")
    kinds: list[tuple[str, str]] = []
    async with http.stream("GET", "/api/agents/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = aiter(sse_events(stream))
        # First the cursor the watch starts after: a browser resumes there.
        start_cursor, event, data = await anext(events)
        assert (event, data) == ("start", {"cursor": start_cursor})
        await bus.register_agent(agent, role="worker", ttl=1)
        async with asyncio.timeout(15):
            async for cursor, event, data in events:
                assert event == "membership"
                assert cursor == data["cursor"]
                if data["agent"]["id"] == agent:  # type: ignore[index]
                    kinds.append((cursor, str(data["kind"])))
                    if data["kind"] == "MEMBERSHIP_EVENT_KIND_STALE":
                        break
    assert [k for _, k in kinds] == ["MEMBERSHIP_EVENT_KIND_JOINED", "MEMBERSHIP_EVENT_KIND_STALE"]

    listed = (await http.get("/api/agents", params={"role": "worker"})).json()["agents"]
    [mine] = [a for a in listed if a["id"] == agent]
    assert (mine["role"], mine["liveness"]) == ("worker", "AGENT_LIVENESS_STALE")
    stale = (await http.get("/api/agents", params={"liveness": "stale"})).json()["agents"]
    assert agent in [a["id"] for a in stale]

    # A browser's EventSource reconnects with Last-Event-ID: the stream resumes
    # after it, from the start cursor as from an event's.
    for last, expected in ((start_cursor, kinds[0]), (kinds[0][0], kinds[1])):
        headers = {"Last-Event-ID": last}
        async with http.stream("GET", "/api/agents/events", headers=headers) as resumed:
            async with asyncio.timeout(10):
                async for cursor, event, data in sse_events(resumed):
                    assert event == "membership"
                    if data["agent"]["id"] == agent:  # type: ignore[index]
                        assert (cursor, data["kind"]) == expected
                        break

    bad = await http.get("/api/agents", params={"liveness": "sleepy"})
    assert (bad.status_code, bad.json()["code"]) == (400, "INVALID_ARGUMENT")


def _spawn(topic: str) -> packetbus.Packet:
    packet = new_packet(topic)
    packet.data.update({"primitive": "logistics.spawn"})
    return packet


async def test_a_held_packet_approved_through_the_api_is_delivered(
    http: httpx.AsyncClient, bus: packetbus.Client
) -> None:
    topic = unique("console.held")
    await bus.create_consumer_group(topic, "workers", start=packetbus.EARLIEST)
    packet = _spawn(topic)
    [result] = await bus.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"

    listed = (await http.get("/api/held", params={"topic": topic})).json()
    assert listed["truncated"] is False
    [held] = listed["held"]
    assert (held["topic"], held["ruleId"]) == (topic, "spawn-needs-guardian")
    assert held["packet"]["packet"]["trackingId"] == packet.tracking_id

    # Without the CSRF header: refused, nothing approved.
    refused = await http.post(f"/api/held/{packet.tracking_id}/approve", json={"topic": topic})
    assert (refused.status_code, refused.json()["code"]) == (403, "CSRF")
    assert len((await http.get("/api/held", params={"topic": topic})).json()["held"]) == 1

    # No topic given: the console finds it.
    approved = await http.post(
        f"/api/held/{packet.tracking_id}/approve", json={"note": "looks fine"}, headers=CHANGE
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["receipt"]["topic"] == topic
    assert (await http.get("/api/held", params={"topic": topic})).json()["held"] == []

    async with bus.consume(topic, "workers", consumer="w1") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(aiter(consumer))
        assert delivery.packet.packet.tracking_id == packet.tracking_id
        await delivery.ack()

    stats = (await http.get("/api/policy/stats", params={"topic": topic})).json()
    assert stats == {
        "byRule": {"spawn-needs-guardian": "1"},
        "byReason": {"spawning needs a guardian": "1"},
        "byDecision": {"held": "1", "approved": "1"},
    }
    gone = await http.post(
        f"/api/held/{packet.tracking_id}/deny", json={"reason": "late"}, headers=CHANGE
    )
    assert (gone.status_code, gone.json()["code"]) == (404, "NOT_FOUND")
    no_reason = await http.post(
        f"/api/held/{packet.tracking_id}/deny", json={"topic": topic}, headers=CHANGE
    )
    assert (no_reason.status_code, no_reason.json()) == (
        400,
        {"error": "reason is required", "code": "INVALID_ARGUMENT"},
    )


async def test_held_packets_and_decision_counts_are_pushed_live_as_they_change(
    http: httpx.AsyncClient, bus: packetbus.Client
) -> None:
    topic = unique("console.live")
    params = {"topic": topic, "interval": "0.25"}
    async with (
        http.stream("GET", "/api/held/events", params=params) as held,
        http.stream("GET", "/api/policy/stats/events", params=params) as stats,
    ):
        assert held.status_code == stats.status_code == 200
        assert held.headers["content-type"].startswith("text/event-stream")
        held_events, stats_events = aiter(sse_events(held)), aiter(sse_events(stats))
        assert await anext(held_events) == ("", "snapshot", {"held": [], "truncated": False})
        assert (await anext(stats_events))[1:] == (
            "snapshot",
            {"byRule": {}, "byReason": {}, "byDecision": {}},
        )
        packet = _spawn(topic)
        [result] = await bus.dispatch_batch([packet])
        assert result.WhichOneof("outcome") == "held"
        async with asyncio.timeout(10):
            # Pushed once it changed; nothing pushed while it stays the same.
            _, event, data = await anext(held_events)
            assert event == "snapshot"
            shown: Any = data["held"]
            assert [h["packet"]["packet"]["trackingId"] for h in shown] == [packet.tracking_id]
            _, event, data = await anext(stats_events)
            assert (event, data["byDecision"]) == ("snapshot", {"held": "1"})
            await bus.approve_packet(topic, packet.tracking_id, identity=await _approver(bus))
            assert (await anext(held_events))[1:] == (
                "snapshot",
                {"held": [], "truncated": False},
            )


async def _approver(bus: packetbus.Client) -> packetbus.AgentIdentity:
    identity = packetbus.AgentIdentity.generate(unique(APPROVER))
    await bus.register_identity(identity)
    return identity


async def test_a_live_view_refuses_a_bad_query_as_json(
    http: httpx.AsyncClient,
) -> None:
    for interval in ("0", "0.1", "61", "nan", "soon"):
        bad = await http.get("/api/carcel/events", params={"interval": interval})
        assert (bad.status_code, bad.json()["code"]) == (400, "INVALID_ARGUMENT"), interval
    # "²" and other scripts' digits pass str.isdigit() but not int(): 400, not a 500.
    for digits in ("²", "١٢", "1.5", "-1", "1001"):
        for path in ("/api/carcel", "/api/held", "/api/held/events"):
            bad = await http.get(path, params={"limit": digits})
            assert (bad.status_code, bad.json()["code"]) == (400, "INVALID_ARGUMENT"), (
                path,
                digits,
            )
    bad_limit = await http.get("/api/held/events", params={"limit": "0"})
    assert bad_limit.status_code == 400
    assert bad_limit.json() == {
        "error": "limit must be 1-1000, not '0'",
        "code": "INVALID_ARGUMENT",
    }


async def test_a_carceled_packet_requeued_through_the_api_is_delivered_again(
    http: httpx.AsyncClient, bus: packetbus.Client
) -> None:
    topic = unique("console.carcel")
    await bus.create_consumer_group(topic, "g", start=packetbus.EARLIEST, max_delivery_attempts=1)
    packet = new_packet(topic)
    await bus.dispatch(packet)
    async with bus.consume(topic, "g", consumer="picky") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(aiter(consumer))
            [nacked] = await delivery.nack(reason="cannot parse it")
    assert nacked.carcel_id

    listed = (
        await http.get("/api/carcel", params={"topic": topic, "reason": "max delivery attempts"})
    ).json()
    [entry] = listed["entries"]
    assert (entry["id"], entry["detail"], entry["source"]) == (
        nacked.carcel_id,
        "cannot parse it",
        "group:g",
    )
    other = await http.get("/api/carcel", params={"topic": topic, "reason": "other"})
    assert other.json() == {"entries": [], "truncated": False}

    requeued = await http.post(f"/api/carcel/{entry['id']}/requeue", headers=CHANGE)
    assert requeued.status_code == 200, requeued.text
    assert requeued.json()["cursor"]
    assert (await http.get("/api/carcel", params={"topic": topic})).json()["entries"] == []
    again = await http.post(
        f"/api/carcel/{entry['id']}/requeue", json={"topic": topic}, headers=CHANGE
    )
    assert (again.status_code, again.json()["code"]) == (404, "NOT_FOUND")

    async with bus.consume(topic, "g", consumer="fixed") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(aiter(consumer))
        assert delivery.packet.packet.tracking_id == packet.tracking_id
        [result] = await delivery.nack(reason="still bad")
    assert result.carcel_id

    # Purge with the same filters: another reason purges nothing, this one its entry.
    none = await http.post(
        "/api/carcel/purge", json={"topic": topic, "reason": "other"}, headers=CHANGE
    )
    assert none.json() == {"purged": 0}
    purged = await http.post(
        "/api/carcel/purge",
        params={"topic": topic, "reason": "max delivery attempts"},
        headers=CHANGE,
    )
    assert purged.json() == {"purged": 1}
    assert (await http.get("/api/carcel", params={"topic": topic})).json()["entries"] == []
    no_topic = await http.post("/api/carcel/purge", headers=CHANGE)
    assert (no_topic.status_code, no_topic.json()["code"]) == (400, "INVALID_ARGUMENT")


async def test_custody_shows_every_hop_verified_and_the_export_line_verifies_offline(
    http: httpx.AsyncClient, bus: packetbus.Client, tmp_path: Path
) -> None:
    topic = unique("console.custody")
    packet = new_packet(topic)
    receipt = await bus.dispatch(packet)
    server_id = (await bus.server_info()).server_id

    answer = await http.get(f"/api/custody/{packet.tracking_id}")
    assert answer.status_code == 200
    custody = answer.json()
    assert custody["verified"] is True
    assert custody["headVerdict"] == "CUSTODY_VERDICT_OK"
    assert custody["packet"]["receipt"]["cursor"] == receipt.cursor
    hops = custody["hops"]
    assert [(h["index"], h["action"], h["verdict"]) for h in hops] == [
        (0, "received", "CUSTODY_VERDICT_OK"),
        (1, "dispatched", "CUSTODY_VERDICT_OK"),
    ]
    assert {h["actor"] for h in hops} == {server_id}
    assert all(h["keyId"] and h["occurredAt"].endswith("Z") for h in hops)

    download = await http.get(f"/api/custody/{packet.tracking_id}/export")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/x-ndjson"
    assert download.headers["content-disposition"] == (
        f'attachment; filename="{packet.tracking_id}.jsonl"'
    )
    lines = download.text.splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["keys", "packet"]
    exported = tmp_path / "export.jsonl"
    exported.write_text(download.text)
    report = verify_export(exported)
    assert (report.ok, report.packets, report.verified, report.failures) == (True, 1, 1, [])
    checked = run_cli("verify", "--file", str(exported))
    assert checked.returncode == 0, checked.stderr
    assert "1 of 1 packets verified" in checked.stdout

    # One byte changed in the packet's content: the chain no longer verifies.
    doc = json.loads(lines[1])
    content = bytearray(base64.b64decode(doc["packet"]["content"]))
    content[-1] ^= 0x01
    doc["packet"]["content"] = base64.b64encode(bytes(content)).decode()
    changed = tmp_path / "changed.jsonl"
    changed.write_text(lines[0] + "\n" + json.dumps(doc) + "\n")
    broken = verify_export(changed)
    assert (broken.ok, broken.packets, broken.verified) == (False, 1, 0)

    missing = await http.get(f"/api/custody/{new_packet(topic).tracking_id}")
    assert (missing.status_code, missing.json()["code"]) == (404, "NOT_FOUND")
    malformed = await http.get("/api/custody/not-a-uuid/export")
    assert (malformed.status_code, malformed.json()["code"]) == (400, "INVALID_ARGUMENT")


async def test_sign_in_is_refused_without_authentication_and_sign_out_needs_the_header(
    http: httpx.AsyncClient,
) -> None:
    bad = await http.post("/api/session", json={"token": "not-a-jwt"}, headers=CHANGE)
    assert (bad.status_code, bad.json()) == (
        401,
        {"error": "the token is not a JWT", "code": "UNAUTHENTICATED"},
    )
    assert "set-cookie" not in bad.headers
    # A well-formed token, to a server that authenticates nobody: nothing to sign in to.
    claims = base64.urlsafe_b64encode(b'{"sub":"someone"}').rstrip(b"=").decode()
    nothing = await http.post("/api/session", json={"token": f"e30.{claims}.c2ln"}, headers=CHANGE)
    assert (nothing.status_code, nothing.json()["code"]) == (409, "FAILED_PRECONDITION")
    assert "set-cookie" not in nothing.headers
    shape = await http.post("/api/session", content=b"[1]", headers=CHANGE)
    assert (shape.status_code, shape.json()["code"]) == (400, "INVALID_ARGUMENT")
    unguarded = await http.delete("/api/session")
    assert (unguarded.status_code, unguarded.json()["code"]) == (403, "CSRF")
    out = await http.delete("/api/session", headers=CHANGE)
    assert (out.status_code, out.json()) == (200, {"signedOut": False})


def test_cli_refusals(target: str, tmp_path: Path) -> None:
    exposed = run_cli("console", "--target", target, "--listen", "0.0.0.0:0")
    assert exposed.returncode == 2
    assert "is not loopback: serve HTTPS (--tls-cert/--tls-key) or pass --insecure-listen" in (
        exposed.stderr
    )
    assert exposed.stderr.count("\n") == 1
    half = run_cli("console", "--listen", "127.0.0.1:0", "--tls-cert", str(tmp_path / "c.pem"))
    assert (half.returncode, half.stderr.strip()) == (
        2,
        "packetbus: --tls-cert and --tls-key go together",
    )
    bad = run_cli("console", "--listen", "nowhere")
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "packetbus: --listen 'nowhere' is not HOST:PORT",
    )
    key = tmp_path / "key.json"
    key.write_text("{}")
    wrong_key = run_cli("console", "--listen", "127.0.0.1:0", "--agent-key", str(key))
    assert wrong_key.returncode == 2
    assert f"--agent-key {key}: {key} is not an agent key file" in wrong_key.stderr
    as_json = run_cli("--json", "console")
    assert as_json.returncode == 2


def test_a_taken_port_is_one_line(target: str) -> None:
    process, url = start_console(target)
    try:
        taken = run_cli("console", "--target", target, "--listen", url.removeprefix("http://"))
        assert taken.returncode == 1
        assert taken.stderr.startswith(
            f"packetbus: cannot listen on {url.removeprefix('http://')}: "
        )
        assert taken.stderr.count("\n") == 1
    finally:
        stop(process)
    assert process.returncode == 0


async def test_a_body_over_the_limit_is_413_and_read_no_further(http: httpx.AsyncClient) -> None:
    huge = b'{"token": "' + b"a" * (64 * 1024) + b'"}'
    answer = await http.post("/api/session", content=huge, headers=CHANGE)
    assert (answer.status_code, answer.json()) == (
        413,
        {"error": "the body is over 65536 bytes", "code": "RESOURCE_EXHAUSTED"},
    )
