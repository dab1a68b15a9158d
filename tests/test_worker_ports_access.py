"""Issue 14 at issue 16's doors: `serve --workers` with TLS, JWTs and authorization.

Each worker also listens on a port of its own, and GetServerInfo(assign_worker)
hands those ports out in turn from a counter the workers share. Both are doors:
a worker's own port serves TLS only and runs the same gate (no credential:
UNAUTHENTICATED; a principal without the permission: PERMISSION_DENIED, nothing
written), and a refused assign_worker call takes no turn (an outsider could
otherwise steer where the next clients land). A client with TLS and a token
follows the assignment to a worker's own port and is authorized there.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import pytest
import trustme

import packetbus
from packetbus.v1 import (
    packet_service_pb2,
    packet_service_pb2_grpc,
    topic_service_pb2,
    topic_service_pb2_grpc,
)
from tests._access_world import AUDIENCE, ISSUER, Issuer, bearer, failed
from tests._certs import write_server_cert
from tests.conftest import free_port, packetbus_serve, unique, wait_for_workers

# Identity, not storage: one backend (see conftest).
pytestmark = [pytest.mark.slow, pytest.mark.one_backend]

WORKERS = 2
READER, NOBODY = "reader", "nobody"

POLICY = f"""
default = "allow"

[authorization]

[[authorization.principals]]
match = "{READER}"
roles = ["reader"]

[[authorization.principals]]
match = "{NOBODY}"
roles = ["none"]

[authorization.roles.reader]
grants = [{{ permissions = ["topics.subscribe"], resources = ["*"] }}]

[authorization.roles.none]
grants = [{{ permissions = ["policy.read"], resources = ["nothing-is-named-so"] }}]
"""


class Served:
    """A `serve --workers 2` over TLS with JWTs and the policy above."""

    def __init__(self, target: str, ca: trustme.CA, issuer: Issuer) -> None:
        self.target = target
        self.ca_pem = ca.cert_pem.bytes()
        self.issuer = issuer

    def channel(self, port: int) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(self.ca_pem)
        return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)

    def md(self, principal: str | None) -> tuple[tuple[str, str], ...]:
        return bearer(None if principal is None else self.issuer.token(principal))


@pytest.fixture
async def served(redis_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    ca = trustme.CA()
    cert = write_server_cert(ca, tmp_path)
    issuer = Issuer.create(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    port = free_port()
    process: subprocess.Popen[str] = await asyncio.to_thread(
        packetbus_serve,
        *("--workers", str(WORKERS), "--listen", f"127.0.0.1:{port}"),
        *("--redis-url", redis_url, "--data-dir", str(tmp_path / "data")),
        *("--grace", "0", "--drain-notice", "0"),
        *("--tls-cert", str(cert.cert), "--tls-key", str(cert.key)),
        *("--jwt-public-key", str(issuer.public_key_file)),
        *("--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE),
        *("--policy", str(policy)),
    )
    try:
        await asyncio.to_thread(wait_for_workers, process, WORKERS)
        yield Served(f"127.0.0.1:{port}", ca, issuer)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0


async def _info(
    channel: grpc.aio.Channel, md: tuple[tuple[str, str], ...], *, assign: bool = False
) -> packet_service_pb2.GetServerInfoResponse:
    stub = packet_service_pb2_grpc.PacketServiceStub(channel)
    request = packet_service_pb2.GetServerInfoRequest(assign_worker=assign)
    response: packet_service_pb2.GetServerInfoResponse = await stub.GetServerInfo(
        request, metadata=md, timeout=30
    )
    return response


async def _refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The code, ErrorInfo reason and metadata of an awaited call that fails."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    outcome = failed(refused.value)
    return outcome.code, outcome.reason, dict(outcome.meta)


async def test_each_workers_own_port_is_a_door(served: Served) -> None:
    shared_port = int(served.target.rsplit(":", 1)[1])
    async with served.channel(shared_port) as shared:
        ports = list((await _info(shared, served.md(READER))).workers.ports)
    assert len(ports) == WORKERS
    topic = unique("jobs")
    for index, port in enumerate(ports):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as handshake:
                await _info(plain, served.md(READER))
            assert handshake.value.code() == grpc.StatusCode.UNAVAILABLE
        async with served.channel(port) as own:
            assert (await _info(own, served.md(READER))).workers.serving == index
            assert await _refusal(_info(own, ())) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "CREDENTIAL_MISSING",
                {},
            )
            topics = topic_service_pb2_grpc.TopicServiceStub(own)
            get = topic_service_pb2.GetTopicRetentionRequest(topic=topic)
            code, reason, meta = await _refusal(
                topics.GetTopicRetention(get, metadata=served.md(NOBODY), timeout=30)
            )
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
            assert meta == {
                "permission": "topics.subscribe",
                "resource": topic,
                "principal": NOBODY,
            }
            limits = topic_service_pb2.TopicRetention(max_packets=5)
            set_ = topic_service_pb2.SetTopicRetentionRequest(topic=topic, retention=limits)
            code, reason, meta = await _refusal(
                topics.SetTopicRetention(set_, metadata=served.md(READER), timeout=30)
            )
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
            assert meta == {"permission": "topics.manage", "resource": topic, "principal": READER}
            # Nothing written: the topic still has no limits.
            got = await topics.GetTopicRetention(get, metadata=served.md(READER), timeout=30)
            assert got.retention == topic_service_pb2.TopicRetention()


async def test_a_refused_assignment_takes_no_turn(served: Served) -> None:
    shared_port = int(served.target.rsplit(":", 1)[1])
    async with served.channel(shared_port) as shared:
        first = (await _info(shared, served.md(READER), assign=True)).workers.assigned
        # Three refused turns: had they counted, the next one would be `first` again.
        for _ in range(3):
            refused = await _refusal(_info(shared, (), assign=True))
            assert refused[:2] == (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIAL_MISSING")
        after = (await _info(shared, served.md(READER), assign=True)).workers.assigned
    assert after == (first + 1) % WORKERS


async def test_a_client_with_tls_and_a_token_is_served_on_its_workers_port(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="packetbus.client")
    tls = packetbus.TlsSettings(ca_pem=served.ca_pem)
    topic = unique("jobs")
    async with await packetbus.Client.connect(
        served.target, tls=tls, token=served.issuer.token(READER), timeout=60
    ) as reader:
        info = await reader.server_info()
        settings = await reader.get_topic_retention(topic)
        assert settings.retention == topic_service_pb2.TopicRetention()
        with pytest.raises(packetbus.PacketbusError) as refused:
            await reader.set_topic_retention(topic, max_packets=5)
        assert (await reader.get_topic_retention(topic)).retention == settings.retention
    assert len(info.workers.ports) == WORKERS
    # It moved to its worker's own port: a refusal there (no TLS, no token) would
    # have left it on the shared port, logged by packetbus._workers.
    assert not [r for r in caplog.records if r.name == "packetbus.client"], caplog.text
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.error_info is not None
    assert dict(refused.value.error_info.metadata) == {
        "permission": "topics.manage",
        "resource": topic,
        "principal": READER,
    }
