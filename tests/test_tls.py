"""`serve` over TLS and mutual TLS, and a renewed certificate served without a restart.

Real TLS on loopback with certificates made here (tests._certs), the real server
and store; the client side is raw `grpc.aio.secure_channel` (the client library's
TLS settings are issue 14's client part)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography import x509

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import RunningServer, ServerConfig, running
from tests._certs import ClientCert, ServerFiles, client_cert, served_certificate, write_server_cert
from tests.conftest import REPO, free_port

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

# A new connection for every channel: gRPC's process-wide subchannel pool would
# otherwise hand a new channel the connection (and certificate) of an old one.
_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


async def _server_info(
    port: int, ca: trustme.CA, client: ClientCert | None = None, *, timeout: float = 5
) -> packet_service_pb2.GetServerInfoResponse:
    credentials = grpc.ssl_channel_credentials(
        ca.cert_pem.bytes(),
        private_key=None if client is None else client.key,
        certificate_chain=None if client is None else client.cert,
    )
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=_OWN_CONNECTION
    ) as channel:
        stub = packet_service_pb2_grpc.PacketServiceStub(channel)
        reply: packet_service_pb2.GetServerInfoResponse = await stub.GetServerInfo(
            packet_service_pb2.GetServerInfoRequest(), timeout=timeout
        )
        return reply


@pytest.fixture
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_files(server_ca: trustme.CA, tmp_path: Path) -> ServerFiles:
    return write_server_cert(server_ca, tmp_path)


@pytest.fixture
async def tls_server(
    redis_url: str, server_files: ServerFiles, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    config = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        tls_cert_file=server_files.cert,
        tls_key_file=server_files.key,
    )
    async with running(config) as srv:
        yield srv


@pytest.fixture
async def mtls_server(
    redis_url: str, server_files: ServerFiles, client_ca: trustme.CA, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    ca_file = tmp_path / "clients-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_file))
    config = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        tls_cert_file=server_files.cert,
        tls_key_file=server_files.key,
        tls_client_ca_file=ca_file,
    )
    async with running(config) as srv:
        yield srv


async def test_a_tls_server_answers_over_tls(
    tls_server: RunningServer, server_ca: trustme.CA
) -> None:
    reply = await _server_info(tls_server.port, server_ca)
    assert reply.version


async def test_a_tls_server_refuses_plaintext(tls_server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{tls_server.port}", options=_OWN_CONNECTION
    ) as channel:
        stub = packet_service_pb2_grpc.PacketServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_server_cannot_connect(
    tls_server: RunningServer,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _server_info(tls_server.port, trustme.CA())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_admits_a_client_certificate_the_client_ca_signed(
    mtls_server: RunningServer, server_ca: trustme.CA, client_ca: trustme.CA
) -> None:
    worker = client_cert(client_ca, uris=("spiffe://example.org/agent/worker-1",))
    reply = await _server_info(mtls_server.port, server_ca, worker)
    assert reply.version


async def test_mtls_refuses_a_client_without_a_certificate(
    mtls_server: RunningServer, server_ca: trustme.CA
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _server_info(mtls_server.port, server_ca)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_certificate_another_ca_signed(
    mtls_server: RunningServer, server_ca: trustme.CA
) -> None:
    stranger = client_cert(trustme.CA(), uris=("spiffe://example.org/agent/worker-1",))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _server_info(mtls_server.port, server_ca, stranger)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def _renewal(ca: trustme.CA, tmp_path: Path) -> ServerFiles:
    """A new certificate (another CA, CN "renewed") and key, made beside the served ones."""
    elsewhere = tmp_path / "renewal"
    elsewhere.mkdir()
    return write_server_cert(ca, elsewhere, name="renewed")


def _serial(files: ServerFiles) -> int:
    return x509.load_pem_x509_certificates(files.cert.read_bytes())[0].serial_number


async def _until_served(port: int, serial: int, *cas: trustme.CA, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while True:
        served = await asyncio.to_thread(served_certificate, port, *cas)
        if served.serial_number == serial:
            return
        assert time.monotonic() < deadline, "the renewed certificate was not served"
        await asyncio.sleep(0.2)


async def test_a_renewed_certificate_is_served_without_a_restart(
    tls_server: RunningServer, server_ca: trustme.CA, server_files: ServerFiles, tmp_path: Path
) -> None:
    before = await asyncio.to_thread(served_certificate, tls_server.port, server_ca)
    renewal_ca = trustme.CA()
    with pytest.raises(grpc.aio.AioRpcError):
        await _server_info(tls_server.port, renewal_ca)  # not yet its certificate
    renewed = _renewal(renewal_ca, tmp_path)
    server_files.key.write_bytes(renewed.key.read_bytes())
    server_files.cert.write_bytes(renewed.cert.read_bytes())
    serial = _serial(renewed)
    assert serial != before.serial_number
    await _until_served(tls_server.port, _serial(renewed), server_ca, renewal_ca)
    reply = await _server_info(tls_server.port, renewal_ca)
    assert reply.version


async def test_a_half_written_renewal_keeps_the_old_certificate(
    tls_server: RunningServer,
    server_ca: trustme.CA,
    server_files: ServerFiles,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = await asyncio.to_thread(served_certificate, tls_server.port, server_ca)
    renewal_ca = trustme.CA()
    renewed = _renewal(renewal_ca, tmp_path)
    with caplog.at_level(logging.WARNING, "packetbus.server"):
        # The new certificate is on disk, its key not yet.
        server_files.cert.write_bytes(renewed.cert.read_bytes())
        await asyncio.sleep(1.2)  # past the fetcher's look interval
        for _ in range(3):
            served = await asyncio.to_thread(served_certificate, tls_server.port, server_ca)
            assert served.serial_number == before.serial_number
            await asyncio.sleep(0.5)
        assert await _server_info(tls_server.port, server_ca)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"is not the key of certificate {server_files.cert}" in warnings[0]
    assert "still serving the previous certificate" in warnings[0]
    assert "PRIVATE KEY" not in caplog.text
    # The key arrives: the pair checks and is served.
    server_files.key.write_bytes(renewed.key.read_bytes())
    await _until_served(tls_server.port, _serial(renewed), server_ca, renewal_ca)


@pytest.mark.slow
async def test_workers_serve_tls(
    redis_url: str, server_ca: trustme.CA, server_files: ServerFiles, tmp_path: Path
) -> None:
    port = free_port()
    server = await asyncio.to_thread(
        subprocess.Popen,
        [
            sys.executable,
            "-m",
            "packetbus._cli",
            "serve",
            "--workers",
            "2",
            "--listen",
            f"127.0.0.1:{port}",
            "--redis-url",
            redis_url,
            "--data-dir",
            str(tmp_path / "data"),
            "--tls-cert",
            str(server_files.cert),
            "--tls-key",
            str(server_files.key),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert server.stdout is not None
    try:
        ready = 0
        async with asyncio.timeout(60):
            while ready < 2:
                line = await asyncio.to_thread(server.stdout.readline)
                assert line, f"server exited with {server.poll()}"
                ready += "serving on" in line
        # Each channel its own connection: SO_REUSEPORT spreads them over both workers.
        replies = [await _server_info(port, server_ca) for _ in range(6)]
        assert all(reply.version for reply in replies)
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=_OWN_CONNECTION
        ) as channel:
            stub = packet_service_pb2_grpc.PacketServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.wait, 60)
    assert code == 0


async def _admitted(port: int, ca: trustme.CA, client: ClientCert) -> bool:
    """Whether the server admits `client` (a refused handshake is UNAVAILABLE)."""
    try:
        return bool(await _server_info(port, ca, client))
    except grpc.aio.AioRpcError as refused:
        if refused.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False


async def test_a_new_client_ca_is_trusted_without_a_restart(
    mtls_server: RunningServer, server_ca: trustme.CA, client_ca: trustme.CA, tmp_path: Path
) -> None:
    old_client = client_cert(client_ca, common_name="old")
    successor = trustme.CA()
    new_client = client_cert(successor, common_name="new")
    with pytest.raises(grpc.aio.AioRpcError):
        await _server_info(mtls_server.port, server_ca, new_client)
    successor.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    deadline = time.monotonic() + 5
    while not await _admitted(mtls_server.port, server_ca, new_client):
        assert time.monotonic() < deadline, "the new client CA was not trusted"
        await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _server_info(mtls_server.port, server_ca, old_client)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
