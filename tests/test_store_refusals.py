"""The store's refusals (full memory, a full disk, a read-only replica, too few
replicas): resource errors or UNAVAILABLE with a clear message, never INTERNAL,
never a partial write, and nothing acknowledged lost.

Each test runs its own Valkey (tests/_own_store.py), configured as the fault needs.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio
from google.rpc import error_details_pb2

import packetbus
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc, task_service_pb2_grpc
from packetbus.v1 import task_service_pb2 as task_pb2
from packetbus_server import Limits, RunningServer, ServerConfig, start
from tests._own_store import disk_of, own_store
from tests.conftest import free_port, new_packet, run_cli, unique

# --- against a real store ------------------------------------------------------------


@asynccontextmanager
async def _serving(url: str, data_dir: Path) -> AsyncIterator[RunningServer]:
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0", redis_url=url, data_dir=data_dir, retry_budget_seconds=0.5
        )
    )
    try:
        yield srv
    finally:
        await srv.stop(grace=0, notice=0)


def _packets(topic: str, count: int, size: int = 2000) -> list[packetbus.Packet]:
    packets = []
    for _ in range(count):
        packet = new_packet(topic)
        packet.raw.content_type = "application/octet-stream"
        packet.raw.data = b"x" * size
        packets.append(packet)
    return packets


async def _fill(client: packetbus.Client, topic: str) -> tuple[list[str], packetbus.PacketbusError]:
    """Dispatch batches of 20 until the store refuses one: the acknowledged tracking
    ids, and the refusal."""
    acked: list[str] = []
    for _ in range(2000):
        batch = _packets(topic, 20)
        try:
            results = await client.dispatch_batch(batch)
        except packetbus.PacketbusError as exc:
            return acked, exc
        assert all(r.HasField("receipt") for r in results)
        acked.extend(p.tracking_id for p in batch)
    raise AssertionError("the store never filled up")


def _error_reason(exc: packetbus.PacketbusError) -> str:
    """The reason of the google.rpc.ErrorInfo detail of `exc`'s status."""
    assert exc.status is not None
    assert exc.status.code == exc.code.value[0]
    [detail] = exc.status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert info.domain == "packetbus"
    return str(info.reason)


async def _outcome(call: Awaitable[Any]) -> str:
    try:
        await call
    except packetbus.PacketbusError as exc:
        return str(exc.code.name)
    return "OK"


async def test_a_full_store_refuses_writes_and_keeps_every_acknowledged_packet(
    tmp_path: Path,
) -> None:
    topic = unique("full")
    with own_store(tmp_path / "store", "--maxmemory", "4mb") as url:
        admin = redis_asyncio.Redis.from_url(url)
        async with (
            _serving(url, tmp_path / "data") as srv,
            await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client,
        ):
            acked, refused = await _fill(client, topic)
            assert len(acked) >= 100
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
            assert refused.message.startswith("the store is full"), refused.message
            assert _error_reason(refused) == "STORE_FULL"
            # No partial write: the refused batch left nothing in the log.
            assert await admin.xlen(f"pb:{{{topic}}}:log") == len(acked)
            # Every other kind of write is refused the same way, never INTERNAL (the
            # limit lowered below what the store holds: full whatever frees up now).
            await admin.config_set("maxmemory", "1mb")
            queue = client.task_queue(unique("full-q"))
            outcomes = {
                "post task": await _outcome(
                    queue.post(packetbus.Task(id="t-1", type="x"), origin="tester-1")
                ),
                "group": await _outcome(client.create_consumer_group(unique("t"), "g")),
                "agent": await _outcome(client.register_agent(unique("agent"))),
                "context": await _outcome(client.set_global_context(unique("k"), "v" * 1000)),
            }
            assert outcomes == dict.fromkeys(outcomes, "RESOURCE_EXHAUSTED"), outcomes
            # Reads still answer: every acknowledged packet is there.
            for tracking_id in acked:
                found = await client.get_packet(tracking_id)
                assert found.packet.tracking_id == tracking_id
            assert await _count_subscribed(client, topic, len(acked)) == len(acked)

            # With room again, sending the refused batch stores it, and re-sending
            # an acknowledged one stores nothing twice.
            await admin.config_set("maxmemory", "0")
            again = _packets(topic, 20)
            await client.dispatch_batch(again)
            await client.dispatch_batch(again)
            assert await admin.xlen(f"pb:{{{topic}}}:log") == len(acked) + 20
        await admin.aclose()


async def _count_subscribed(client: packetbus.Client, topic: str, expected: int) -> int:
    seen = 0
    async with client.subscribe(topic, start=packetbus.EARLIEST) as packets:
        async for _ in packets:
            seen += 1
            if seen == expected:
                break
    return seen


def _dispatch_cli(target: str, topic: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "--target",
        target,
        "--timeout",
        "5",
        "dispatch",
        "--topic",
        topic,
        "--origin",
        "tester-1",
        "--speech-act",
        "inform",
        "--json",
        '{"data": {"n": 1}}',
        timeout=30,
    )


async def _until_refused(client: packetbus.Client, topic: str) -> packetbus.PacketbusError:
    for _ in range(500):
        try:
            await client.dispatch_batch(_packets(topic, 20))
        except packetbus.PacketbusError as exc:
            return exc
    raise AssertionError("the store never refused a write")


async def test_a_full_disk_refuses_writes_as_resource_exhausted(tmp_path: Path) -> None:
    topic = unique("disk")
    # An AOF that cannot grow past 256 KiB: its writes come up short as on a full disk.
    with own_store(tmp_path / "store", "--appendonly", "yes", wrap=disk_of(256 * 1024)) as url:
        async with (
            _serving(url, tmp_path / "data") as srv,
            await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client,
        ):
            refused = await _until_refused(client, topic)
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
            assert "cannot save them to disk" in refused.message
            assert "No space left on device" in refused.message
            assert _error_reason(refused) == "STORE_CANNOT_PERSIST"
            done = await asyncio.to_thread(_dispatch_cli, f"127.0.0.1:{srv.port}", topic)
            assert done.returncode == 1
            assert "RESOURCE_EXHAUSTED" in done.stdout + done.stderr
            assert "No space left on device" in done.stdout + done.stderr
            assert "Traceback" not in done.stderr


async def test_a_failed_snapshot_refuses_writes_as_resource_exhausted(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    with own_store(store_dir, "--save", "3600 1", "--stop-writes-on-bgsave-error", "yes") as url:
        admin = redis_asyncio.Redis.from_url(url)
        async with (
            _serving(url, tmp_path / "data") as srv,
            await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client,
        ):
            await client.dispatch_batch(_packets(unique("disk"), 1))
            # Its directory gone, the next snapshot fails, and the store stops writes.
            (store_dir / "valkey.log").rename(tmp_path / "valkey.log")
            shutil.rmtree(store_dir)
            await admin.bgsave()
            await _eventually(lambda: _last_save_failed(admin))
            refused = await _until_refused(client, unique("disk"))
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
            assert "cannot save them to disk (MISCONF" in refused.message
        await admin.aclose()


async def _last_save_failed(admin: redis_asyncio.Redis) -> bool:
    info = await admin.info("persistence")
    return bool(info["rdb_last_bgsave_status"] == "err")


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("state", ["replica", "too few replicas"])
async def test_a_store_that_refuses_writes_for_now_answers_unavailable_then_recovers(
    tmp_path: Path, state: str
) -> None:
    topic = unique("ro")
    with (
        own_store(tmp_path / "store") as url,
        own_store(tmp_path / "primary") as primary_url,
    ):
        admin = redis_asyncio.Redis.from_url(url)
        async with (
            _serving(url, tmp_path / "data") as srv,
            await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
        ):
            if state == "replica":
                port = primary_url.rsplit(":", 1)[1].split("/")[0]
                await admin.replicaof("127.0.0.1", port)
                expected = "read-only replica (READONLY)"
            else:
                await admin.config_set("min-replicas-to-write", "1")
                expected = "min-replicas-to-write (NOREPLICAS)"
            # The server retries for its budget (0.5 s), then answers; a raw call,
            # as the client would retry UNAVAILABLE until its own deadline.
            stub = packet_service_pb2_grpc.PacketServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Dispatch(
                    packet_service_pb2.DispatchRequest(packets=_packets(topic, 1)), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            assert expected in (refused.value.details() or "")
            assert "nothing was written" in (refused.value.details() or "")
            if state == "replica":
                await admin.replicaof("NO", "ONE")
            else:
                await admin.config_set("min-replicas-to-write", "0")
            await client.dispatch_batch(_packets(topic, 1))
            assert await admin.xlen(f"pb:{{{topic}}}:log") == 1
        await admin.aclose()


def test_serve_on_a_full_store_says_so_in_one_line(tmp_path: Path) -> None:
    # A limit below what an empty store holds: its first write (the signing keys) is refused.
    with own_store(tmp_path / "store", "--maxmemory", "1") as url:
        done = run_cli(
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--redis-url",
            url,
            "--data-dir",
            str(tmp_path / "data"),
        )
    assert done.returncode == 1, done.stdout + done.stderr
    # Warnings may come first (this store has no AOF); the refusal is one last line.
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("packetbus: cannot start: the store is full: ")
    assert all(" WARNING " in line for line in lines[:-1]), done.stderr


async def test_task_reads_answer_while_the_store_refuses_writes(tmp_path: Path) -> None:
    """GetTask, ListTasks and WatchTasks count the leases that ran out before they
    read, which writes: a store refusing writes for now (too few replicas here, a
    read-only replica during a failover) must not fail the read, nor spend its
    deadline retrying a write it does not need."""
    name = unique("ro-q")
    with own_store(tmp_path / "store") as url:
        admin = redis_asyncio.Redis.from_url(url)
        async with (
            _serving(url, tmp_path / "data") as srv,
            await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
        ):
            queue = client.task_queue(name)
            await queue.post(packetbus.Task(id="t-1", type="x"), origin="tester-1")
            assert await queue.claim("worker-1", lease_seconds=1) is not None
            await asyncio.sleep(1.2)  # the lease runs out: the next read counts it
            await admin.config_set("min-replicas-to-write", "1")
            # Raw calls: the client would retry an UNAVAILABLE until its own deadline.
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            got = await stub.GetTask(task_pb2.GetTaskRequest(queue=name, task_id="t-1"), timeout=5)
            assert got.task.status == task_pb2.TASK_STATUS_QUEUED  # as projected
            listed = await stub.ListTasks(task_pb2.ListTasksRequest(queue=name), timeout=5)
            assert [t.task_id for t in listed.tasks] == ["t-1"]
            watch = stub.WatchTasks(task_pb2.WatchTasksRequest(queue=name, after_cursor="0-0"))
            first = await asyncio.wait_for(watch.read(), 5)
            assert isinstance(first, task_pb2.WatchTasksResponse)
            assert [e.new_status for e in first.events][:2] == [
                task_pb2.TASK_STATUS_QUEUED,
                task_pb2.TASK_STATUS_CLAIMED,
            ]
            watch.cancel()
            # Writes taken again: the next read counts the run-out lease, once.
            await admin.config_set("min-replicas-to-write", "0")
            again = await queue.get("t-1")
            assert (again.status, again.failures) == (task_pb2.TASK_STATUS_QUEUED, 1)
            events = await stub.WatchTasks(
                task_pb2.WatchTasksRequest(queue=name, after_cursor="0-0")
            ).read()
            assert isinstance(events, task_pb2.WatchTasksResponse)
            assert [e.reason for e in events.events].count("lease expired") == 1
        await admin.aclose()


async def test_the_agent_reaper_says_once_that_the_store_refuses_its_sweeps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store refusing writes for an hour is one warning, then one line when sweeps
    go on, not a warning each sweep (each second)."""
    with own_store(tmp_path / "store") as url:
        admin = redis_asyncio.Redis.from_url(url)
        srv = await start(
            ServerConfig(
                listen="127.0.0.1:0",
                redis_url=url,
                data_dir=tmp_path / "data",
                retry_budget_seconds=0.2,
                limits=Limits(agent_reaper_interval_seconds=0.05),
            )
        )
        try:
            async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
                await client.register_agent(unique("agent"), ttl=1)
            caplog.set_level(logging.INFO, logger="packetbus.server.agents")
            await admin.config_set("min-replicas-to-write", "1")
            await asyncio.sleep(2.0)  # some 8 sweeps refused
            await admin.config_set("min-replicas-to-write", "0")
            await asyncio.sleep(0.5)
        finally:
            await srv.stop(grace=0, notice=0)
            await admin.aclose()
    said = [r.getMessage() for r in caplog.records if r.name == "packetbus.server.agents"]
    skipped = [m for m in said if "NOREPLICAS" in m]
    assert len(skipped) == 1, said
    assert said.count("agent sweeps go on: the store takes writes again") == 1, said
