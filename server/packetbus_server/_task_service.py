"""TaskService: priority task queues with leases, fencing tokens, results and the carcel.

Where each step lives: request checks in _task_requests, the packet admitted
(validated, governed, signed) by _admission, writes in _task_store, settlements in
_task_settling, replies in _task_states, listings in _task_listing, the watch in
_task_watch."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING

import grpc

from packetbus import _custody
from packetbus.v1 import packet_service_pb2, task_service_pb2_grpc
from packetbus.v1 import task_service_pb2 as pb

from . import _status
from ._access import binding
from ._admission import admit
from ._clock import StoreClock
from ._custodian import Custodian
from ._hop_store import HopStore
from ._key_store import KeyStore
from ._limits import Limits
from ._observability import counting, tracing
from ._placed_export import Page
from ._placed_packets import TASK, Place, PlacedPackets
from ._storage_errors import storage_errors
from ._task_export import queue_pages
from ._task_listing import TaskListing
from ._task_queues import TaskQueues
from ._task_requests import MAX_LEASE_S, check_task_ref, claim_violations, post_violations
from ._task_settling import TaskSettler, one_line
from ._task_states import task_state
from ._task_store import TaskStore
from ._task_watch import TaskWatch
from ._timestamps import timestamp
from ._validation import Violation

if TYPE_CHECKING:
    from ._policy_service import Governor

log = logging.getLogger("packetbus.server.tasks")


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
        self._listing = TaskListing(store, self._settler, limits, clock=clock)
        self._watch = TaskWatch(store, self._settler, limits)
        self._queues = TaskQueues(store, limits, clock=clock)

    # -- posting and claiming --------------------------------------------------------------

    async def PostTask(
        self, request: pb.PostTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.PostTaskResponse:
        packet = request.packet
        task = packet.task
        violations, attempts = post_violations(request)
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
                await _status.abort_with_reason(
                    context,
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"task {task.id!r} of queue {queue!r} is another packet's",
                    "TASK_ID_IN_USE",
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
        violations, lease_s = claim_violations(request, self._limits)
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
                await _status.abort_with_reason(
                    context,
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"request_id {request.request_id!r} names a claim of worker {claimed!r}; "
                    "use a new request id per claim",
                    "REQUEST_ID_IN_USE",
                )
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
        if request.lease_seconds > MAX_LEASE_S:
            await _status.abort_invalid(
                context,
                "invalid heartbeat",
                [Violation("lease_seconds", "RANGE", f"must be at most {MAX_LEASE_S}")],
            )
        _, value = await self._settler.settle(
            context,
            request.queue,
            request.task_id,
            request.fencing_token,
            "heartbeat",
            argument=request.lease_seconds * 1000,
        )
        return pb.HeartbeatTaskResponse(lease_expires_at=timestamp(int(value)))

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
            at=timestamp(self._clock.now_ms()),
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
            fencing_token=request.fencing_token,
            error=request.error,
            at=timestamp(self._clock.now_ms()),
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
        await check_task_ref(context, request.queue, request.task_id, self._limits)
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

    def export_pages(self, queue: str, after: str | None) -> AsyncGenerator[Page, None]:
        """ExportPackets of `queue`: its task packets after cursor `after`, as GetTask
        shows them (see _task_export.queue_pages)."""
        return queue_pages(
            self._store,
            queue,
            after,
            before_read=self._settler.expire_before_read,
            packet=lambda record: task_state(queue, record, self._clock.now_ms()).packet,
        )

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        return await self._listing.list_tasks(request, context)

    async def ListTaskResults(
        self, request: pb.ListTaskResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaskResultsResponse:
        return await self._listing.list_results(request, context)

    async def ListTaskQueues(
        self, request: pb.ListTaskQueuesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaskQueuesResponse:
        return await self._queues.list_queues(request, context)

    async def WatchTasks(
        self, request: pb.WatchTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTasksResponse]:
        # An async generator itself (not the watch's iterator returned): _handlers
        # serves generator methods by what they yield; aclosing ends the watch with it.
        async with aclosing(self._watch.watch(request, context)) as responses:
            async for response in responses:
                yield response
