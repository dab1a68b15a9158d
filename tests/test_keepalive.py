"""Keepalive pings: an idle stream's connection stays open.

Clients ping to keep long-lived streams open; a server that refuses those pings
answers GOAWAY "too_many_pings", and every stream on the connection ends.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

import packetbus
from packetbus import _client
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import ServerConfig, _app, start
from tests.conftest import new_packet, unique


def test_the_client_pings_no_more_often_than_the_server_permits() -> None:
    assert _client.KEEPALIVE_MS >= _app.PERMITTED_PING_INTERVAL_MS


async def test_an_idle_subscription_outlives_the_pings_that_keep_it_open(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real intervals (the server permits 10 s, clients ping every 30 s) scaled
    # down, so the test pings five times in seconds.
    monkeypatch.setattr(_app, "PERMITTED_PING_INTERVAL_MS", 500)
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url))
    target = f"127.0.0.1:{srv.port}"
    topic = unique("idle")
    try:
        async with grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.keepalive_time_ms", 1500),
                # Let this client ping as often as its keepalive asks, with no data.
                ("grpc.http2.min_time_between_pings_ms", 1500),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        ) as channel:
            stub = packet_service_pb2_grpc.PacketServiceStub(channel)
            call = stub.Subscribe(
                packet_service_pb2.SubscribeRequest(
                    topic=topic, start_position=packet_service_pb2.START_POSITION_LATEST
                )
            )
            await asyncio.sleep(8)  # no data either way, only pings
            packet = new_packet(topic)
            async with await packetbus.Client.connect(target) as sender:
                [result] = await sender.dispatch_batch([packet])
            assert result.WhichOneof("outcome") == "receipt"
            async with asyncio.timeout(10):
                response = await call.read()
            assert [p.packet.tracking_id for p in response.packets] == [packet.tracking_id]
            call.cancel()
    finally:
        await srv.stop(grace=0)
