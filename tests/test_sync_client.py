"""SyncClient: every public call of Client, blocking, against a real server.

The in-process server runs on the test's event loop, so each blocking client
runs in a worker thread, as it would in a program without asyncio."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

import packetbus
from packetbus._sync import client_calls
from packetbus.v1 import contents_pb2
from packetbus.v1 import task_service_pb2 as task_pb
from tests.conftest import new_packet, unique


def test_sync_client_offers_every_public_call_of_client() -> None:
    public = [n for n, _ in inspect.getmembers(packetbus.Client) if not n.startswith("_")]
    assert client_calls() == sorted(public)
    assert len(public) > 60  # the listing found Client's calls, not an empty set
    for name in public:
        offered = inspect.getattr_static(packetbus.SyncClient, name)
        assert not inspect.iscoroutinefunction(offered), name
        assert not inspect.isasyncgenfunction(offered), name


async def test_dispatch_get_verify_and_errors(target: str, topic: str) -> None:
    def blocking() -> None:
        with packetbus.SyncClient.connect(target) as bus:
            packet = new_packet(topic)
            receipt = bus.dispatch(packet, timeout=5)
            assert bus.get_packet(packet.tracking_id, timeout=5).receipt == receipt
            results = bus.dispatch_batch([new_packet(topic) for _ in range(3)], timeout=5)
            assert [r.WhichOneof("outcome") for r in results] == ["receipt"] * 3
            verdict = bus.verify_custody(packet.tracking_id)
            assert verdict.verified
            assert [e.action for e in verdict.entries] == ["received", "dispatched"]
            with pytest.raises(packetbus.PacketbusError) as caught:
                bus.get_packet("nope")
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(packetbus.PacketbusError) as missing:
                bus.get_packet("00000000-0000-4000-8000-000000000000")
            assert missing.value.code == grpc.StatusCode.NOT_FOUND

    await asyncio.to_thread(blocking)


async def test_subscribe_iterates_and_breaks(target: str, topic: str) -> None:
    def blocking() -> list[str]:
        with packetbus.SyncClient.connect(target) as bus:
            sent = [new_packet(topic) for _ in range(3)]
            bus.dispatch_batch(sent)
            got = []
            with bus.subscribe(topic, start=packetbus.EARLIEST) as stream:
                for stored in stream:
                    got.append(stored.packet.tracking_id)
                    if len(got) == 2:
                        break
                assert stream.cursor is not None
            assert got == [p.tracking_id for p in sent[:2]]
            return got

    assert len(await asyncio.to_thread(blocking)) == 2


async def test_consumer_group_delivers_and_acks(target: str, topic: str) -> None:
    def blocking() -> None:
        with packetbus.SyncClient.connect(target) as bus:
            bus.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
            packet = new_packet(topic)
            bus.dispatch(packet)
            with bus.consume(topic, "g", consumer="c") as deliveries:
                delivery = next(deliveries)
                assert delivery.packet.packet.tracking_id == packet.tracking_id
                [settled] = delivery.ack(timeout=5)  # waits for the server's answer
                assert settled.status.code == 0
            group = bus.get_consumer_group(topic, "g")
            assert group.outstanding == 0

    await asyncio.to_thread(blocking)


async def test_task_claim_complete_and_agent(target: str) -> None:
    def blocking() -> None:
        with packetbus.SyncClient.connect(target) as bus:
            worker = unique("worker")
            assert bus.register_agent(worker, ttl=30).created
            assert bus.get_agent(worker).id == worker
            queue = bus.task_queue(unique("queue"))
            queue.post(contents_pb2.Task(id="t-1", description="x"), origin="poster-1")
            claimed = queue.claim(worker, timeout=5)
            assert claimed.task_id == "t-1"
            claimed.complete({"ok": True}, timeout=5)
            assert queue.get("t-1").status == task_pb.TASK_STATUS_COMPLETED
            assert queue.claim(worker) is None

    await asyncio.to_thread(blocking)


async def test_close_leaves_no_thread_and_calls_fail_at_once(target: str, topic: str) -> None:
    def blocking() -> tuple[int, int]:
        before = threading.active_count()
        bus = packetbus.SyncClient.connect(target)
        during = threading.active_count()
        bus.register_agent(unique("agent"), ttl=30)
        events = bus.watch_agents(start="earliest")
        next(iter(events))  # an async generator left open: close ends it
        bus.close()
        with pytest.raises(packetbus.PacketbusError) as caught:
            bus.dispatch(new_packet(topic))
        assert caught.value.code == grpc.StatusCode.CANCELLED
        bus.close()  # again: nothing to do
        assert threading.active_count() == before
        return before, during

    before, during = await asyncio.to_thread(blocking)
    assert during == before + 1


async def test_timeout_bounds_a_call_that_takes_none(target: str, topic: str) -> None:
    def blocking() -> None:
        with (
            packetbus.SyncClient.connect(target) as bus,
            bus.subscribe(topic) as stream,  # LATEST on an idle topic: waits
        ):
            with pytest.raises(packetbus.PacketbusError) as caught:
                stream.__anext__(timeout=0.2)  # takes no timeout: it bounds the wait
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert caught.value.outcome_unknown

    await asyncio.to_thread(blocking)


async def test_readme_sync_example_runs_as_written(target: str, tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    match = re.search(r"<!-- readme:sync -->\n```python\n(.*?)```", readme, re.S)
    assert match, "README has no block marked readme:sync"
    script = tmp_path / "sync.py"
    script.write_text(match.group(1))
    env = {**os.environ, "PACKETBUS_TARGET": target}
    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    stored, did = ran.stdout.splitlines()
    assert stored.startswith("stored at ")
    assert did == "did job-1"
