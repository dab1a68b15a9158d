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


def test_sync_call_types_are_generated_from_client() -> None:
    script = Path(__file__).parent.parent / "scripts" / "generate_sync_types.py"
    checked = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    stub = (script.parent.parent / "client" / "packetbus" / "_sync_calls.pyi").read_text()
    assert sorted(re.findall(r"^    def (\w+)\(", stub, re.M)) == [
        n for n in client_calls() if n not in ("connect", "close")
    ]


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
                more = [new_packet(topic) for _ in range(2)]
                bus.dispatch_batch(more)
                got: list[str] = []
                with deliveries.batches() as batches:
                    for batch in batches:  # lists of deliveries, each blocking too
                        for each in batch:
                            got.append(each.packet.packet.tracking_id)
                            each.ack(timeout=5)
                        if len(got) == 2:
                            break
                assert got == [p.tracking_id for p in more]
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


async def test_inbox_agent_and_export_streams(target: str, topic: str) -> None:
    def blocking() -> None:
        with packetbus.SyncClient.connect(target) as bus:
            name = unique("agent")
            with bus.agent(name, role="tester", ttl=10) as me:
                assert me.agent.id == name
                assert me.set_state("busy").state == "busy"
                assert bus.get_agent(name).state == "busy"
            with pytest.raises(packetbus.PacketbusError) as gone:
                bus.get_agent(name)
            assert gone.value.code == grpc.StatusCode.NOT_FOUND

            with bus.inbox(name, timeout=5) as inbox:
                sent = bus.send_to(name, new_packet("ignored"), timeout=5)
                delivery = next(inbox)
                assert delivery.packet.receipt == sent
                delivery.ack(timeout=5)

            packets = [new_packet(topic) for _ in range(3)]
            bus.dispatch_batch(packets)
            with bus.export_packets(topic, timeout=10) as exported:
                ids = [stored.packet.tracking_id for stored in exported]
            assert ids == [p.tracking_id for p in packets]

    await asyncio.to_thread(blocking)


# Run as a program of its own: Ctrl-C (SIGINT) can only reach a main thread.
_INTERRUPTED = """
import os, signal, sys, threading
from packetbus import EARLIEST, Packet, SpeechAct, SyncClient

def packet():
    return Packet(topic=sys.argv[2], origin="t-1", speech_act=SpeechAct.SPEECH_ACT_INFORM)

bus = SyncClient.connect(sys.argv[1])
first, second = packet(), packet()
bus.dispatch(first, timeout=5)
stream = bus.subscribe(sys.argv[2], start=EARLIEST)
print("first", next(stream).packet.tracking_id == first.tracking_id)
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    next(stream)  # nothing more on the topic: waits until Ctrl-C
except KeyboardInterrupt:
    print("interrupted")
bus.dispatch(second, timeout=5)
# The interrupted read was cancelled, not left running to swallow this packet.
print("second", next(stream).packet.tracking_id == second.tracking_id)
stream.close()
bus.close()
# grpc's own poller thread stays for the process; the client's loop thread is gone.
print("loop thread", any(t.name == "packetbus-client" for t in threading.enumerate()))
"""


async def test_ctrl_c_cancels_the_waiting_call_and_close_joins(target: str, topic: str) -> None:
    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _INTERRUPTED, target, topic],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "first True",
        "interrupted",
        "second True",
        "loop thread False",
    ]
