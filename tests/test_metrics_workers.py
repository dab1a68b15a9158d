"""``packetbus serve --workers 2 --metrics-listen``: the supervisor's scrape sums
what both workers counted (prometheus-client's multiprocess mode), open streams
included, and its counting directory goes when it exits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from tests._scrape import Samples, rpc, scrape, scrape_settled, value
from tests.conftest import free_port, packetbus_serve, wait_for_workers

PACKETS = "packetbus.v1.PacketService"
CONNECTIONS = 16  # SO_REUSEPORT spreads connections: both workers get some
CALLS = 3  # per connection


def _ok(samples: Samples) -> float:
    labels = dict(rpc(PACKETS, "GetServerInfo"), grpc_code="OK")
    return value(samples, "grpc_server_handled_total", **labels)


async def test_the_supervisor_serves_the_sum_of_its_workers(redis_url: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    counting = tmp_path / "tmp"  # where the supervisor makes its counting directory
    counting.mkdir()
    process = packetbus_serve(
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        "--redis-url",
        redis_url,
        "--data-dir",
        str(tmp_path / "data"),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--grace",
        "0",
        "--drain-notice",
        "0",
        env={"TMPDIR": str(counting)},
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_for_workers(process, 2)
        before = await scrape_settled(url, "GetServerInfo")
        info = packet_service_pb2.GetServerInfoRequest()
        for _ in range(CONNECTIONS):
            # A connection of its own (gRPC would share one between channels).
            own = [("grpc.use_local_subchannel_pool", 1)]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own) as channel:
                stub = packet_service_pb2_grpc.PacketServiceStub(channel)
                for _ in range(CALLS):
                    await stub.GetServerInfo(info)
        (directory,) = counting.iterdir()
        writers = {path.stem.rpartition("_")[2] for path in directory.glob("counter_*.db")}
        assert len(writers) == 2, writers  # both workers counted calls
        after = await scrape_settled(url, "GetServerInfo")
        assert _ok(after) - _ok(before) == CONNECTIONS * CALLS

        # An open stream shows in the sum (livesum) while it is open, and not after.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = packet_service_pb2_grpc.PacketServiceStub(channel)
            subscription = stub.Subscribe(packet_service_pb2.SubscribeRequest(topic="m.w"))
            await subscription.initial_metadata()
            for _ in range(100):
                during = await scrape(url)
                if value(during, "packetbus_open_streams", kind="subscribe") == 1:
                    break
                await asyncio.sleep(0.05)
            assert value(during, "packetbus_open_streams", kind="subscribe") == 1
            subscription.cancel()
        for _ in range(100):
            ended = await scrape(url)
            if value(ended, "packetbus_open_streams", kind="subscribe") == 0:
                break
            await asyncio.sleep(0.05)
        assert value(ended, "packetbus_open_streams", kind="subscribe") == 0
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
    assert list(counting.iterdir()) == []  # the counting directory is gone
