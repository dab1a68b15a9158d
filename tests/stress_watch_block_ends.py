"""Stress harness (run by path; not collected with the suite) for the flaky
test_stream_limits idle-watchers test: 100 WatchTasks watchers of one queue (one
shared XREAD) and 20 of their own queue, watch blocks cut to 50/200 ms so blocks end
constantly, a task posted at a random moment against them; every watcher of the
shared queue must see it within 5 s. A miss prints, per watcher that missed it, what
the server yielded to it (a wrapper of WatchTasks tagged by the call's metadata) and
its last store reads, so a miss tells a lost read from a lost delivery.

    PACKETBUS_TEST_BACKENDS=valkey .venv/bin/pytest -q -s tests/stress_watch_block_ends.py

Before stream_started (headers once a watch's start is fixed), a miss every
~20 runs: the watchers that missed had been admitted before the post but fixed
their start (last_event, waiting for one of the 4 store connections) after it.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

import packetbus
from packetbus.v1 import task_service_pb2, task_service_pb2_grpc
from packetbus_server import ServerConfig, _task_service, _task_store, _task_watch, start
from tests._polling import until
from tests.conftest import unique

ROUNDS = 15
_WATCHER: contextvars.ContextVar[str] = contextvars.ContextVar("watcher", default="?")


def _watch(channel: grpc.aio.Channel, queue: str, tag: str) -> Any:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    return stub.WatchTasks(
        task_service_pb2.WatchTasksRequest(queue=queue), metadata=(("watcher", tag),)
    )


def _now() -> float:
    return round(time.monotonic() % 1000, 3)


def _trace(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """(store reads per watcher, responses yielded per watcher), filled as the server runs."""
    reads: dict[str, list[Any]] = {}
    yields: dict[str, list[Any]] = {}
    events = _task_store.TaskStore.events
    watch = _task_service.TaskService.WatchTasks

    async def traced_events(self: Any, queue: str, after: str, block_ms: int) -> Any:
        mine = reads.setdefault(_WATCHER.get(), [])
        mine.append(("in", after, _now()))
        try:
            found = await events(self, queue, after, block_ms)
        except BaseException as exc:
            mine.append(("raised", repr(exc)[:80], _now()))
            raise
        mine.append(("out", found[0], len(found[1]), _now()))
        return found

    async def traced_watch(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        tag = dict(context.invocation_metadata() or ()).get("watcher", "?")
        responses: Any = watch(self, request, context)
        mine = yields.setdefault(tag, [])
        mine.append(("start", request.after_cursor, _now()))
        try:
            while True:
                # Streams.iterate runs each step in a task of its own: tag each step.
                _WATCHER.set(tag)
                try:
                    response = await anext(responses)
                except StopAsyncIteration:
                    return
                mine.append(("yield", len(response.events), _now()))
                yield response
                mine.append(("sent", _now()))
        finally:
            await responses.aclose()

    monkeypatch.setattr(_task_store.TaskStore, "events", traced_events)
    monkeypatch.setattr(_task_service.TaskService, "WatchTasks", traced_watch)
    return reads, yields


@pytest.mark.parametrize("block_ms", [50, 200])
async def test_every_watcher_sees_a_task_posted_at_any_moment_of_its_block(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, block_ms: int
) -> None:
    monkeypatch.setattr(_task_watch, "_WATCH_BLOCK_MS", block_ms)
    reads, yields = _trace(monkeypatch)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            max_redis_connections=4,
            max_streams_per_peer=30,
        )
    )
    streams = srv.streams
    assert streams is not None
    target = f"127.0.0.1:{srv.port}"
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(4)
    ]
    misses: list[tuple[int, int]] = []
    try:
        for round_ in range(ROUNDS):
            reads.clear()
            yields.clear()
            shared = unique("q")
            calls = [_watch(channels[i % 4], shared, f"{round_}-{i}") for i in range(100)]
            calls += [_watch(channels[i % 4], unique("q"), "other") for i in range(20)]
            await until(lambda: streams.open_streams("watch") == 120)
            # Every watch has fixed its start (its headers came): see stream_started.
            await asyncio.gather(*(call.initial_metadata() for call in calls))
            await asyncio.sleep(random.uniform(0, 3 * block_ms / 1000))
            queue = packetbus.Client(channels[0], packetbus.ClientConfig()).task_queue(shared)
            posted = _now()
            await queue.post(packetbus.Task(id="t-1", description="do t-1"), origin="planner")
            seen: set[int] = set()

            async def first(i: int, call: Any, seen: set[int]) -> None:
                reply = await call.read()
                assert reply.events[0].task_id == "t-1"
                seen.add(i)

            try:
                async with asyncio.timeout(5):
                    await asyncio.gather(*(first(i, c, seen) for i, c in enumerate(calls[:100])))
            except TimeoutError:
                misses.append((round_, 100 - len(seen)))
                print(f"round {round_}: posted at {posted}, {len(seen)} of 100 saw it")
                for i in sorted(set(range(100)) - seen):
                    tag = f"{round_}-{i}"
                    mine = reads.get(tag, [])
                    print("  missed", tag, yields.get(tag), len(mine), mine[:3], mine[-2:])
            for call in calls:
                call.cancel()
            await until(lambda: streams.open_streams() == 0)
        assert not misses, misses
    finally:
        for channel in channels:
            await channel.close()
        await srv.stop(grace=0, notice=0)
