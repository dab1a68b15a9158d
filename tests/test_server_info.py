"""GetServerInfo publishes the serving settings a client in any language must know: the
stream caps and the keepalive, as configured (and `packetbus info` prints them)."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

import packetbus
from packetbus.v1 import packet_service_pb2 as pb
from packetbus.v1 import task_service_pb2, task_service_pb2_grpc
from packetbus_server import ServerConfig, start
from tests._polling import until
from tests.conftest import unique


async def test_server_info_reports_the_configured_stream_caps_and_keepalive(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        max_subscribers=7,
        max_watchers=2,
        max_exports=3,
        max_transfers=5,
        max_streams_per_peer=13,
        max_dispatch_streams=11,
        keepalive_seconds=12.5,
        keepalive_timeout_seconds=4.0,
    )
    srv = await start(config)
    target = f"127.0.0.1:{srv.port}"
    try:
        async with await packetbus.Client.connect(target) as client:
            limits = (await client.server_info()).limits
        assert limits.streams == pb.StreamLimits(
            max_subscribers=7,
            max_watchers=2,
            max_exports=3,
            max_transfers=5,
            max_streams_per_peer=13,
            max_dispatch_streams=11,
        )
        assert limits.keepalive == pb.KeepaliveSettings(
            server_ping_interval_ms=12_500,
            server_ping_timeout_ms=4_000,
            min_client_ping_interval_ms=10_000,
        )
        # The rest of the limits are still there.
        assert limits.max_response_bytes == config.limits.max_response_bytes

        # What it publishes is what it enforces: max_watchers watches open, one more
        # is refused.
        async with grpc.aio.insecure_channel(target) as channel:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            request = task_service_pb2.WatchTasksRequest(queue=unique("q"))
            watches = [stub.WatchTasks(request) for _ in range(limits.streams.max_watchers)]
            streams = srv.streams
            assert streams is not None
            await until(lambda: streams.open_streams() == limits.streams.max_watchers)
            refused = stub.WatchTasks(request)
            assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for watch in watches:
                watch.cancel()

        from packetbus._cli import main

        assert await asyncio.to_thread(main, ["--target", target, "info"]) == 0
        printed = json.loads(capsys.readouterr().out)["limits"]
        assert printed["streams"] == {
            "maxSubscribers": 7,
            "maxWatchers": 2,
            "maxExports": 3,
            "maxTransfers": 5,
            "maxStreamsPerPeer": 13,
            "maxDispatchStreams": 11,
        }
        assert printed["keepalive"] == {
            "serverPingIntervalMs": 12_500,
            "serverPingTimeoutMs": 4_000,
            "minClientPingIntervalMs": 10_000,
        }
    finally:
        await srv.stop(grace=0)


async def test_the_python_client_pings_no_more_often_than_the_server_permits(
    client: packetbus.Client,
) -> None:
    from packetbus._client import KEEPALIVE_MS

    keepalive = (await client.server_info()).limits.keepalive
    assert keepalive.min_client_ping_interval_ms == 10_000
    assert keepalive.min_client_ping_interval_ms <= KEEPALIVE_MS
    # The defaults: a dead peer is noticed within 40 s.
    assert (keepalive.server_ping_interval_ms, keepalive.server_ping_timeout_ms) == (
        30_000,
        10_000,
    )
