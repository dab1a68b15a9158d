"""Task watches resume: each event carries a cursor, a watch after a cursor gets exactly
the events after it, one whose events are gone says so, and a bad cursor is refused
with its field path. (Surviving a server drain: tests/test_drain.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import task_service_pb2 as pb
from packetbus.v1 import task_service_pb2_grpc
from packetbus_server import _keys
from tests.conftest import unique

Seen = tuple[str, str, int, int]


def _seen(event: pb.TaskEvent) -> Seen:
    return event.cursor, event.task_id, event.old_status, event.new_status


def _key(cursor: str) -> tuple[int, int]:
    millis, sequence = cursor.split("-")
    return int(millis), int(sequence)


async def _take(events: AsyncIterator[pb.TaskEvent], count: int) -> list[Seen]:
    got: list[Seen] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            got.append(_seen(await anext(events)))
    return got


async def _history(queue: packetbus.TaskQueue) -> list[Seen]:
    """Post t-0..t-4, claim and complete t-0: seven events in all."""
    for i in range(5):
        await queue.post(packetbus.Task(id=f"t-{i}"), origin="planner")
    claimed = await queue.claim("w-1")
    assert claimed is not None
    assert claimed.task_id == "t-0"
    await claimed.complete()
    events = queue.watch(after_cursor="0-0")
    try:
        return await _take(events, 7)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def test_a_watch_after_a_cursor_gets_exactly_the_events_after_it(
    client: packetbus.Client,
) -> None:
    queue = client.task_queue(unique("q"))
    history = await _history(queue)
    assert [(t, new) for _, t, _, new in history] == [
        *((f"t-{i}", pb.TASK_STATUS_QUEUED) for i in range(5)),
        ("t-0", pb.TASK_STATUS_CLAIMED),
        ("t-0", pb.TASK_STATUS_COMPLETED),
    ]
    cursors = [c for c, *_ in history]
    assert cursors == sorted(cursors, key=_key)
    assert len(set(cursors)) == 7
    for k in (0, 3, 5, 6):
        events = queue.watch(after_cursor=cursors[k])
        try:
            resumed = await _take(events, len(history) - k - 1)
            # Nothing more in between: the next event is one that happens now.
            await queue.post(packetbus.Task(id=f"marker-{k}"), origin="planner")
            [(cursor, marker, _, _)] = await _take(events, 1)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        assert resumed == history[k + 1 :]
        assert marker == f"marker-{k}"
        assert _key(cursor) > _key(cursors[-1])
        history.append((cursor, marker, pb.TASK_STATUS_UNSPECIFIED, pb.TASK_STATUS_QUEUED))
        cursors.append(cursor)


async def test_a_watch_after_a_cursor_whose_events_were_removed_says_so(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    queue = client.task_queue(unique("q"))
    history = await _history(queue)
    cursors = [c for c, *_ in history]
    # Retention removes the first three events.
    trimmed = await raw_redis.xtrim(
        _keys.task_events(queue.name), minid=cursors[3], approximate=False
    )
    assert trimmed == 3
    for older in (cursors[0], cursors[1], "0-0"):
        with pytest.raises(packetbus.PacketbusError) as lost:
            await anext(queue.watch(after_cursor=older))
        assert lost.value.code == grpc.StatusCode.DATA_LOSS
    # A client in another language: a first response that says so, then what is kept.
    async with grpc.aio.insecure_channel(target) as channel:
        call = task_service_pb2_grpc.TaskServiceStub(channel).WatchTasks(
            pb.WatchTasksRequest(queue=queue.name, after_cursor=cursors[0])
        )
        async with asyncio.timeout(10):
            first, second = await call.read(), await call.read()
        call.cancel()
    assert first == pb.WatchTasksResponse(events_lost=True)
    assert [_seen(e) for e in second.events] == history[3:]
    # After a cursor still kept: no loss, exactly what follows.
    events = queue.watch(after_cursor=cursors[3])
    try:
        assert await _take(events, 3) == history[4:]
    finally:
        await events.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "cursor",
    [
        "x",
        "1",
        "1-",
        "-1",
        "1-2-3",
        " 1-0",
        "0-\u0660",  # an Arabic-Indic digit
        "18446744073709551616-0",  # 2^64
        "0-18446744073709551616",
        "18446744073709551615-18446744073709551615",  # the largest id: nothing after it
    ],
)
async def test_a_bad_cursor_is_invalid_argument_naming_after_cursor(
    client: packetbus.Client, cursor: str
) -> None:
    with pytest.raises(packetbus.PacketbusError) as bad:
        await anext(client.task_queue(unique("q")).watch(after_cursor=cursor))
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.value.field_violations] == ["after_cursor"]


async def test_a_bad_cursor_and_a_bad_queue_are_both_named(client: packetbus.Client) -> None:
    with pytest.raises(packetbus.PacketbusError) as bad:
        await anext(client.task_queue("").watch(after_cursor="nope"))
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in bad.value.field_violations) == ["after_cursor", "queue"]


async def test_the_cli_watch_resumes_after_a_cursor(
    client: packetbus.Client, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from packetbus._cli import main

    queue = client.task_queue(unique("q"))
    history = await _history(queue)
    watch = ["--target", target, "tasks", "watch", queue.name, "--count", "2"]
    assert await asyncio.to_thread(main, [*watch, "--after", history[4][0]]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["cursor"], p["taskId"]) for p in printed] == [(c, t) for c, t, *_ in history[5:]]
    assert await asyncio.to_thread(main, [*watch, "--after", "0-x"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "INVALID_ARGUMENT" in error[0]
    assert "after_cursor" in error[0]
