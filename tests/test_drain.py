"""Drain on SIGTERM, with real `packetbus serve` processes.

Health checkers see NOT_SERVING while the listener is still open (for
--drain-notice seconds); then open streams end at once with UNAVAILABLE (not
after the grace period) and clients resume on another replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as redis_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

import packetbus
from packetbus.rich_status import error_info, status_in
from packetbus.v1 import agent_service_pb2 as agent_pb2
from packetbus.v1 import agent_service_pb2_grpc as agent_pb2_grpc
from packetbus.v1 import consumer_group_service_pb2 as group_pb2
from packetbus.v1 import consumer_group_service_pb2_grpc as group_pb2_grpc
from packetbus.v1 import context_service_pb2 as context_pb2
from packetbus.v1 import context_service_pb2_grpc as context_pb2_grpc
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus.v1 import task_service_pb2 as task_pb2
from packetbus.v1 import task_service_pb2_grpc as task_pb2_grpc
from packetbus_server import ServerConfig, _keys, start
from tests._polling import until
from tests.conftest import free_port, new_packet, serve_process, unique

NOTICE = 1.5
# Far longer than the test may take: a stream that held the process for the
# grace period would fail it.
GRACE = 60

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def _serve(port: int, redis_url: str, data_dir: Path) -> subprocess.Popen[str]:
    return serve_process(
        port, redis_url, data_dir, "--grace", str(GRACE), "--drain-notice", str(NOTICE)
    )


async def _check(target: str) -> int | grpc.StatusCode:
    """Health.Check on a fresh connection: the status, or the call's error code."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=False
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return int(reply.status)


async def test_sigterm_says_not_serving_first_then_ends_streams_with_unavailable_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    replica = await asyncio.to_thread(_serve, port, redis_url, tmp_path / "data")
    try:
        async with (
            grpc.aio.insecure_channel(target) as watch_channel,
            grpc.aio.insecure_channel(
                target, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as stream_channel,
        ):
            watch = health_pb2_grpc.HealthStub(watch_channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING
            topic = unique("drain")
            subscription = packet_service_pb2_grpc.PacketServiceStub(stream_channel).Subscribe(
                packet_service_pb2.SubscribeRequest(
                    topic=topic, start_position=packet_service_pb2.START_POSITION_EARLIEST
                )
            )
            # The subscription is open (then waits for more) once it has this packet.
            packet = new_packet(topic)
            async with await packetbus.Client.connect(target) as sender:
                await sender.dispatch_batch([packet])
            async with asyncio.timeout(10):
                first = await subscription.read()
            assert [p.packet.tracking_id for p in first.packets] == [packet.tracking_id]

            replica.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()

            # Health watchers hear NOT_SERVING at once ...
            async with asyncio.timeout(5):
                assert (await watch.read()).status == NOT_SERVING
            # ... and new checkers get it too while the listener is open.
            assert await _check(target) == NOT_SERVING
            # The open subscription ends with UNAVAILABLE after the notice,
            # not after the grace period.
            async with asyncio.timeout(NOTICE + 5):
                code = await subscription.code()
            ended_after = time.monotonic() - sent_at
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "draining" in await subscription.details()
            assert NOTICE * 0.8 <= ended_after < NOTICE + 5, ended_after
            # So does the health watch.
            async with asyncio.timeout(5):
                assert await watch.code() == grpc.StatusCode.UNAVAILABLE
            # Then the listener closes and the process exits, long before the grace.
            async with asyncio.timeout(NOTICE + 10):
                # (A check that reaches the listener as it closes is CANCELLED.)
                while (state := await _check(target)) != grpc.StatusCode.UNAVAILABLE:
                    assert state in (NOT_SERVING, grpc.StatusCode.CANCELLED), state
                    await asyncio.sleep(0.05)
            returncode = await asyncio.wait_for(asyncio.to_thread(replica.wait), NOTICE + 10)
            assert returncode == 0
            assert time.monotonic() - sent_at < GRACE / 2
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait()


async def test_a_subscription_resumes_on_another_replica_when_its_server_drains(
    redis_url: str, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    replicas = [await asyncio.to_thread(_serve, p, redis_url, tmp_path / "data") for p in ports]
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    topic = unique("resume")
    try:
        async with (
            await packetbus.Client.connect(target, timeout=10) as client,
            await packetbus.Client.connect(f"127.0.0.1:{ports[1]}", timeout=10) as sender,
        ):
            before, after = new_packet(topic), new_packet(topic)
            await sender.dispatch_batch([before])
            scope = unique("scope")
            got: list[str] = []
            changed: list[str] = []
            watch = client.watch_context(scope, after_cursor="0-0")
            queue = unique("queue")
            tasks = client.task_queue(queue).watch(after_cursor="0-0")
            task_events: list[tuple[str, int]] = []
            async with client.subscribe(topic, start=packetbus.EARLIEST) as subscription:
                await sender.put_context(scope, "a", b"1", author="planner")
                await sender.task_queue(queue).post(packetbus.Task(id="t-1"), origin="planner")
                async with asyncio.timeout(10):
                    got.append((await anext(subscription)).packet.tracking_id)
                    changed += [c.name for c in (await anext(watch)).changes]
                    event = await anext(tasks)
                    task_events.append((event.task_id, event.new_status))
                # The client's connection goes to the first replica (pick_first).
                replicas[0].send_signal(signal.SIGTERM)
                drained_at = time.monotonic()
                await asyncio.wait_for(asyncio.to_thread(replicas[0].wait), NOTICE + 10)
                await sender.dispatch_batch([after])
                await sender.put_context(scope, "b", b"2", author="planner")
                await sender.task_queue(queue).post(packetbus.Task(id="t-2"), origin="planner")
                assert await sender.task_queue(queue).claim("w-1") is not None
                async with asyncio.timeout(NOTICE + 15):
                    got.append((await anext(subscription)).packet.tracking_id)
                    changed += [c.name for c in (await anext(watch)).changes]
                    for _ in range(2):
                        event = await anext(tasks)
                        task_events.append((event.task_id, event.new_status))
                resumed_after = time.monotonic() - drained_at
                await watch.aclose()  # type: ignore[attr-defined]
                await tasks.aclose()  # type: ignore[attr-defined]
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.send_signal(signal.SIGTERM)
                await asyncio.to_thread(replica.wait, 30)
    # Resumed after its cursor: no loss, no duplicate.
    assert got == [before.tracking_id, after.tracking_id]
    # So does a context watch, after the last change it saw, and a task watch.
    assert changed == ["a", "b"]
    assert task_events == [
        ("t-1", task_pb2.TASK_STATUS_QUEUED),
        ("t-2", task_pb2.TASK_STATUS_QUEUED),
        ("t-1", task_pb2.TASK_STATUS_CLAIMED),
    ]
    assert resumed_after < GRACE / 2


async def test_a_transfer_in_flight_finishes_within_the_grace_while_streams_end_at_once(
    redis_url: str, raw_redis: redis_asyncio.Redis, tmp_path: Path
) -> None:
    """A client-streaming PutContext that has sent part of its bytes when SIGTERM
    arrives is let finish (it has an end of its own; transfers, like unary calls, get
    the grace period), while an open subscription ends UNAVAILABLE after the notice.
    The process exits once the transfer is done, long before the grace."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    replica = await asyncio.to_thread(_serve, port, redis_url, tmp_path / "data")
    scope, upload_id = unique("scope"), str(uuid.uuid4())
    first, rest = os.urandom(64 * 1024), os.urandom(64 * 1024)
    finish = asyncio.Event()

    async def upload() -> AsyncIterator[context_pb2.PutContextRequest]:
        yield context_pb2.PutContextRequest(
            header=context_pb2.PutContextHeader(
                scope=scope,
                name="doc",
                size=len(first) + len(rest),
                sha256=hashlib.sha256(first + rest).digest(),
                author="planner",
                upload_id=upload_id,
            )
        )
        yield context_pb2.PutContextRequest(chunk=first)
        await finish.wait()
        yield context_pb2.PutContextRequest(chunk=rest)

    raw = raw_redis  # a cluster client on the cluster backend
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            topic = unique("drain")
            subscription = packet_service_pb2_grpc.PacketServiceStub(channel).Subscribe(
                packet_service_pb2.SubscribeRequest(
                    topic=topic, start_position=packet_service_pb2.START_POSITION_EARLIEST
                )
            )
            async with await packetbus.Client.connect(target) as sender:
                await sender.dispatch_batch([new_packet(topic)])
            async with asyncio.timeout(10):
                assert (await subscription.read()).packets
            put = asyncio.ensure_future(
                context_pb2_grpc.ContextServiceStub(channel).PutContext(upload())
            )
            # The server is inside the call once it has staged the first chunk (under
            # a body id of the call's own).
            bodies = _keys.context_prefix(scope) + "body:*"
            async with asyncio.timeout(10):
                while not [key async for key in raw.scan_iter(match=bodies)]:
                    assert not put.done(), put
                    await asyncio.sleep(0.02)
            replica.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            async with asyncio.timeout(NOTICE + 5):
                code = await subscription.code()
            streams_ended = time.monotonic() - sent_at
            assert code == grpc.StatusCode.UNAVAILABLE
            assert NOTICE * 0.8 <= streams_ended < NOTICE + 5, streams_ended
            # The transfer is still open, waiting for its last bytes ...
            assert not put.done()
            finish.set()
            # ... and commits when they come, well within the grace.
            async with asyncio.timeout(10):
                response = await put
            assert (response.created, response.document.version) == (True, 1)
            assert response.document.size == len(first) + len(rest)
        returncode = await asyncio.wait_for(asyncio.to_thread(replica.wait), 15)
        assert returncode == 0
        assert time.monotonic() - sent_at < GRACE / 2
        # The committed version's body (its key named by the document's field b).
        body_id = await raw.hget(_keys.context_doc(scope, "doc"), "b")
        assert isinstance(body_id, bytes)
        assert await raw.get(_keys.context_body(scope, body_id.decode())) == first + rest
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait()


async def _end_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """How a streaming call ended, once every message it carried is read (its
    status comes after them)."""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError:
        pass
    return await call.code(), await call.details()


async def test_every_kind_of_open_stream_ends_unavailable_when_the_server_drains(
    redis_url: str,
) -> None:
    """In-process: Subscribe, Pull, the three Watch streams and Health.Watch, all
    idle, end with UNAVAILABLE right after the notice, while the grace is long."""
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url))
    target = f"127.0.0.1:{srv.port}"
    topic = unique("every")
    stopping: asyncio.Task[None] | None = None
    # Ends the Pull request stream when the test does: left waiting, grpc's task that
    # reads it would be destroyed pending, and the generator closed while running.
    finished = asyncio.Event()
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            async with await packetbus.Client.connect(target) as client:
                await client.create_consumer_group(topic, "g")

            async def pull_requests() -> AsyncIterator[group_pb2.PullRequest]:
                yield group_pb2.PullRequest(
                    subscription=group_pb2.PullSubscription(topic=topic, group="g", consumer="c")
                )
                await finished.wait()

            calls: dict[str, Any] = {
                "Subscribe": packet_service_pb2_grpc.PacketServiceStub(channel).Subscribe(
                    packet_service_pb2.SubscribeRequest(topic=topic)
                ),
                "Pull": group_pb2_grpc.ConsumerGroupServiceStub(channel).Pull(pull_requests()),
                "WatchTasks": task_pb2_grpc.TaskServiceStub(channel).WatchTasks(
                    task_pb2.WatchTasksRequest(queue=unique("q"))
                ),
                "WatchAgents": agent_pb2_grpc.AgentServiceStub(channel).WatchAgents(
                    agent_pb2.WatchAgentsRequest()
                ),
                "WatchContext": context_pb2_grpc.ContextServiceStub(channel).WatchContext(
                    context_pb2.WatchContextRequest(scope=unique("s"))
                ),
                "Health.Watch": health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest()
                ),
            }
            streams = srv.streams
            assert streams is not None
            await until(lambda: streams.open_streams() == len(calls))
            stopping = asyncio.create_task(srv.stop(grace=GRACE, notice=0.2))
            started = time.monotonic()
            async with asyncio.timeout(10):
                ends = {name: await _end_of(call) for name, call in calls.items()}
            codes = {name: code for name, (code, _) in ends.items()}
            details = {name: text for name, (_, text) in ends.items()}
            assert codes == dict.fromkeys(calls, grpc.StatusCode.UNAVAILABLE), details
            assert all("draining" in d for d in details.values()), details
            # Told by an ErrorInfo too, for clients that do not read messages.
            reasons = {}
            for name, call in calls.items():
                info = error_info(status_in(await call.trailing_metadata()))
                reasons[name] = None if info is None else (info.reason, info.domain)
            assert reasons == dict.fromkeys(calls, ("DRAINING", "packetbus"))
            assert time.monotonic() - started < 5
            async with asyncio.timeout(10):
                await stopping
        finally:
            finished.set()
            if stopping is None:
                await srv.stop(grace=0, notice=0)
