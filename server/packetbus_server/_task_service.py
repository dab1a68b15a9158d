"""TaskService: priority task queues with leases, fencing tokens, results and the carcel."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import timestamp_pb2

from packetbus import _custody, _wire
from packetbus.v1 import packet_service_pb2, task_service_pb2_grpc
from packetbus.v1 import task_service_pb2 as pb

from . import _status
from ._access import binding
from ._admission import admit
from ._clock import StoreClock
from ._custodian import Custodian
from ._fields import is_stream_id
from ._hop_store import HopStore
from ._key_store import KeyStore
from ._limits import Limits
from ._observability import counting, tracing
from ._packet_service import caller_gone, storage_errors, stored_packet, stream_started
from ._packing import ITEM_OVERHEAD, message_size, packs
from ._page_tokens import seal, unseal
from ._paging import offset_request, page_by_offset
from ._placed_packets import TASK, Place, PlacedPackets
from ._task_settling import TaskSettler, one_line
from ._task_store import TaskRecord, TaskStore
from ._validation import (
    Violation,
    validate_agent_id,
    validate_id,
    validate_topic,
)

if TYPE_CHECKING:
    from ._policy_service import Governor

log = logging.getLogger("packetbus.server.tasks")

_STATUS = {
    "queued": pb.TASK_STATUS_QUEUED,
    "claimed": pb.TASK_STATUS_CLAIMED,
    "completed": pb.TASK_STATUS_COMPLETED,
    "carceled": pb.TASK_STATUS_CARCELED,
}
_MAX_PRIORITY = 1000
_LIST_LIMIT = 10_000
# Tasks read from the store at a time while listing.
_TASK_CHUNK = 100
# An idle watcher reads again this often (a read shared with the other watchers of
# the same log, see _waits); cancellation and drain end it sooner (_streams).
_WATCH_BLOCK_MS = 5000
# Queues whose last count of run-out leases by a watch is remembered (see
# TaskService._expire_quietly); more are pruned to those counted within a block.
_WATCH_EXPIRIES_KEPT = 4096
_DEFAULT_ATTEMPTS = 3
_DEFAULT_LEASE_S = 30
_MAX_LEASE_S = 600
# A claim's request id: a UUID, or any short token of the same characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def task_state(queue: str, record: TaskRecord, now_ms: int) -> pb.TaskState:
    status = _STATUS.get(record.text("st"), pb.TASK_STATUS_UNSPECIFIED)
    lease_end = record.number("lu")
    failures = record.number("fails")
    if status == pb.TASK_STATUS_CLAIMED and lease_end <= now_ms:
        # Its lease ran out, a failed attempt the store has not counted yet (the
        # next claim, settlement or read of the queue does): shown as it will be.
        failures += 1
        last = failures >= record.number("max")
        status = pb.TASK_STATUS_CARCELED if last else pb.TASK_STATUS_QUEUED
    state = pb.TaskState(
        queue=queue,
        task_id=record.task_id,
        status=status,
        priority=record.number("pr"),
        required_capability=record.text("cap"),
        claims=record.number("claims"),
        failures=failures,
        max_attempts=record.number("max"),
        fencing_token=record.number("f"),
        posted_at=_ts(record.number("pa")),
        updated_at=_ts(record.number("ua")),
    )
    if status == pb.TASK_STATUS_CLAIMED:
        state.worker = record.text("w")
        state.lease_expires_at.CopyFrom(_ts(lease_end))
    # A task is not on a topic's log: its receipt has no cursor.
    state.packet.CopyFrom(
        stored_packet(
            queue,
            "",
            record.number("x"),
            _wire.with_chain(record.payload, record.hops),
            record.number("n"),
            stored_at_ms=record.number("pa"),
        )
    )
    return state


class TaskService(task_service_pb2_grpc.TaskServiceServicer):
    def __init__(
        self,
        store: TaskStore,
        hops: HopStore,
        key_store: KeyStore,
        custodian: Custodian,
        limits: Limits,
        *,
        before_claim: Callable[[str, str], Awaitable[None]] | None = None,
        clock: StoreClock,
        governor: Governor | None = None,
        placed: PlacedPackets | None = None,
    ) -> None:
        self._store = store
        # Notes where each task packet lives, so GetPacket and VerifyCustody find it.
        self._placed = placed
        if placed is not None:
            placed.serve(TASK, self._placed_packet)
        # The policy in force judges each posted task (_governance).
        self._governor = governor
        # The store's clock: leases are written by it (scripts), so judged by it.
        self._clock = clock
        self._hops = hops
        self._key_store = key_store
        self._custodian = custodian
        self._limits = limits
        # (worker, queue) -> None, awaited before each claim: the agent registry
        # notes where a worker claims, to release its tasks when it goes stale.
        self._before_claim = before_claim
        self._settler = TaskSettler(store, hops, custodian, limits, clock=clock)
        # queue -> when (monotonic s) an idle watch last counted its run-out leases:
        # one count per queue per block for all of this replica's watchers, not one
        # each (a hundred watchers of a queue would make a hundred writes a block).
        self._watch_expiries: dict[str, float] = {}

    def _check_queue(self, violations: list[Violation], queue: str) -> None:
        validate_topic(violations, "queue", queue, self._limits.max_topic_length)

    async def _check_task_ref(
        self, context: grpc.aio.ServicerContext, queue: str, task_id: str
    ) -> None:
        violations: list[Violation] = []
        self._check_queue(violations, queue)
        validate_id(violations, "task_id", task_id)
        if violations:
            await _status.abort_invalid(context, "invalid task", violations)

    # -- posting and claiming --------------------------------------------------------------

    async def PostTask(
        self, request: pb.PostTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.PostTaskResponse:
        packet = request.packet
        violations: list[Violation] = []
        if packet.WhichOneof("contents") != "task":
            violations.append(Violation("packet.task", "REQUIRED", "a task's packet holds a Task"))
        task = packet.task
        if not task.id:  # its format is the packet's to check
            violations.append(Violation("packet.task.id", "REQUIRED", "a task needs an id"))
        if not -_MAX_PRIORITY <= task.priority <= _MAX_PRIORITY:
            violations.append(
                Violation(
                    "packet.task.priority",
                    "RANGE",
                    f"must be -{_MAX_PRIORITY}..{_MAX_PRIORITY}; got {task.priority}",
                )
            )
        attempts = request.max_attempts or _DEFAULT_ATTEMPTS
        if not 1 <= attempts <= 100:
            violations.append(Violation("max_attempts", "RANGE", f"must be 1..100; got {attempts}"))
        write, now_ns = await admit(
            context,
            packet,
            violations,
            what="task",
            limits=self._limits,
            key_store=self._key_store,
            custodian=self._custodian,
            clock=self._clock,
            governor=self._governor,
            request_fields=(f"max_attempts {request.max_attempts}",),
        )
        queue = packet.topic
        place = Place(TASK, queue, queue, task.id)
        async with storage_errors(context):
            if self._placed is not None:
                await self._placed.refuse_if_taken(packet.tracking_id, place, context)
            posted = await self._store.post(
                queue,
                task.id,
                write,
                priority=task.priority,
                capability=task.required_capability,
                max_attempts=attempts,
                expires_at_ms=now_ns // 1_000_000 + write.ttl_ms,
            )
            counting.posted(counting.TASK, posted, len(write.payload))
            if posted == "conflict":
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"task {task.id!r} of queue {queue!r} is another packet's",
                )
            if self._placed is not None:
                await self._placed.note(
                    packet.tracking_id, place, now_ns // 1_000_000 + write.ttl_ms
                )
            [record] = await self._store.get_many(queue, [task.id])
        if record is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {task.id!r} expired meanwhile")
            raise AssertionError("context.abort always raises")
        return pb.PostTaskResponse(
            task=task_state(queue, record, now_ns // 1_000_000), created=posted == "new"
        )

    async def ClaimTask(
        self, request: pb.ClaimTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimTaskResponse:
        violations: list[Violation] = []
        self._check_queue(violations, request.queue)
        validate_agent_id(violations, "worker", request.worker)
        for i, capability in enumerate(request.capabilities):
            validate_id(violations, f"capabilities[{i}]", capability)
        lease_s = request.lease_seconds or _DEFAULT_LEASE_S
        if not 1 <= lease_s <= _MAX_LEASE_S:
            violations.append(
                Violation("lease_seconds", "RANGE", f"must be 1..{_MAX_LEASE_S}; got {lease_s}")
            )
        if request.request_id and not _REQUEST_ID.match(request.request_id):
            violations.append(
                Violation(
                    "request_id",
                    "REQUEST_ID_FORMAT",
                    'must be 1..128 letters, digits or "._:-" (e.g. a UUID)',
                )
            )
        if violations:
            await _status.abort_invalid(context, "invalid claim", violations)
        # The worker names the caller: the agent registry releases its claims when
        # that agent goes stale, so no one claims under another agent's name.
        await binding.require_acting(context, request.worker, "worker")
        async with storage_errors(context):
            if self._before_claim is not None:
                await self._before_claim(request.worker, request.queue)
            claimed = await self._store.claim(
                request.queue,
                request.worker,
                list(request.capabilities),
                lease_s * 1000,
                request_id=request.request_id,
            )
            if isinstance(claimed, str):
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"request_id {request.request_id!r} names a claim of worker {claimed!r}; "
                    "use a new request id per claim",
                )
                raise AssertionError("context.abort always raises")
            await self._settler.carceled_hops(request.queue, claimed.carceled)
            record = claimed.record
            if record is None:
                return pb.ClaimTaskResponse()
            # A claim made again has its hop already, unless the call that made it
            # lost its reply before appending it.
            record = await self._settler.record_hop(
                request.queue,
                record,
                _custody.CLAIMED,
                counterpart=f"queue:{request.queue} worker:{request.worker}",
                once=claimed.again,
            )
        state = task_state(request.queue, record, self._clock.now_ms())
        self._custodian.vouch(state.packet)
        if tracing.active is not None:
            tracing.active.batch(
                context, ("receive", "claim"), request.queue, [tracing.carried(state.packet.packet)]
            )
        return pb.ClaimTaskResponse(task=state)

    async def release_held(self, queue: str, worker: str, reason: str) -> int:
        """See TaskSettler.release_held (the agent reaper's call)."""
        return await self._settler.release_held(queue, worker, reason)

    async def HeartbeatTask(
        self, request: pb.HeartbeatTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatTaskResponse:
        if request.lease_seconds > _MAX_LEASE_S:
            await _status.abort_invalid(
                context,
                "invalid heartbeat",
                [Violation("lease_seconds", "RANGE", f"must be at most {_MAX_LEASE_S}")],
            )
        _, value = await self._settler.settle(
            context,
            request.queue,
            request.task_id,
            request.fencing_token,
            "heartbeat",
            argument=request.lease_seconds * 1000,
        )
        return pb.HeartbeatTaskResponse(lease_expires_at=_ts(int(value)))

    async def ReleaseTask(
        self, request: pb.ReleaseTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseTaskResponse:
        await self._settler.settle(
            context,
            request.queue,
            request.task_id,
            request.fencing_token,
            "release",
            argument=one_line(request.reason),
        )
        return pb.ReleaseTaskResponse()

    async def CompleteTask(
        self, request: pb.CompleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteTaskResponse:
        result = pb.TaskResult(
            fencing_token=request.fencing_token,
            completed=True,
            result=request.result,
            summary=request.summary,
            at=_ts(self._clock.now_ms()),
        )
        await self._settler.settle(
            context,
            request.queue,
            request.task_id,
            request.fencing_token,
            "complete",
            result=result,
        )
        if tracing.active is not None:
            # No packet at hand: parented by the worker's call (which carries on
            # the task's trace when the worker continued it, README "Traces").
            tracing.active.batch(
                context, ("settle", "complete"), request.queue, [tracing.Carried(request.task_id)]
            )
        return pb.CompleteTaskResponse()

    async def FailTask(
        self, request: pb.FailTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.FailTaskResponse:
        result = pb.TaskResult(
            fencing_token=request.fencing_token, error=request.error, at=_ts(self._clock.now_ms())
        )
        kind, value = await self._settler.settle(
            context,
            request.queue,
            request.task_id,
            request.fencing_token,
            "fail",
            argument=one_line(request.error),
            result=result,
        )
        if kind == "carcel":
            return pb.FailTaskResponse(status=pb.TASK_STATUS_CARCELED, carcel_id=value)
        return pb.FailTaskResponse(status=pb.TASK_STATUS_QUEUED)

    # -- reading ---------------------------------------------------------------------------

    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskResponse:
        await self._check_task_ref(context, request.queue, request.task_id)
        async with storage_errors(context):
            await self._settler.expire_before_read(request.queue)
            [record] = await self._store.get_many(request.queue, [request.task_id])
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no task {request.task_id!r} in queue {request.queue!r} (never posted, "
                "or expired)",
            )
            raise AssertionError("context.abort always raises")
        state = task_state(request.queue, record, self._clock.now_ms())
        self._custodian.vouch(state.packet)
        return pb.GetTaskResponse(task=state)

    async def _placed_packet(self, place: Place) -> packet_service_pb2.StoredPacket | None:
        """The task packet at `place` with its hops so far, as GetTask shows it."""
        await self._settler.expire_before_read(place.scope)
        [record] = await self._store.get_many(place.scope, [place.item])
        if record is None:
            return None
        return task_state(place.scope, record, self._clock.now_ms()).packet

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        violations: list[Violation] = []
        self._check_queue(violations, request.queue)
        scope = (request.queue, request.status)
        after = _task_token(violations, unseal(violations, "tasks", scope, request.page_token))
        if violations:
            await _status.abort_invalid(context, "invalid listing", violations)
        # A page ends at the reply budget (each task carries its packet), or after
        # _LIST_LIMIT tasks looked at (a rare status can be far apart).
        states: list[pb.TaskState] = []
        budget, total, looked = self._limits.reply_budget_bytes, 0, 0
        async with storage_errors(context):
            await self._settler.expire_before_read(request.queue)
            while looked < _LIST_LIMIT:
                rows = await self._store.task_page(request.queue, after, _TASK_CHUNK)
                if not rows:
                    return pb.ListTasksResponse(tasks=states)
                looked += len(rows)
                records = await self._store.get_many(request.queue, [i for _, i in rows])
                now = self._clock.now_ms()
                for row, record in zip(rows, records, strict=True):
                    state = task_state(request.queue, record, now) if record else None
                    if state is not None and request.status in (0, state.status):
                        total += message_size(state) + ITEM_OVERHEAD
                        if states and total > budget:
                            return pb.ListTasksResponse(
                                tasks=states,
                                next_page_token=seal("tasks", scope, _task_token_of(after)),
                            )
                        states.append(state)
                    after = row
        return pb.ListTasksResponse(
            tasks=states, next_page_token=seal("tasks", scope, _task_token_of(after))
        )

    async def ListTaskResults(
        self, request: pb.ListTaskResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaskResultsResponse:
        violations: list[Violation] = []
        scope = (request.queue, request.task_id)
        start = offset_request(
            violations, unseal(violations, "task_results", scope, request.page_token)
        )
        if violations:
            await _status.abort_invalid(context, "invalid listing", violations)
        await self._check_task_ref(context, request.queue, request.task_id)

        async def read(offset: int, count: int) -> tuple[list[tuple[int, bytes]], int]:
            raw = await self._store.results(request.queue, request.task_id, offset, count)
            return list(enumerate(raw, offset)), offset + len(raw)

        async with storage_errors(context):
            found, token = await page_by_offset(
                read, start, len, self._limits.reply_budget_bytes, chunk=20
            )
        return pb.ListTaskResultsResponse(
            results=[pb.TaskResult.FromString(r) for r in found],
            next_page_token=seal("task_results", scope, token),
        )

    async def WatchTasks(
        self, request: pb.WatchTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTasksResponse]:
        violations: list[Violation] = []
        self._check_queue(violations, request.queue)
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
            await stream_started(context)
            if lost:
                yield pb.WatchTasksResponse(events_lost=True)
            entries: list[Any] = []
            while not caller_gone(context):
                if not entries:
                    # A lease that ran out in a queue nobody claims from or reads is
                    # an event too: counted at the watch's start and when it idles.
                    await self._expire_quietly(request.queue)
                cursor, entries = await self._store.events(request.queue, cursor, _WATCH_BLOCK_MS)
                events = [_event(e) for e in entries]
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


def _event(entry: tuple[bytes, dict[bytes, bytes]]) -> pb.TaskEvent:
    entry_id, f = entry
    ms = int(entry_id.split(b"-")[0])
    return pb.TaskEvent(
        task_id=f[b"id"].decode(),
        old_status=_STATUS.get(f[b"o"].decode(), pb.TASK_STATUS_UNSPECIFIED),
        new_status=_STATUS.get(f[b"n"].decode(), pb.TASK_STATUS_UNSPECIFIED),
        actor=f[b"a"].decode(),
        fencing_token=int(f[b"f"]),
        at=_ts(ms),
        reason=f[b"r"].decode(),
        cursor=entry_id.decode(),
    )


# "<index score>:<task id>": scores are exact doubles (below 2^53, 16 digits; see
# lib/order.lua), ASCII digits only.
_TASK_TOKEN = re.compile(r"([0-9]{1,16}):(.+)\Z", re.DOTALL)


def _task_token(violations: list[Violation], token: str) -> tuple[int, str] | None:
    """The last task of the previous page, from its token "<index score>:<task id>"."""
    if not token:
        return None
    match = _TASK_TOKEN.match(token)
    if match is None:
        violations.append(
            Violation("page_token", "PAGE_TOKEN", "is not a token from a previous response")
        )
        return None
    return int(match[1]), match[2]


def _task_token_of(last: tuple[int, str] | None) -> str:
    """The token of a page that ends after task `last` (index score, task id)."""
    return f"{last[0]}:{last[1]}" if last is not None else ""
