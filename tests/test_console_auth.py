"""The operator console with authentication (issue 19): sessions and permissions.

A real packetbus server authenticating real JWTs (Ed25519, a JWKS file) and
authorizing by a policy file with a hold rule, a real `packetbus console` process
without a token of its own, and httpx signing in as different principals: each
sees its own grants in /api/me, and packetbus decides what each may do.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

import packetbus
from packetbus_console.sessions import COOKIE
from packetbus_server import RunningServer, start
from tests._console import CHANGE, hold_spawns, output, sse_events, start_console, stop
from tests._identities import Issuer, client_as, guarded_fixtures, server_config, spiffe
from tests.conftest import new_packet, unique

# About who may call, not how the store behaves: one backend (see conftest).
pytestmark = pytest.mark.one_backend

APPROVER = unique("console-guardian")
ADMIN = spiffe("console-admin")
OPERATOR = spiffe(APPROVER)  # its agent id is the approver key's
VIEWER = spiffe("console-viewer")
READS = [("held.read", "*"), ("agents.read", "*"), ("carcel.read", "*"), ("audit.export", "*")]
GRANTS = {
    ADMIN: [("*", "*")],
    OPERATOR: [*READS, ("packets.approve", "sec.*")],
    VIEWER: READS,
}
RULES = hold_spawns("sec.*")


issuer, guarded = guarded_fixtures(GRANTS, "console-auth", RULES)


@pytest.fixture(scope="module")
def target(guarded: RunningServer) -> str:
    return f"127.0.0.1:{guarded.port}"


@pytest.fixture
async def admin(target: str, issuer: Issuer) -> AsyncIterator[packetbus.Client]:
    async with await client_as(target, issuer.token(ADMIN)) as client:
        yield client


@pytest.fixture(scope="module")
async def approver_key(
    target: str, issuer: Issuer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    identity = packetbus.AgentIdentity.generate(APPROVER)
    async with await client_as(target, issuer.token(ADMIN)) as client:
        await client.register_identity(identity)
    path = tmp_path_factory.mktemp("console-auth-keys") / "approver.key"
    identity.save(path)
    return path


@pytest.fixture(scope="module")
def console(target: str, approver_key: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k != "PACKETBUS_TOKEN"}
    process, url = start_console(target, "--agent-key", str(approver_key), env=env)
    yield url
    stop(process)


@pytest.fixture
async def http(console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console, timeout=20) as client:
        yield client


async def sign_in(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/api/session", json={"token": token}, headers=CHANGE)


async def _held(admin: packetbus.Client) -> packetbus.Packet:
    topic = unique("sec.held")
    await admin.create_consumer_group(topic, "workers", start=packetbus.EARLIEST)
    packet = new_packet(topic)
    packet.data.update({"primitive": "logistics.spawn"})
    [result] = await admin.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "held"
    return packet


async def test_without_a_session_the_console_calls_with_no_credential(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.get("/api/me")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["code"] == "UNAUTHENTICATED"


async def test_a_bad_token_is_401_and_sets_no_cookie(
    http: httpx.AsyncClient, issuer: Issuer
) -> None:
    forged = Issuer().token(ADMIN)  # signed by a key the server does not trust
    refused = await sign_in(http, forged)
    assert refused.status_code == 401
    assert refused.json()["code"] == "UNAUTHENTICATED"
    assert refused.json()["error"].startswith("packetbus refused: ")
    assert forged not in refused.text
    assert "set-cookie" not in refused.headers
    unguarded = await http.post("/api/session", json={"token": issuer.token(ADMIN)})
    assert (unguarded.status_code, unguarded.json()["code"]) == (403, "CSRF")
    assert "set-cookie" not in unguarded.headers


async def test_a_principal_without_the_approve_grant_sees_none_and_is_refused(
    http: httpx.AsyncClient, issuer: Issuer, admin: packetbus.Client
) -> None:
    packet = await _held(admin)
    token = issuer.token(VIEWER)
    signed_in = await sign_in(http, token)
    assert signed_in.status_code == 200
    assert token not in signed_in.text
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert token not in cookie
    assert {"httponly", "path=/", "samesite=strict"} <= {
        part.strip().lower() for part in cookie.split(";")
    }
    assert "secure" not in cookie.lower()  # the console serves plain HTTP on loopback

    me = (await http.get("/api/me")).json()
    assert (me["principal"], me["authenticated"], me["source"], me["agentId"]) == (
        VIEWER,
        True,
        "jwt",
        "console-viewer",
    )
    assert me["roles"] == ["r2"]
    assert sorted((g["permission"], g["resource"]) for g in me["grants"]) == sorted(READS)
    assert "packets.approve" not in {g["permission"] for g in me["grants"]}

    topic = packet.topic
    listed = (await http.get("/api/held", params={"topic": topic})).json()["held"]
    assert [h["packet"]["packet"]["trackingId"] for h in listed] == [packet.tracking_id]
    refused = await http.post(
        f"/api/held/{packet.tracking_id}/approve", json={"topic": topic}, headers=CHANGE
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "PERMISSION_DENIED"
    assert "packets.approve" in refused.json()["error"]
    assert [h.packet.packet.tracking_id async for h in admin.list_held_packets(topic)] == [
        packet.tracking_id
    ]
    denied = await http.post(
        f"/api/held/{packet.tracking_id}/deny",
        json={"topic": topic, "reason": "no"},
        headers=CHANGE,
    )
    assert denied.status_code == 403
    assert len([h async for h in admin.list_held_packets(topic)]) == 1

    out = await http.delete("/api/session", headers=CHANGE)
    assert out.json() == {"signedOut": True}
    assert (await http.get("/api/me")).status_code == 401
    # The token was never printed (uvicorn's access log is off; nothing logs it).
    assert token not in output(str(http.base_url).rstrip("/"))


async def test_a_permitted_principal_approves_and_the_packet_is_delivered(
    http: httpx.AsyncClient, issuer: Issuer, admin: packetbus.Client
) -> None:
    packet = await _held(admin)
    assert (await sign_in(http, issuer.token(OPERATOR))).status_code == 200
    me = (await http.get("/api/me")).json()
    assert (me["principal"], me["agentId"]) == (OPERATOR, APPROVER)
    assert {"permission": "packets.approve", "resource": "sec.*"} in me["grants"]

    approved = await http.post(f"/api/held/{packet.tracking_id}/approve", headers=CHANGE)
    assert approved.status_code == 200, approved.text
    assert approved.json()["receipt"]["topic"] == packet.topic
    async with admin.consume(packet.topic, "workers", consumer="w1") as consumer:
        async with asyncio.timeout(10):
            delivery = await anext(aiter(consumer))
        assert delivery.packet.packet.tracking_id == packet.tracking_id
        await delivery.ack()
    verdict = await admin.verify_custody(packet.tracking_id)
    assert verdict.verified
    [approval] = [e for e in verdict.entries if e.action == "approved"]
    assert (approval.actor, approval.principal) == (APPROVER, "")

    # A cookie that names no session is no session: calls go without a credential.
    http.cookies.set(COOKIE, "forged")
    assert (await http.get("/api/me")).status_code == 401


async def test_a_principal_with_audit_export_downloads_the_chain_it_may_see(
    http: httpx.AsyncClient, issuer: Issuer, admin: packetbus.Client
) -> None:
    # The viewer may verify custody (audit.export) but not read the topic's packets
    # (no topics.subscribe): the chain and its export line are both its to see.
    topic = unique("sec.audit")
    packet = new_packet(topic)
    await admin.dispatch(packet)
    assert (await sign_in(http, issuer.token(VIEWER))).status_code == 200
    chain = await http.get(f"/api/custody/{packet.tracking_id}")
    assert (chain.status_code, chain.json()["verified"]) == (200, True)
    download = await http.get(f"/api/custody/{packet.tracking_id}/export")
    assert download.status_code == 200, download.text
    lines = [json.loads(line) for line in download.text.splitlines()]
    assert [line["kind"] for line in lines] == ["keys", "packet"]
    assert lines[1]["packet"]["packet"]["trackingId"] == packet.tracking_id
    # Reading the packet itself is still refused: the export is custody, not a read.
    nobody = spiffe("console-nobody")
    assert (await sign_in(http, issuer.token(nobody))).status_code == 200
    refused = await http.get(f"/api/custody/{packet.tracking_id}/export")
    assert (refused.status_code, refused.json()["code"]) == (404, "NOT_FOUND")


async def test_an_authenticated_caller_without_authorization_may_do_everything(
    redis_url: str, issuer: Issuer, tmp_path: Path
) -> None:
    # JWTs verified, but a policy without an [authorization] section: every
    # authenticated principal is allowed everything (one grant "*" on "*").
    config = await asyncio.to_thread(
        server_config, redis_url, tmp_path, issuer, 'default = "allow"\n'
    )
    srv = await start(config)
    try:
        async with await client_as(f"127.0.0.1:{srv.port}", issuer.token(VIEWER)) as client:
            caller = (await client.server_info()).caller
        assert (caller.principal, caller.authenticated, caller.source, caller.agent_id) == (
            VIEWER,
            True,
            "jwt",
            "console-viewer",
        )
        assert list(caller.roles) == []
        assert [(g.permission, g.resource) for g in caller.grants] == [("*", "*")]
    finally:
        await srv.stop(grace=0)


async def test_a_principal_with_no_grants_is_refused_reads_and_the_event_stream(
    console: str, issuer: Issuer
) -> None:
    nobody = spiffe("console-nobody")  # authenticated, in no role
    async with httpx.AsyncClient(base_url=console, timeout=20) as http:
        assert (await sign_in(http, issuer.token(nobody))).status_code == 200
        me = (await http.get("/api/me")).json()
        assert (me["principal"], me["authenticated"], me["roles"], me["grants"]) == (
            nobody,
            True,
            [],
            [],
        )
        for path in (
            "/api/agents",
            "/api/agents/events",
            "/api/carcel",
            "/api/carcel/events",
            "/api/held",
            "/api/held/events",
        ):
            refused = await http.get(path)
            assert (refused.status_code, refused.json()["code"]) == (403, "PERMISSION_DENIED")
        purge = await http.post("/api/carcel/purge", json={"topic": "sec.x"}, headers=CHANGE)
        assert (purge.status_code, purge.json()["code"]) == (403, "PERMISSION_DENIED")


async def test_over_https_the_session_cookie_is_secure(
    target: str, issuer: Issuer, tmp_path: Path
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "console.pem", tmp_path / "console.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    env = {k: v for k, v in os.environ.items() if k != "PACKETBUS_TOKEN"}
    # HTTPS makes a non-loopback --listen acceptable too; loopback here, to reach it.
    process, url = start_console(target, "--tls-cert", str(cert), "--tls-key", str(key), env=env)
    try:
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        async with httpx.AsyncClient(base_url=url, verify=trusted, timeout=20) as http:
            signed_in = await sign_in(http, issuer.token(VIEWER))
            assert signed_in.status_code == 200
            parts = {p.strip().lower() for p in signed_in.headers["set-cookie"].split(";")}
            assert {"secure", "httponly", "samesite=strict", "path=/"} <= parts
            assert (await http.get("/api/me")).json()["principal"] == VIEWER
    finally:
        stop(process)


async def test_a_live_view_ends_when_its_session_is_signed_out(
    console: str, issuer: Issuer, admin: packetbus.Client
) -> None:
    async with httpx.AsyncClient(base_url=console, timeout=20) as http:
        assert (await sign_in(http, issuer.token(VIEWER))).status_code == 200
        async with http.stream("GET", "/api/held/events", params={"interval": "0.25"}) as stream:
            assert stream.status_code == 200
            events = aiter(sse_events(stream))
            assert (await anext(events))[1] == "snapshot"
            # Signed out from another request: the stream stops reading as the viewer.
            out = await http.delete("/api/session", headers=CHANGE)
            assert out.json() == {"signedOut": True}
            async with asyncio.timeout(10):
                rest = [(event, data) async for _, event, data in events]
        # No snapshot read with the ended session's token, one error, then the end.
        assert rest[-1] == (
            "error",
            {"error": "the session ended: sign in again", "code": "UNAUTHENTICATED"},
        )
        assert all(event == "snapshot" for event, _ in rest[:-1])
