"""DispatchStream (issue 16): dispatch()'s batches over one long-lived stream per
connection, on a real server and a real store.

A batch on the stream is served as the unary Dispatch of the same packets: the
same receipts, deduplication and custody; a batch refused as a whole gets its
precise error and writes nothing while the stream goes on. The client falls back
to unary Dispatch against a server without the stream (tests/
test_dispatch_stream_faults.py: drain, lost streams, credentials).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import grpc
import pytest
import redis.asyncio as redis_asyncio
from prometheus_client import REGISTRY

import packetbus
from packetbus.rich_status import STATUS_DETAILS_KEY
from packetbus.v1 import packet_pb2, packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import ServerConfig, start
from tests._store_keys import key_names, new_keys
from tests.conftest import new_packet, verified_actions

SERVICE = "packetbus.v1.PacketService"


def _messages(method: str, grpc_type: str, direction: str = "received") -> float:
    """The in-process server's count of `method`'s request (or response) messages."""
    labels = {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method}
    return REGISTRY.get_sample_value(f"grpc_server_msg_{direction}_total", labels) or 0.0


def _unary_client_config() -> packetbus.ClientConfig:
    config = packetbus.ClientConfig()
    return replace(config, batching=replace(config.batching, use_stream=False))


async def _log_length(r: redis_asyncio.Redis, topic: str) -> int:
    return int(await r.xlen(f"pb:{{{topic}}}:log"))


def _receipts(results: Sequence[packet_service_pb2.DispatchResult]) -> list[tuple[str, str]]:
    return [(r.tracking_id, r.receipt.cursor) for r in results]


async def test_dispatch_goes_over_the_stream_and_answers_what_unary_dispatch_answers(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    streamed_before = _messages("DispatchStream", "bidi_stream")
    unary_before = _messages("Dispatch", "unary")
    packets = [new_packet(topic) for _ in range(20)]

    receipts = await asyncio.gather(*(client.dispatch(p) for p in packets))

    assert _messages("DispatchStream", "bidi_stream") > streamed_before
    assert _messages("Dispatch", "unary") == unary_before
    assert await _log_length(raw_redis, topic) == 20
    # The same packets again by unary Dispatch: the original receipts (deduplicated).
    again = [packet_pb2.Packet.FromString(p.SerializeToString()) for p in packets]
    control = new_packet(topic)
    async with await packetbus.Client.connect(target, config=_unary_client_config()) as unary:
        results = await unary.dispatch_batch(again)
        await unary.dispatch_batch([control])
    assert _receipts(results) == [
        (p.tracking_id, r.cursor) for p, r in zip(packets, receipts, strict=True)
    ]
    assert await _log_length(raw_redis, topic) == 21
    # Custody: a packet's chain sent on the stream verifies, as a unary one's does.
    streamed = await verified_actions(client, await client.get_packet(packets[0].tracking_id))
    unary_sent = await verified_actions(client, await client.get_packet(control.tracking_id))
    assert streamed == unary_sent == ["received", "dispatched"]


async def test_packets_first_sent_by_unary_dispatch_answer_their_receipts_on_the_stream(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    packets = [new_packet(topic) for _ in range(5)]
    async with await packetbus.Client.connect(target, config=_unary_client_config()) as unary:
        results = await unary.dispatch_batch(packets)
    streamed_before = _messages("DispatchStream", "bidi_stream")

    receipts = await asyncio.gather(*(client.dispatch(p) for p in packets))

    assert _messages("DispatchStream", "bidi_stream") > streamed_before
    assert [r.cursor for r in receipts] == [r.receipt.cursor for r in results]
    assert [r.stored_at for r in receipts] == [r.receipt.stored_at for r in results]
    assert await _log_length(raw_redis, topic) == 5


async def test_a_rejected_packet_on_the_stream_raises_what_unary_dispatch_answers(
    client: packetbus.Client, topic: str
) -> None:
    bad = new_packet(topic, ttl_seconds=999_999)
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.dispatch(bad)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in caught.value.field_violations] == [
        ("ttl_seconds", "TTL_RANGE")
    ]
    assert caught.value.outcome_unknown is False
    # A tracking id taken by other content: ALREADY_EXISTS, as unary.
    first = new_packet(topic, ttl_seconds=60)
    await client.dispatch(first)
    other = new_packet(topic, ttl_seconds=120)
    other.tracking_id = first.tracking_id
    with pytest.raises(packetbus.PacketbusError) as taken:
        await client.dispatch(other)
    assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS


@pytest.fixture
async def stub(target: str) -> AsyncIterator[packet_service_pb2_grpc.PacketServiceStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield packet_service_pb2_grpc.PacketServiceStub(channel)


async def _unary_error(
    stub: packet_service_pb2_grpc.PacketServiceStub, packets: Sequence[packet_pb2.Packet]
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Dispatch(packet_service_pb2.DispatchRequest(packets=packets), timeout=10)
    return caught.value


def _rich(error: grpc.aio.AioRpcError) -> bytes:
    (details,) = [v for k, v in error.trailing_metadata() or () if k == STATUS_DETAILS_KEY]
    assert isinstance(details, bytes)
    return details


async def test_a_bad_batch_gets_the_unary_error_writes_nothing_and_the_stream_goes_on(
    stub: packet_service_pb2_grpc.PacketServiceStub,
    raw_redis: redis_asyncio.Redis,
    topic: str,
) -> None:
    too_many = [new_packet(topic) for _ in range(1001)]
    unary_empty = await _unary_error(stub, [])
    unary_too_many = await _unary_error(stub, too_many)
    before = await key_names(raw_redis)
    good = [new_packet(topic) for _ in range(3)]

    stream = stub.DispatchStream(timeout=30)
    await stream.write(packet_service_pb2.DispatchStreamRequest(batch_id=7, packets=too_many))
    first = await stream.read()
    await stream.write(packet_service_pb2.DispatchStreamRequest(batch_id=8))
    second = await stream.read()
    assert await new_keys(raw_redis, before) == set()
    await stream.write(packet_service_pb2.DispatchStreamRequest(batch_id=9, packets=good))
    third = await stream.read()
    await stream.done_writing()
    assert await stream.read() is grpc.aio.EOF
    assert await stream.code() == grpc.StatusCode.OK

    assert (first.batch_id, first.WhichOneof("outcome")) == (7, "error")
    assert first.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # Exactly the status the unary call failed with: code, message, BadRequest detail.
    assert first.error.SerializeToString() == _rich(unary_too_many)
    assert "BATCH_TOO_LARGE" in str(first.error.details)
    assert (second.batch_id, second.WhichOneof("outcome")) == (8, "error")
    assert second.error.SerializeToString() == _rich(unary_empty)
    assert (third.batch_id, third.WhichOneof("outcome")) == (9, "dispatched")
    assert [r.tracking_id for r in third.dispatched.results] == [p.tracking_id for p in good]
    assert all(r.HasField("receipt") for r in third.dispatched.results)
    # Nothing of the refused batches (no new key above); the good one stored.
    assert await _log_length(raw_redis, topic) == 3


async def test_per_packet_results_on_the_stream_equal_unary_dispatch_results(
    stub: packet_service_pb2_grpc.PacketServiceStub, topic: str
) -> None:
    packets = [new_packet(topic) for _ in range(4)]
    packets[2].schema_version = "9.9"
    stream = stub.DispatchStream(timeout=30)
    await stream.write(packet_service_pb2.DispatchStreamRequest(batch_id=1, packets=packets))
    answer = await stream.read()
    stream.cancel()
    unary = await stub.Dispatch(packet_service_pb2.DispatchRequest(packets=packets), timeout=10)

    assert answer.batch_id == 1
    assert answer.dispatched == unary  # the same receipts (deduplicated) and the same error
    assert unary.results[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_batches_in_flight_are_answered_by_id(
    stub: packet_service_pb2_grpc.PacketServiceStub, topic: str
) -> None:
    batches = {i: [new_packet(topic) for _ in range(i)] for i in range(1, 13)}
    stream = stub.DispatchStream(timeout=30)
    for batch_id, packets in batches.items():
        await stream.write(
            packet_service_pb2.DispatchStreamRequest(batch_id=batch_id, packets=packets)
        )
    answers = [await stream.read() for _ in batches]
    stream.cancel()

    assert sorted(a.batch_id for a in answers) == sorted(batches)
    for answer in answers:
        sent = batches[answer.batch_id]
        assert [r.tracking_id for r in answer.dispatched.results] == [p.tracking_id for p in sent]


async def test_server_info_publishes_the_limit_of_batches_in_flight(
    client: packetbus.Client,
) -> None:
    info = await client.server_info()
    assert info.limits.max_dispatch_stream_batches == 8


async def test_concurrent_dispatches_share_a_few_batches_on_the_stream(
    target: str, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    config = packetbus.ClientConfig(
        batching=packetbus.BatchSettings(max_packets=250, max_latency=1.0)
    )
    async with await packetbus.Client.connect(target, config=config) as client:
        before = _messages("DispatchStream", "bidi_stream")
        receipts = await asyncio.gather(*(client.dispatch(new_packet(topic)) for _ in range(1000)))
        batches = _messages("DispatchStream", "bidi_stream") - before
    assert len({r.cursor for r in receipts}) == 1000
    assert batches == 4
    assert await _log_length(raw_redis, topic) == 1000


async def test_a_with_token_view_dispatches_by_unary_calls(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    # A view's calls each carry its token; its batches stay unary Dispatch calls.
    view = client.with_token("header.payload.signature")
    streamed_before = _messages("DispatchStream", "bidi_stream")
    unary_before = _messages("Dispatch", "unary")
    try:
        receipts = await asyncio.gather(*(view.dispatch(new_packet(topic)) for _ in range(3)))
    finally:
        await view.close()
    assert len({r.cursor for r in receipts}) == 3
    assert _messages("Dispatch", "unary") > unary_before
    assert _messages("DispatchStream", "bidi_stream") == streamed_before
    assert await _log_length(raw_redis, topic) == 3


async def test_a_half_closed_stream_answers_every_batch_then_ends_ok_whatever_the_ids(
    stub: packet_service_pb2_grpc.PacketServiceStub,
    topic: str,
    raw_redis: redis_asyncio.Redis,
) -> None:
    # The ids the proto allows: 0 (answered without the field), the largest uint64,
    # and one id twice (both served, both answered with it).
    ids = [0, 2**64 - 1, 7, 7, 1]
    sent = {i: new_packet(topic) for i in range(len(ids))}
    stream = stub.DispatchStream(timeout=30)
    for n, batch_id in enumerate(ids):
        request = packet_service_pb2.DispatchStreamRequest(batch_id=batch_id, packets=[sent[n]])
        await stream.write(request)
    await stream.done_writing()  # with every batch still in flight
    answers = [answer async for answer in stream]
    assert await stream.code() == grpc.StatusCode.OK
    assert sorted(a.batch_id for a in answers) == sorted(ids)
    assert sorted(a.dispatched.results[0].tracking_id for a in answers) == sorted(
        p.tracking_id for p in sent.values()
    )
    assert all(a.dispatched.results[0].HasField("receipt") for a in answers)
    assert await _log_length(raw_redis, topic) == len(ids)


async def test_a_dispatch_stream_beyond_the_servers_cap_is_refused_and_the_client_goes_unary(
    redis_url: str, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    """max_dispatch_streams: one more stream is RESOURCE_EXHAUSTED at once, and a
    Client refused its stream sends every batch by unary Dispatch: nothing is lost."""
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, max_dispatch_streams=1)
    )
    target = f"127.0.0.1:{srv.port}"
    streams = srv.streams
    assert streams is not None
    # A connection of each one's own (channels to one address share one otherwise).
    own = [("grpc.use_local_subchannel_pool", 1)]
    try:
        async with grpc.aio.insecure_channel(target, options=own) as channel:
            stub = packet_service_pb2_grpc.PacketServiceStub(channel)
            held = stub.DispatchStream(timeout=60)
            first = packet_service_pb2.DispatchStreamRequest(
                batch_id=1, packets=[new_packet(topic)]
            )
            await held.write(first)
            answer = await held.read()
            assert answer.dispatched.results[0].HasField("receipt")
            assert streams.open_streams("dispatch") == 1

            extra = stub.DispatchStream(timeout=10)
            assert await extra.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "1 open dispatch streams, its limit" in (await extra.details() or "")

            unary_before = _messages("Dispatch", "unary")
            packets = [new_packet(topic) for _ in range(5)]
            second = grpc.aio.insecure_channel(target, options=own)
            async with packetbus.Client(second, packetbus.ClientConfig()) as client:
                receipts = [await client.dispatch(p, timeout=10) for p in packets]
            assert len({r.cursor for r in receipts}) == 5
            assert _messages("Dispatch", "unary") == unary_before + 5
            assert streams.open_streams("dispatch") == 1
            assert await _log_length(raw_redis, topic) == 6
            await held.done_writing()
            assert await held.read() == grpc.aio.EOF
            assert await held.code() == grpc.StatusCode.OK
    finally:
        await srv.stop(grace=0)
