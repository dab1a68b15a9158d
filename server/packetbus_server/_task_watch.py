"""TaskService.WatchTasks: a queue's event log as a stream, and the run-out leases an
idle watch counts (at most once per queue per block on this replica)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import grpc

from packetbus.v1 import task_service_pb2 as pb

from . import _status
from ._fields import is_stream_id
from ._limits import Limits
from ._packing import message_size, packs
from ._storage_errors import storage_errors
from ._stream_ends import caller_gone, stream_started
from ._task_requests import check_queue
from ._task_settling import TaskSettler
from ._task_states import task_event
from ._task_store import TaskStore
from ._validation import Violation

# An idle watcher reads again this often (a read shared with the other watchers of
# the same log, see _waits); cancellation and drain end it sooner (_streams).
_WATCH_BLOCK_MS = 5000
# Queues whose last count of run-out leases by a watch is remembered (see
# TaskWatch._expire_quietly); more are pruned to those counted within a block.
_WATCH_EXPIRIES_KEPT = 4096


class TaskWatch:
    """The WatchTasks body (TaskService.WatchTasks delegates here), and the per-queue
    record of the watches' last lease counts it shares among this replica's watchers."""

    def __init__(self, store: TaskStore, settler: TaskSettler, limits: Limits) -> None:
        self._store = store
        self._settler = settler
        self._limits = limits
        # queue -> when (monotonic s) an idle watch last counted its run-out leases:
        # one count per queue per block for all of this replica's watchers, not one
        # each (a hundred watchers of a queue would make a hundred writes a block).
        self._watch_expiries: dict[str, float] = {}

    async def watch(
        self, request: pb.WatchTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.WatchTasksResponse, None]:
        violations: list[Violation] = []
        check_queue(violations, request.queue, self._limits)
        if request.after_cursor and not is_stream_id(request.after_cursor):
            violations.append(
                Violation("after_cursor", "CURSOR_FORMAT", "must be a cursor: <ms>-<seq>")
            )
        if violations:
            await _status.abort_invalid(context, "invalid watch", violations)
        async with storage_errors(context, retry_hint="watch again after the last cursor seen"):
            lost = False
            if request.after_cursor:
                cursor = request.after_cursor
                lost = await self._store.events_lost_after(request.queue, cursor)
            else:
                cursor = await self._store.last_event(request.queue)
            await stream_started(context, None if request.after_cursor else cursor)
            if lost:
                yield pb.WatchTasksResponse(events_lost=True)
            entries: list[Any] = []
            while not caller_gone(context):
                if not entries:
                    # A lease that ran out in a queue nobody claims from or reads is
                    # an event too: counted at the watch's start and when it idles.
                    await self._expire_quietly(request.queue)
                cursor, entries = await self._store.events(request.queue, cursor, _WATCH_BLOCK_MS)
                events = [task_event(e) for e in entries]
                for part in packs(events, message_size, self._limits.reply_budget_bytes):
                    yield pb.WatchTasksResponse(events=part)

    async def _expire_quietly(self, queue: str) -> None:
        """As TaskSettler.expire_before_read (one try; a store that refuses the write,
        or does not answer, leaves the watch, a read, as it is), at most once per
        queue per watch block on this replica."""
        now = time.monotonic()
        every = _WATCH_BLOCK_MS / 1000
        last = self._watch_expiries.get(queue)
        if last is not None and now - last < every:
            return
        if len(self._watch_expiries) >= _WATCH_EXPIRIES_KEPT:
            # Bounded: forget the queues counted longer than a block ago.
            self._watch_expiries = {
                q: t for q, t in self._watch_expiries.items() if now - t < every
            }
        self._watch_expiries[queue] = now  # before the call: concurrent watchers skip
        await self._settler.expire_before_read(queue)
