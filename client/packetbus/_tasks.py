"""Task queues from the client side: post, claim (with a lease and a fencing token), settle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import struct_pb2

from packetbus.v1 import contents_pb2, packet_pb2, speech_act_pb2, task_service_pb2_grpc
from packetbus.v1 import task_service_pb2 as pb

from ._calls import Call
from ._errors import PacketbusError

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
        """Finish the task; `result` (a JSON-like mapping) is kept with it."""
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
        """Report a failed attempt: the task is retried, or after its last attempt carceled."""
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
        timeout: float | None = None,
    ) -> ClaimedTask | None:
        """Claim the best task this worker may take (highest priority, first posted
        first; needing no capability or one of `capabilities`), or None."""
        request = pb.ClaimTaskRequest(
            queue=self.name,
            worker=worker,
            capabilities=capabilities,
            lease_seconds=lease_seconds,
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
        """The queue's tasks (with `status`, or all), first posted first."""
        request = pb.ListTasksRequest(queue=self.name, status=status)
        response = await self._call(self._stub.ListTasks, request, timeout)
        return list(response.tasks)

    async def results(self, task_id: str, *, timeout: float | None = None) -> list[pb.TaskResult]:
        """Each finished attempt of the task: failures with their errors, the completion
        with its result."""
        request = pb.ListTaskResultsRequest(queue=self.name, task_id=task_id)
        response = await self._call(self._stub.ListTaskResults, request, timeout)
        return list(response.results)

    async def watch(self) -> AsyncIterator[pb.TaskEvent]:
        """Status changes of this queue's tasks from now on, as they happen."""
        call = self._stub.WatchTasks(pb.WatchTasksRequest(queue=self.name))
        try:
            async for response in call:
                for event in response.events:
                    yield event
        except grpc.aio.AioRpcError as exc:
            raise PacketbusError.from_rpc_error(exc) from None
        finally:
            call.cancel()
