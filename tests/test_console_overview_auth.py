"""Who may see the console's Overview when the packetbus server authenticates callers: a
signed-in session only (the metrics have no per-principal view, so any signed-in
principal sees all of it); without one, 401; a live stream ends when its session does.
A real server authenticating JWTs with its metrics endpoint, a real console scraping it;
and a server wanting client certificates (mutual TLS) on both ports, scraped over https
with the console connection's CA and certificate.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from packetbus_server import RunningServer, ServerConfig, start
from tests._certs import client_cert, write_server_cert
from tests._console import CHANGE, sse_events, start_console, stop
from tests._identities import Issuer, guarded_fixtures, spiffe

pytestmark = pytest.mark.one_backend

VIEWER = spiffe("overview-viewer")
GRANTS = {VIEWER: [("agents.read", "*")]}  # nothing about metrics: none is needed


issuer, guarded = guarded_fixtures(GRANTS, "overview-auth", metrics_listen="127.0.0.1:0")


@pytest.fixture(scope="module")
def console(guarded: RunningServer) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k != "PACKETBUS_TOKEN"}
    process, url = start_console(
        f"127.0.0.1:{guarded.port}",
        "--metrics-url",
        f"http://127.0.0.1:{guarded.metrics_port}/metrics",
        "--metrics-interval",
        "0.5",
        env=env,
    )
    yield url
    stop(process)


@pytest.fixture
async def http(console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console, timeout=20) as client:
        yield client


async def test_without_a_session_the_overview_is_refused(http: httpx.AsyncClient) -> None:
    for path in ("/api/overview", "/api/overview/events"):
        answer = await http.get(path)
        assert answer.status_code == 401
        assert answer.json()["code"] == "UNAUTHENTICATED"
        assert "samples" not in answer.text


async def test_a_signed_in_principal_sees_it_until_it_signs_out(
    http: httpx.AsyncClient, issuer: Issuer
) -> None:
    signed = await http.post("/api/session", json={"token": issuer.token(VIEWER)}, headers=CHANGE)
    assert signed.status_code == 200
    async with asyncio.timeout(30):
        while not (await http.get("/api/overview")).json()["samples"]:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    answer = (await http.get("/api/overview")).json()
    assert answer["samples"][-1]["replicas"][0]["up"] is True
    async with http.stream("GET", "/api/overview/events") as stream:
        assert stream.status_code == 200
        events = aiter(sse_events(stream))
        async with asyncio.timeout(20):
            _, event, _ = await anext(events)
            assert event == "history"
            signed_out = await http.delete("/api/session", headers=CHANGE)
            assert signed_out.json() == {"signedOut": True}
            # The stream ends at its next sample, with the reason.
            async for _, event, data in events:
                if event == "error":
                    assert data == {
                        "error": "the session ended: sign in again",
                        "code": "UNAUTHENTICATED",
                    }
                    break
                assert event == "sample"
            else:
                raise AssertionError("the stream ended without saying why")
    assert (await http.get("/api/overview")).status_code == 401


async def test_https_metrics_with_a_client_certificate_are_scraped(
    redis_url: str, tmp_path: Path
) -> None:
    # Mutual TLS on the gRPC port and on the metrics endpoint alike: the console checks the
    # endpoint with the connection's CA and presents the connection's client certificate.
    ca = trustme.CA()
    files = write_server_cert(ca, tmp_path)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    issued = client_cert(ca, common_name="overview-console")
    (tmp_path / "client.crt").write_bytes(issued.cert)
    (tmp_path / "client.key").write_bytes(issued.key)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            data_dir=tmp_path / "data",
            tls_cert_file=files.cert,
            tls_key_file=files.key,
            tls_client_ca_file=tmp_path / "ca.pem",
            metrics_listen="127.0.0.1:0",
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PACKETBUS_TOKEN"}
    env.update(
        PACKETBUS_TLS_CA=str(tmp_path / "ca.pem"),
        PACKETBUS_TLS_CERT=str(tmp_path / "client.crt"),
        PACKETBUS_TLS_KEY=str(tmp_path / "client.key"),
    )
    url = f"https://127.0.0.1:{srv.metrics_port}/metrics"
    process, base = start_console(
        f"127.0.0.1:{srv.port}", "--metrics-url", url, "--metrics-interval", "0.5", env=env
    )
    try:
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            # No session: the console's own connection (its certificate) is accepted.
            async with asyncio.timeout(30):
                while not (samples := (await http.get("/api/overview")).json()["samples"]):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        assert samples[-1]["replicas"] == [{"url": url, "up": True, "error": None}]
        assert samples[-1]["values"]["storeMemoryBytes"] > 0
    finally:
        stop(process)
        await srv.stop(grace=0)
