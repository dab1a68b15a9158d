"""Task queues from the client side: post, claim (with a lease and a fencing token), settle."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import struct_pb2

from packetbus.v1 import contents_pb2, packet_pb2, speech_act_pb2, task_service_pb2_grpc
from packetbus.v1 import task_service_pb2 as pb

from . import _tracing
from ._calls import Call
from ._errors import PacketbusError
from ._pages import collect
from ._resuming import resuming

T = TypeVar("T")


class ClaimedTask:
    """A task this worker holds: its `state` (with the fencing token) and the calls only
    the holder may make. Each raises FAILED_PRECONDITION once the lease is lost."""

    def __init__(self, queue: TaskQueue, state: pb.TaskState) -> None:
        self._queue = queue
        self.state = state

    @property
    def task_id(self) -> str:
        return self.state.task_id

    @property
    def task(self) -> contents_pb2.Task:
        return self.state.packet.packet.task

    @property
    def fencing_token(self) -> int:
        return self.state.fencing_token

    async def heartbeat(self, *, lease_seconds: int = 0, timeout: float | None = None) -> None:
        """Renew the lease (for `lease_seconds`, default the claim's)."""
        request = pb.HeartbeatTaskRequest(
            queue=self.state.queue,
            task_id=self.task_id,
            fencing_token=self.fencing_token,
            lease_seconds=lease_seconds,
        )
        response = await self._queue._call(self._queue._stub.HeartbeatTask, request, timeout)
        self.state.lease_expires_at.CopyFrom(response.lease_expires_at)

    async def release(self, reason: str = "", *, timeout: float | None = None) -> None:
        """Give the task back to the queue (not a failure)."""
        request = pb.ReleaseTaskRequest(
            queue=self.state.queue,
            task_id=self.task_id,
            fencing_token=self.fencing_token,
            reason=reason,
        )
        await self._queue._call(self._queue._stub.ReleaseTask, request, timeout)

    async def complete(
        self,
        result: Mapping[str, Any] | None = None,
        *,
        summary: str = "",
        timeout: float | None = None,
    ) -> None:
        """Finish the task; `result` (a JSON-like mapping) is kept with it. Repeating
        it with the same result is OK (the server answers the first outcome); with
        another result it is ALREADY_EXISTS."""
        data = struct_pb2.Struct()
        if result:
            data.update(result)
        request = pb.CompleteTaskRequest(
            queue=self.state.queue,
            task_id=self.task_id,
            fencing_token=self.fencing_token,
            result=data,
            summary=summary,
        )
        await self._queue._call(self._queue._stub.CompleteTask, request, timeout)

    async def fail(self, error: str, *, timeout: float | None = None) -> pb.FailTaskResponse:
        """Report a failed attempt: the task is retried, or after its last attempt carceled.
        Repeating it with the same error answers the first outcome again."""
        request = pb.FailTaskRequest(
            queue=self.state.queue,
            task_id=self.task_id,
            fencing_token=self.fencing_token,
            error=error,
        )
        return await self._queue._call(self._queue._stub.FailTask, request, timeout)


class TaskQueue:
    """One queue's tasks. Get it with ``client.task_queue(name)``."""

    def __init__(
        self,
        name: str,
        stub: task_service_pb2_grpc.TaskServiceStub,
        call: Call,
        fill: Callable[[packet_pb2.Packet], packet_pb2.Packet],
    ) -> None:
        self.name = name
        self._stub = stub
        self._call = call
        self._fill = fill

    async def post(
        self,
        task: contents_pb2.Task | packet_pb2.Packet,
        *,
        origin: str = "",
        max_attempts: int = 0,
        timeout: float | None = None,
    ) -> pb.TaskState:
        """Post a task (or a packet with Task contents, whose topic is set to this
        queue). Task.id names it in the queue; posting the same packet again is
        harmless (a retry); another packet with the same id is ALREADY_EXISTS.
        `max_attempts`: failures before the carcel (0: the server's default, 3)."""
        if isinstance(task, packet_pb2.Packet):
            packet = task
        else:
            packet = packet_pb2.Packet(
                origin=origin, speech_act=speech_act_pb2.SPEECH_ACT_REQUEST, task=task
            )
        if origin and not packet.origin:
            packet.origin = origin
        packet.topic = self.name
        if not packet.tracking_id:
            packet.tracking_id = str(uuid.uuid4())  # named by the producer span
        with _tracing.producing(packet):
            self._fill(packet)
            request = pb.PostTaskRequest(packet=packet, max_attempts=max_attempts)
            response = await self._call(self._stub.PostTask, request, timeout)
        return cast(pb.TaskState, response.task)

    async def claim(
        self,
        worker: str,
        *,
        capabilities: Sequence[str] = (),
        lease_seconds: int = 0,
        request_id: str = "",
        timeout: float | None = None,
    ) -> ClaimedTask | None:
        """Claim the best task this worker may take (highest priority, first posted
        first; needing no capability or one of `capabilities`), or None.

        The claim carries a request id (`request_id`, a lowercase UUID, or a new
        one), the same for each retry of this call, so a retry after a lost reply
        returns the task claimed first instead of claiming a second one (which would
        stay leased to nobody who knows it). Claiming again with the same
        `request_id` (after a failure with `outcome_unknown`) does the same while
        that claim holds."""
        request = pb.ClaimTaskRequest(
            queue=self.name,
            worker=worker,
            capabilities=capabilities,
            lease_seconds=lease_seconds,
            request_id=request_id or str(uuid.uuid4()),
        )
        response = await self._call(self._stub.ClaimTask, request, timeout)
        if not response.HasField("task"):
            return None
        return ClaimedTask(self, response.task)

    async def get(self, task_id: str, *, timeout: float | None = None) -> pb.TaskState:
        request = pb.GetTaskRequest(queue=self.name, task_id=task_id)
        response = await self._call(self._stub.GetTask, request, timeout)
        return cast(pb.TaskState, response.task)

    async def tasks(
        self,
        status: pb.TaskStatus.ValueType = pb.TASK_STATUS_UNSPECIFIED,
        *,
        timeout: float | None = None,
    ) -> list[pb.TaskState]:
        """The queue's tasks (with `status`, or all), first posted first, fetched a page
        at a time (`timeout` is per page)."""

        async def page(token: str) -> pb.ListTasksResponse:
            request = pb.ListTasksRequest(queue=self.name, status=status, page_token=token)
            response: pb.ListTasksResponse = await self._call(
                self._stub.ListTasks, request, timeout
            )
            return response

        return await collect(page, lambda r: r.tasks)

    async def tasks_page(
        self,
        status: pb.TaskStatus.ValueType = pb.TASK_STATUS_UNSPECIFIED,
        *,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListTasksResponse:
        """One page of the queue's tasks (with `status`, or all), first posted first:
        its `tasks` and the `next_page_token` to pass back for the next ("" at the
        end). For a caller that pages itself (a console); `tasks` reads them all."""
        request = pb.ListTasksRequest(queue=self.name, status=status, page_token=page_token)
        response: pb.ListTasksResponse = await self._call(self._stub.ListTasks, request, timeout)
        return response

    async def results(self, task_id: str, *, timeout: float | None = None) -> list[pb.TaskResult]:
        """Each attempt its worker reported: failures with their errors, the completion
        with its result (a lease that ran out counts as a failure, with no result)."""

        async def page(token: str) -> pb.ListTaskResultsResponse:
            request = pb.ListTaskResultsRequest(queue=self.name, task_id=task_id, page_token=token)
            response: pb.ListTaskResultsResponse = await self._call(
                self._stub.ListTaskResults, request, timeout
            )
            return response

        return await collect(page, lambda r: r.results)

    async def watch(
        self, *, after_cursor: str = "", started: Callable[[str], None] | None = None
    ) -> AsyncIterator[pb.TaskEvent]:
        """Status changes of this queue's tasks as they happen: from now, or exactly
        the events after `after_cursor` (a TaskEvent.cursor seen before). A stream
        that ends UNAVAILABLE (a lost connection, a server draining) is opened again
        after the last event seen, a few times with backoff; one that saw no event
        yet resumes after the cursor the server started it at (its
        `packetbus-start-cursor` header, `packetbus.stream_start`), so nothing that
        happened meanwhile is skipped. `started`, if given, is called with that start
        cursor as soon as the server sends it (a relay passes it on as its own
        cursor). Raises DATA_LOSS when events after the cursor are no longer kept;
        CANCELLED at once on a closed client."""
        cursor = after_cursor
        async for response in resuming(
            lambda c, _: self._stub.WatchTasks(
                pb.WatchTasksRequest(queue=self.name, after_cursor=c)
            ),
            _last_event_cursor,
            after=after_cursor,
            started=started,
        ):
            if response.events_lost:
                raise PacketbusError(
                    grpc.StatusCode.DATA_LOSS,
                    f"task events of {self.name!r} after {cursor} are no longer kept",
                )
            for event in response.events:
                cursor = event.cursor
                yield event


def _last_event_cursor(response: pb.WatchTasksResponse) -> str:
    return response.events[-1].cursor if response.events else ""
