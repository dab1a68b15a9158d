"""Two replicas over one store, one whose clock is 60 s ahead or behind, give the same answers.

Leases, TTLs and heartbeats are written with the store's clock (Redis TIME, in
the scripts); a replica that judged them with its own clock would call a live
agent stale, a live packet expired (and report no gap), let a consumer hold more
than its flow-control bound, or keep a lease that ran out. Both replicas are real
`packetbus serve`-like subprocesses (tests/_skewed_replica.py) over the same
Redis, with the same policy; the correct one's clock is the machine's.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus import EARLIEST
from packetbus.v1 import agent_service_pb2, packet_service_pb2, task_service_pb2
from packetbus_server import _keys
from tests.conftest import REPO, free_port, new_packet, unique

pytestmark = pytest.mark.slow

SKEW_S = 60
POLICY = """
default = "allow"

[[rules]]
id = "hold-all"
decision = "hold"
reason = "held for the clock test"
topic = "held.*"
"""
EXPIRED = packet_service_pb2.GAP_REASON_EXPIRED


def replica(skew: float, redis_url: str, data_dir: Path, policy: Path) -> subprocess.Popen[str]:
    """A replica whose wall clock is off by `skew` seconds, once it serves."""
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "_skewed_replica.py"),
            str(skew),
            str(free_port()),
            redis_url,
            str(data_dir),
            str(policy),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("wall clock "):
            # The skew took: its clock is `skew` seconds off this one.
            assert abs(float(line.split()[2]) - time.time() - skew) < 5, line
        if "serving on" in line:
            process.port = int(line.rsplit(":", 1)[1])  # type: ignore[attr-defined]
            return process
    raise AssertionError(f"replica exited with {process.wait()}")


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clock") / "policy.toml"
    path.write_text(POLICY)
    return path


def _run(skew: float, redis_url: str, policy: Path, tmp: pytest.TempPathFactory) -> Iterator[str]:
    process = replica(skew, redis_url, tmp.mktemp("replica"), policy)
    try:
        yield f"127.0.0.1:{process.port}"  # type: ignore[attr-defined]
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def correct_target(
    redis_url: str, policy: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from _run(0, redis_url, policy, tmp_path_factory)


@pytest.fixture(scope="module", params=[SKEW_S, -SKEW_S], ids=["ahead", "behind"])
def skewed_target(
    request: pytest.FixtureRequest,
    redis_url: str,
    policy: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    yield from _run(request.param, redis_url, policy, tmp_path_factory)


@pytest.fixture
async def replicas(
    correct_target: str, skewed_target: str
) -> AsyncIterator[tuple[packetbus.Client, packetbus.Client]]:
    async with (
        await packetbus.Client.connect(correct_target, timeout=10) as correct,
        await packetbus.Client.connect(skewed_target, timeout=10) as skewed,
    ):
        yield correct, skewed


async def test_a_heartbeating_agent_is_live_on_every_replica(
    replicas: tuple[packetbus.Client, packetbus.Client],
) -> None:
    correct, skewed = replicas
    role, agent = unique("role"), unique("agent")
    await correct.register_agent(agent, role=role, ttl=20)
    beat = await skewed.heartbeat_agent(agent)
    assert beat.liveness == agent_service_pb2.AGENT_LIVENESS_LIVE
    for bus in replicas:
        assert (await bus.get_agent(agent)).liveness == agent_service_pb2.AGENT_LIVENESS_LIVE
        assert [a.id for a in await bus.list_agents(role=role, liveness="live")] == [agent]
        assert await bus.list_agents(role=role, liveness="stale") == []


async def _read(
    bus: packetbus.Client, topic: str, n: int, **start: object
) -> tuple[list[packet_service_pb2.SubscriptionGap], list[str]]:
    """The gaps and the cursors of (up to) the first n packets a subscription gets in 3 s."""
    gaps: list[packet_service_pb2.SubscriptionGap] = []
    got: list[str] = []
    async with bus.subscribe(topic, on_gap=gaps.append, **start) as subscription:  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(3):
                async for stored in subscription:
                    got.append(stored.receipt.cursor)
                    if len(got) == n:
                        break
        except TimeoutError:
            pass
    return gaps, got


async def test_live_packets_are_read_and_expired_ones_are_gaps_on_every_replica(
    replicas: tuple[packetbus.Client, packetbus.Client],
) -> None:
    correct, _ = replicas
    topic = unique("topic")
    results = await correct.dispatch_batch(
        [new_packet(topic, ttl_seconds=ttl) for ttl in (45, 1, 45)]
    )
    live, dead, later = (r.receipt.cursor for r in results)
    await asyncio.sleep(1.3)  # the 1 s packet has expired
    for bus in replicas:
        # From the earliest: the live 45 s packets, and no gap (the expired packet
        # was gone before the subscription started).
        assert await _read(bus, topic, 2, start=EARLIEST) == ([], [live, later])
        # After the first: the expired one is a gap, then the live one.
        gap = packet_service_pb2.SubscriptionGap(
            last_cursor=live, resume_after_cursor=dead, missed_packets=1, reason=EXPIRED
        )
        assert await _read(bus, topic, 1, after=live) == ([gap], [later])


async def _hold(bus: packetbus.Client, topic: str, group: str, seconds: float) -> list[float]:
    """Consume without settling for `seconds`, allowed to hold 2: when each delivery came
    (seconds since the start)."""
    started, came = time.monotonic(), []
    async with bus.consume(topic, group, consumer="holder", max_outstanding_packets=2) as got:
        try:
            async with asyncio.timeout(seconds):
                async for _ in got:
                    came.append(time.monotonic() - started)
        except TimeoutError:
            pass
    return came


async def test_flow_control_holds_two_until_their_leases_run_out_on_every_replica(
    replicas: tuple[packetbus.Client, packetbus.Client],
) -> None:
    async def hold(bus: packetbus.Client) -> list[float]:
        topic, group = unique("topic"), "workers"
        await bus.create_consumer_group(topic, group, start=EARLIEST, ack_deadline_seconds=3)
        await bus.dispatch_batch([new_packet(topic, ttl_seconds=300) for _ in range(5)])
        return await _hold(bus, topic, group, 5.5)

    for came in await asyncio.gather(*(hold(bus) for bus in replicas)):
        # Two at once; the next two only once their 3 s leases ran out (room again),
        # and those two are held until 6 s.
        assert len([t for t in came if t < 2.5]) == 2, came
        assert len(came) == 4, came


async def test_task_leases_are_judged_the_same_on_every_replica(
    replicas: tuple[packetbus.Client, packetbus.Client],
) -> None:
    correct, skewed = replicas
    long_queue, short_queue = correct.task_queue(unique("q")), correct.task_queue(unique("q"))
    await long_queue.post(packetbus.Task(id="long"), origin="planner-1")
    await short_queue.post(packetbus.Task(id="short"), origin="planner-1")

    held = await skewed.task_queue(long_queue.name).claim("worker-1", lease_seconds=30)
    assert held is not None
    assert held.state.status == task_service_pb2.TASK_STATUS_CLAIMED
    short = await skewed.task_queue(short_queue.name).claim("worker-1", lease_seconds=1)
    assert short is not None
    assert short.state.status == task_service_pb2.TASK_STATUS_CLAIMED
    await asyncio.sleep(1.3)
    for bus in replicas:
        claimed = await bus.task_queue(long_queue.name).get("long")
        assert claimed.status == task_service_pb2.TASK_STATUS_CLAIMED
        # A lease that ran out: the task is back in the queue.
        ran_out = await bus.task_queue(short_queue.name).get("short")
        assert ran_out.status == task_service_pb2.TASK_STATUS_QUEUED


async def test_held_packets_expire_the_same_on_every_replica(
    replicas: tuple[packetbus.Client, packetbus.Client],
) -> None:
    correct, _ = replicas
    topic = unique("held")
    live, dead = new_packet(topic, ttl_seconds=45), new_packet(topic, ttl_seconds=1)
    results = await correct.dispatch_batch([live, dead])
    assert [r.WhichOneof("outcome") for r in results] == ["held", "held"]
    await asyncio.sleep(1.3)
    for bus in replicas:
        listed = [h.packet.packet.tracking_id async for h in bus.list_held_packets(topic)]
        assert listed == [live.tracking_id]
        found = await bus.get_held_packet(topic, live.tracking_id)
        assert found.packet.packet.tracking_id == live.tracking_id
        with pytest.raises(packetbus.PacketbusError) as gone:
            await bus.get_held_packet(topic, dead.tracking_id)
        assert gone.value.code == grpc.StatusCode.NOT_FOUND


async def test_what_a_replica_writes_with_a_ttl_lives_its_ttl_by_the_stores_clock(
    replicas: tuple[packetbus.Client, packetbus.Client], raw_redis: redis_asyncio.Redis
) -> None:
    """Expiries the server computes before a script runs (a task's, a context document's)
    are the store's now + TTL: a replica behind would write them already past (the key
    gone at once), one ahead would keep them a minute too long."""
    _, skewed = replicas
    queue, scope = unique("q"), unique("scope")
    task = new_packet(queue, ttl_seconds=45)
    task.task.id = "t-1"
    await skewed.task_queue(queue).post(task)
    document = await skewed.put_context(scope, "notes", b"hello", ttl=45, author="writer-1")
    seconds, micros = await raw_redis.time()
    store_ms = seconds * 1000 + micros // 1000
    for key in (_keys.task(queue, "t-1"), _keys.context_doc(scope, "notes")):
        assert 44_000 < await raw_redis.pexpiretime(key) - store_ms <= 45_000, key
    assert 44_000 < document.expires_at.ToMilliseconds() - store_ms <= 45_000
    for bus in replicas:
        assert (
            await bus.task_queue(queue).get("t-1")
        ).status == task_service_pb2.TASK_STATUS_QUEUED
        assert (await bus.get_context(scope, "notes")).data == b"hello"
