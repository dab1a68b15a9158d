"""The client and CLI against `packetbus serve` with mutual TLS (issue 14, item 1):
the server's TLS listener is the real one (--tls-cert/--tls-key/--tls-client-ca),
the certificates are made here."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme

from packetbus import EARLIEST, Client, PacketbusError, SyncClient, TlsSettings
from tests._certs import client_cert, write_server_cert
from tests.conftest import free_port, new_packet, run_cli, serve_process, unique

# Identity, not storage: one backend (see conftest).
pytestmark = [pytest.mark.timeout(120), pytest.mark.one_backend]


@dataclass(frozen=True)
class Served:
    target: str
    ca: Path
    cert: Path
    key: Path

    def tls(self) -> TlsSettings:
        return TlsSettings(ca_file=self.ca, cert_file=self.cert, key_file=self.key)

    def flags(self) -> list[str]:
        return ["--target", self.target, "--tls-ca", str(self.ca)]


@pytest.fixture
def mtls_serve(redis_url: str, tmp_path: Path) -> Iterator[Served]:
    ca = trustme.CA()
    server_files = write_server_cert(ca, tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    issued = client_cert(ca, uris=("spiffe://example.org/agent/worker-1",))
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(issued.cert)
    key.write_bytes(issued.key)
    port = free_port()
    process = serve_process(
        port,
        redis_url,
        tmp_path / "data",
        "--tls-cert",
        str(server_files.cert),
        "--tls-key",
        str(server_files.key),
        "--tls-client-ca",
        str(ca_file),
    )
    yield Served(f"127.0.0.1:{port}", ca_file, cert, key)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def test_the_client_dispatches_and_subscribes_over_mutual_tls(mtls_serve: Served) -> None:
    topic = unique("mtls")
    async with await Client.connect(mtls_serve.target, tls=mtls_serve.tls(), timeout=10) as client:
        packet = new_packet(topic)
        await client.dispatch(packet, timeout=10)
        async with client.subscribe(topic, start=EARLIEST) as subscription:
            stored = await anext(subscription)
        assert stored.packet.tracking_id == packet.tracking_id
        assert await client.health() == "SERVING"


async def test_without_a_client_certificate_the_client_fails_unavailable(
    mtls_serve: Served,
) -> None:
    with pytest.raises(PacketbusError) as caught:
        await Client.connect(mtls_serve.target, tls=TlsSettings(ca_file=mtls_serve.ca), timeout=1)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_the_sync_client_over_mutual_tls(mtls_serve: Served) -> None:
    def blocking() -> str:
        with SyncClient.connect(mtls_serve.target, tls=mtls_serve.tls(), timeout=10) as client:
            status: str = client.health()  # SyncClient's calls are Any to mypy
            return status

    assert await asyncio.to_thread(blocking) == "SERVING"


def test_cli_health_and_dispatch_over_mutual_tls(mtls_serve: Served) -> None:
    identity = ["--tls-cert", str(mtls_serve.cert), "--tls-key", str(mtls_serve.key)]
    done = run_cli(*mtls_serve.flags(), *identity, "health")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "SERVING", "")
    done = run_cli(
        *mtls_serve.flags(), *identity, "dispatch", "--topic", unique("cli"), "--origin", "w1"
    )
    assert done.returncode == 0, done.stderr
    assert '"receipt"' in done.stdout
    # The same from the environment.
    env = {
        "PACKETBUS_TARGET": mtls_serve.target,
        "PACKETBUS_TLS_CA": str(mtls_serve.ca),
        "PACKETBUS_TLS_CERT": str(mtls_serve.cert),
        "PACKETBUS_TLS_KEY": str(mtls_serve.key),
    }
    done = run_cli("health", env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING")
    # No certificate: the handshake fails, said in one line within --timeout.
    done = run_cli("--timeout", "1", *mtls_serve.flags(), "health", "--json")
    assert done.returncode == 1
    assert done.stdout.startswith('{"status": "UNREACHABLE"')
    # With --json the error is one JSON object on stderr (README "The CLI in scripts").
    assert [json.loads(line) for line in done.stderr.splitlines()] == [
        {
            "code": "UNAVAILABLE",
            "message": f"could not reach a packetbus server at {mtls_serve.target} within 1.0s "
            "(over TLS: check the CA, the server name and the client certificate)",
            "reason": None,
        }
    ]


def test_cli_in_plain_text_against_a_tls_server_is_told_to_give_the_ca(
    mtls_serve: Served,
) -> None:
    # A newcomer's likeliest mistake: --tls-ca forgotten. gRPC reports the refused
    # handshake as no server at all; the message says what to check.
    done = run_cli("--timeout", "1", "--target", mtls_serve.target, "health")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"packetbus: UNAVAILABLE: could not reach a packetbus server at {mtls_serve.target} "
        "within 1.0s (in plain text: if the server serves TLS, give its CA: "
        "TlsSettings(ca_file=...), --tls-ca or PACKETBUS_TLS_CA)"
    ]
