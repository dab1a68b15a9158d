"""grpc_server_* metrics and packetbus_open_streams on a real /metrics endpoint
(issue 15, item 1): known calls against a real server, then a scrape over HTTP
and the exact deltas, with go-grpc-prometheus's names, labels and codes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client.metrics_core import Metric

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import RunningServer, ServerConfig, start
from packetbus_server._observability.store_metrics import StoreCollector
from tests._identity import Metadata
from tests._scrape import Samples, rpc, scrape, scrape_settled, scrape_text, value
from tests._tokens import AUDIENCE, ISSUER, bearer, jwks, token
from tests.conftest import new_packet, unique

PACKETS = "packetbus.v1.PacketService"


@pytest.fixture(scope="module")
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
async def served(
    redis_url: str, key: ed25519.Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    """A server that wants a bearer JWT (so a call without one is refused at the
    gate) and serves /metrics on a free loopback port."""
    folder: Path = tmp_path_factory.mktemp("metrics")
    (folder / "jwks.json").write_text(jwks((key, "k1")))
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            data_dir=folder / "data",
            jwt_jwks_file=folder / "jwks.json",
            jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE,
            metrics_listen="127.0.0.1:0",
        )
    )
    yield srv
    await srv.stop(grace=0)


@pytest.fixture
async def stub(served: RunningServer) -> AsyncIterator[packet_service_pb2_grpc.PacketServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        yield packet_service_pb2_grpc.PacketServiceStub(channel)


@pytest.fixture
def auth(key: ed25519.Ed25519PrivateKey) -> Metadata:
    return bearer(token(key, "EdDSA", "k1"))


def _url(srv: RunningServer) -> str:
    return f"http://127.0.0.1:{srv.metrics_port}/metrics"


def _handled(samples: Samples, method: str, code: str, grpc_type: str = "unary") -> float:
    labels = dict(rpc(PACKETS, method, grpc_type), grpc_code=code)
    return value(samples, "grpc_server_handled_total", **labels)


async def _refused(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    code: grpc.StatusCode = refused.value.code()
    return code


async def test_handled_counts_by_the_code_the_client_saw(
    served: RunningServer, stub: packet_service_pb2_grpc.PacketServiceStub, auth: Metadata
) -> None:
    before = await scrape_settled(_url(served), "GetServerInfo", "GetPacket")
    info = packet_service_pb2.GetServerInfoRequest()
    for _ in range(3):
        await stub.GetServerInfo(info, metadata=auth)
    for _ in range(2):  # no token: the gate refuses before the servicer runs
        assert await _refused(stub.GetServerInfo(info)) == grpc.StatusCode.UNAUTHENTICATED
    bad = packet_service_pb2.GetPacketRequest(tracking_id="not-a-uuid")
    assert await _refused(stub.GetPacket(bad, metadata=auth)) == grpc.StatusCode.INVALID_ARGUMENT
    missing = packet_service_pb2.GetPacketRequest(tracking_id=new_packet("t").tracking_id)
    assert await _refused(stub.GetPacket(missing, metadata=auth)) == grpc.StatusCode.NOT_FOUND
    after = await scrape_settled(_url(served), "GetServerInfo", "GetPacket")

    def delta(method: str, code: str) -> float:
        return _handled(after, method, code) - _handled(before, method, code)

    assert delta("GetServerInfo", "OK") == 3
    assert delta("GetServerInfo", "UNAUTHENTICATED") == 2
    assert delta("GetPacket", "INVALID_ARGUMENT") == 1
    assert delta("GetPacket", "NOT_FOUND") == 1
    assert delta("GetPacket", "OK") == 0

    def started(samples: Samples, method: str) -> float:
        return value(samples, "grpc_server_started_total", **rpc(PACKETS, method))

    assert started(after, "GetServerInfo") - started(before, "GetServerInfo") == 5
    assert started(after, "GetPacket") - started(before, "GetPacket") == 2

    def histogram(samples: Samples, method: str, suffix: str, **extra: str) -> float:
        name = f"grpc_server_handling_seconds_{suffix}"
        return value(samples, name, **rpc(PACKETS, method), **extra)

    assert (
        histogram(after, "GetServerInfo", "count") - histogram(before, "GetServerInfo", "count")
        == 5
    )
    assert (
        histogram(after, "GetPacket", "bucket", le="+Inf")
        - histogram(before, "GetPacket", "bucket", le="+Inf")
        == 2
    )
    spent = histogram(after, "GetServerInfo", "sum") - histogram(before, "GetServerInfo", "sum")
    assert 0 < spent < 5  # seconds: five loopback calls

    def received(samples: Samples, method: str) -> float:
        return value(samples, "grpc_server_msg_received_total", **rpc(PACKETS, method))

    def sent(samples: Samples, method: str) -> float:
        return value(samples, "grpc_server_msg_sent_total", **rpc(PACKETS, method))

    # A refused call received its request and sent no response.
    assert received(after, "GetServerInfo") - received(before, "GetServerInfo") == 5
    assert sent(after, "GetServerInfo") - sent(before, "GetServerInfo") == 3
    assert sent(after, "GetPacket") - sent(before, "GetPacket") == 0


async def test_bytes_that_are_not_protobuf_count_as_invalid_argument(
    served: RunningServer, auth: Metadata
) -> None:
    before = await scrape_settled(_url(served), "GetPacket")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        raw = channel.unary_unary(f"/{PACKETS}/GetPacket")
        code = await _refused(raw(b"\xff\xff\xff", metadata=auth))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    after = await scrape_settled(_url(served), "GetPacket")
    assert (
        _handled(after, "GetPacket", "INVALID_ARGUMENT")
        - _handled(before, "GetPacket", "INVALID_ARGUMENT")
        == 1
    )


async def test_a_subscription_counts_its_messages_and_is_an_open_stream_while_it_lasts(
    served: RunningServer, stub: packet_service_pb2_grpc.PacketServiceStub, auth: Metadata
) -> None:
    topic = unique("metrics")
    stream = rpc(PACKETS, "Subscribe", "server_stream")
    before = await scrape_settled(_url(served), "Dispatch", "Subscribe")
    for _ in range(3):  # three Dispatch calls: three responses on the subscription
        await stub.Dispatch(
            packet_service_pb2.DispatchRequest(packets=[new_packet(topic)]), metadata=auth
        )
    subscription = stub.Subscribe(
        packet_service_pb2.SubscribeRequest(
            topic=topic, start_position=packet_service_pb2.START_POSITION_EARLIEST
        ),
        metadata=auth,
    )
    delivered = 0
    responses = 0
    async for response in subscription:
        delivered += len(response.packets)
        responses += 1
        if delivered == 3:
            break
    during = await scrape_settled(_url(served), "Dispatch")
    subscription.cancel()
    # The server sees the cancellation shortly after the client does.
    for _ in range(100):
        after = await scrape(_url(served))
        if _handled(after, "Subscribe", "CANCELLED", "server_stream") > _handled(
            before, "Subscribe", "CANCELLED", "server_stream"
        ):
            break
        await asyncio.sleep(0.05)

    def opened(samples: Samples) -> float:
        return value(samples, "packetbus_open_streams", kind="subscribe")

    assert opened(during) - opened(before) == 1
    assert opened(after) - opened(before) == 0
    sent = "grpc_server_msg_sent_total"
    # Counted as they go: seen while the stream was still open.
    assert value(during, sent, **stream) - value(before, sent, **stream) == responses
    assert value(after, sent, **stream) - value(before, sent, **stream) == responses
    received = "grpc_server_msg_received_total"
    assert value(after, received, **stream) - value(before, received, **stream) == 1
    assert (
        _handled(after, "Subscribe", "CANCELLED", "server_stream")
        - _handled(before, "Subscribe", "CANCELLED", "server_stream")
        == 1
    )
    assert (
        value(during, "grpc_server_started_total", **stream)
        - value(before, "grpc_server_started_total", **stream)
        == 1
    )
    assert _handled(after, "Dispatch", "OK") - _handled(before, "Dispatch", "OK") == 3


async def test_openmetrics_when_the_scraper_asks_for_it(served: RunningServer) -> None:
    text = await asyncio.to_thread(
        scrape_text, _url(served), accept="application/openmetrics-text; version=1.0.0"
    )
    assert text.endswith("# EOF\n")
    assert "# TYPE grpc_server_handled counter" in text
    plain = await asyncio.to_thread(scrape_text, _url(served))
    assert "# EOF" not in plain
    assert "# TYPE grpc_server_handled_total counter" in plain


async def test_no_endpoint_unless_asked(server: RunningServer) -> None:
    assert server.metrics is None
    assert server.metrics_port is None


async def test_a_slow_scrape_does_not_hold_up_calls(
    served: RunningServer,
    stub: packet_service_pb2_grpc.PacketServiceStub,
    auth: Metadata,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The store collector reads the store on each scrape; make that read take 2 s.
    def slow(self: StoreCollector) -> Iterable[Metric]:
        time.sleep(2)
        return ()

    monkeypatch.setattr(StoreCollector, "collect", slow)
    scraping = asyncio.ensure_future(asyncio.to_thread(scrape_text, _url(served)))
    await asyncio.sleep(0.2)  # the scrape is now inside the slow read
    started = time.monotonic()
    for _ in range(5):
        await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest(), metadata=auth)
    assert time.monotonic() - started < 1.5
    assert not scraping.done()
    assert "grpc_server_started_total" in await scraping
