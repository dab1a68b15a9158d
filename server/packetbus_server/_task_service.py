"""TaskService: priority task queues with leases, fencing tokens, results and the carcel."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import timestamp_pb2

from packetbus import _custody, _wire
from packetbus.v1 import task_service_pb2 as pb
from packetbus.v1 import task_service_pb2_grpc

from . import _status
from ._admission import admit
from ._custodian import ChainEnd, Custodian, Hop, chain_end
from ._hop_store import HopStore, HopWrite
from ._key_store import KeyStore
from ._limits import Limits
from ._packet_service import caller_gone, storage_errors, stored_packet
from ._task_store import Settled, TaskRecord, TaskStore
from ._validation import Violation, validate_agent_id, validate_id, validate_topic

_STATUS = {
    "queued": pb.TASK_STATUS_QUEUED,
    "claimed": pb.TASK_STATUS_CLAIMED,
    "completed": pb.TASK_STATUS_COMPLETED,
    "carceled": pb.TASK_STATUS_CARCELED,
}
_SIGN_ROUNDS = 5
_MAX_PRIORITY = 1000
_LIST_LIMIT = 10_000
_WATCH_BLOCK_MS = 1000
_DEFAULT_ATTEMPTS = 3
_DEFAULT_LEASE_S = 30
_MAX_LEASE_S = 600


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def task_state(queue: str, record: TaskRecord, now_ms: int) -> pb.TaskState:
    status = _STATUS.get(record.text("st"), pb.TASK_STATUS_UNSPECIFIED)
    lease_end = record.number("lu")
    if status == pb.TASK_STATUS_CLAIMED and lease_end <= now_ms:
        # Its lease ran out: the next claim puts it back in the queue.
        status = pb.TASK_STATUS_QUEUED
    state = pb.TaskState(
        queue=queue,
        task_id=record.task_id,
        status=status,
        priority=record.number("pr"),
        required_capability=record.text("cap"),
        claims=record.number("claims"),
        failures=record.number("fails"),
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
    ) -> None:
        self._store = store
        self._hops = hops
        self._key_store = key_store
        self._custodian = custodian
        self._limits = limits
        # (worker, queue) -> None, awaited before each claim: the agent registry
        # notes where a worker claims, to release its tasks when it goes stale.
        self._before_claim = before_claim

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
        )
        queue = packet.topic
        async with storage_errors(context):
            posted = await self._store.post(
                queue,
                task.id,
                write,
                priority=task.priority,
                capability=task.required_capability,
                max_attempts=attempts,
                expires_at_ms=now_ns // 1_000_000 + write.ttl_ms,
            )
            if posted == "conflict":
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"task {task.id!r} of queue {queue!r} is another packet's",
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
        if violations:
            await _status.abort_invalid(context, "invalid claim", violations)
        async with storage_errors(context):
            if self._before_claim is not None:
                await self._before_claim(request.worker, request.queue)
            record = await self._store.claim(
                request.queue, request.worker, list(request.capabilities), lease_s * 1000
            )
            if record is None:
                return pb.ClaimTaskResponse()
            record = await self._record_hop(
                request.queue,
                record,
                _custody.CLAIMED,
                counterpart=f"queue:{request.queue} worker:{request.worker}",
            )
        state = task_state(request.queue, record, _now_ms())
        self._custodian.vouch(state.packet)
        return pb.ClaimTaskResponse(task=state)

    async def _record_hop(
        self, queue: str, record: TaskRecord, action: str, *, counterpart: str
    ) -> TaskRecord:
        """Append the server's signed `action` hop to the task packet's chain (after the
        fact, for a claim: the script already chose the task)."""
        payload, content_length = record.payload, record.number("n")
        digest = hashlib.sha256(payload[:content_length]).digest()
        hops = record.hops
        for _ in range(_SIGN_ROUNDS):
            end = chain_end(payload, content_length, hops)
            signed = self._custodian.sign_hops(
                [
                    Hop(
                        record.text("i"),
                        digest,
                        end,
                        action,
                        counterpart=counterpart,
                        attempt=record.number("claims"),
                    )
                ],
                time.time_ns(),
            )
            if not signed:
                return record
            [hop] = signed
            [reply] = await self._hops.append(
                queue,
                [HopWrite(record.text("i"), end.hops, hop.entry, hop.hash, record.number("x"))],
            )
            if reply is None:
                return TaskRecord(record.task_id, record.fields, [*hops, hop.entry])
            hops = reply[1:]
        return TaskRecord(record.task_id, record.fields, hops)

    # -- settling ----------------------------------------------------------------------

    async def _settle(
        self,
        context: grpc.aio.ServicerContext,
        queue: str,
        task_id: str,
        fence: int,
        kind: str,
        *,
        argument: str | int = "",
        result: pb.TaskResult | None = None,
    ) -> tuple[str, str]:
        violations: list[Violation] = []
        self._check_queue(violations, queue)
        validate_id(violations, "task_id", task_id)
        if fence <= 0:
            violations.append(Violation("fencing_token", "REQUIRED", "from the claim"))
        if violations:
            await _status.abort_invalid(context, f"invalid {kind}", violations)
        async with storage_errors(context):
            [record] = await self._store.get_many(queue, [task_id])
            if record is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no task {task_id!r} in queue {queue!r}"
                )
                raise AssertionError("context.abort always raises")
            if kind == "fail" and record.number("fails") + 1 >= record.number("max"):
                kind = "carcel"
            settled = await self._sign_and_settle(
                queue, record, kind, fence, argument=argument, result=result
            )
        if settled.outcome == "gone":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no task {task_id!r} in {queue!r}")
        if settled.outcome == "stale_fence":
            status, token = settled.value, settled.extra.decode()
            why = {
                "completed": "it is completed",
                "carceled": "it is in the carcel",
                "queued": "its lease ran out and it is back in the queue",
            }.get(status, f"it was claimed again (token {token})")
            if status == "claimed" and token == str(fence):
                why = "its lease ran out"
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"fencing token {fence} no longer holds task {task_id!r}: {why}",
            )
        if settled.outcome == "stale":
            await context.abort(grpc.StatusCode.ABORTED, "the task's chain kept changing; retry")
        return kind, settled.value

    async def _sign_and_settle(
        self,
        queue: str,
        record: TaskRecord,
        kind: str,
        fence: int,
        *,
        argument: str | int = "",
        result: pb.TaskResult | None = None,
    ) -> Settled:
        """Settle a task with the server's signed hop for it, signing again while the
        chain moves under it; the script checks the fence before writing anything."""
        task_id = record.task_id
        payload, content_length = record.payload, record.number("n")
        digest = hashlib.sha256(payload[:content_length]).digest()
        end = chain_end(payload, content_length, record.hops)
        action = {
            "release": _custody.RELEASED,
            "complete": _custody.COMPLETED,
            "fail": _custody.FAILED,
            "carcel": _custody.CARCELED,
        }.get(kind)
        serialized = b""
        if result is not None:
            result.worker = record.text("w")  # the holder of the lease the fence names
            serialized = result.SerializeToString()
        for _ in range(_SIGN_ROUNDS):
            entry = entry_hash = b""
            if action is not None:
                signed = self._custodian.sign_hops(
                    [
                        Hop(
                            record.text("i"),
                            digest,
                            end,
                            action,
                            counterpart=f"queue:{queue} worker:{record.text('w')}",
                            attempt=record.number("claims"),
                            reason=str(argument) if kind != "carcel" else "max attempts",
                        )
                    ],
                    time.time_ns(),
                )
                if signed:
                    entry, entry_hash = signed[0].entry, signed[0].hash
            settled = await self._store.settle(
                queue,
                task_id,
                record.text("i"),
                kind=kind,
                fence=fence,
                expected_hops=end.hops,
                entry=entry,
                entry_hash=entry_hash,
                argument=argument,
                result=serialized,
            )
            if settled.outcome != "stale":
                break
            end = ChainEnd(end.ingest_entries, int(settled.value), settled.extra)
        return settled

    async def release_held(self, queue: str, worker: str, reason: str) -> int:
        """Put every task of `queue` that `worker` holds back in the queue at once (its
        agent went stale or left), each with a signed "released" hop. Safe to repeat,
        by any replica: a task released already, or claimed again, fails its fence
        and is left alone. Returns how many this call released."""
        held = await self._store.held(queue, worker)
        records = await self._store.get_many(queue, [task_id for task_id, _ in held])
        released = 0
        for (_, fence), record in zip(held, records, strict=True):
            if record is None or record.number("f") != fence:
                continue
            settled = await self._sign_and_settle(
                queue, record, "release", fence, argument=_one_line(reason)
            )
            released += settled.outcome == "ok"
        return released

    async def HeartbeatTask(
        self, request: pb.HeartbeatTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.HeartbeatTaskResponse:
        if request.lease_seconds > _MAX_LEASE_S:
            await _status.abort_invalid(
                context,
                "invalid heartbeat",
                [Violation("lease_seconds", "RANGE", f"must be at most {_MAX_LEASE_S}")],
            )
        _, value = await self._settle(
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
        await self._settle(
            context,
            request.queue,
            request.task_id,
            request.fencing_token,
            "release",
            argument=_one_line(request.reason),
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
            at=_ts(_now_ms()),
        )
        await self._settle(
            context,
            request.queue,
            request.task_id,
            request.fencing_token,
            "complete",
            result=result,
        )
        return pb.CompleteTaskResponse()

    async def FailTask(
        self, request: pb.FailTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.FailTaskResponse:
        result = pb.TaskResult(
            fencing_token=request.fencing_token, error=request.error, at=_ts(_now_ms())
        )
        kind, value = await self._settle(
            context,
            request.queue,
            request.task_id,
            request.fencing_token,
            "fail",
            argument=_one_line(request.error),
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
            [record] = await self._store.get_many(request.queue, [request.task_id])
        if record is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no task {request.task_id!r} in queue {request.queue!r} (never posted, "
                "or expired)",
            )
            raise AssertionError("context.abort always raises")
        state = task_state(request.queue, record, _now_ms())
        self._custodian.vouch(state.packet)
        return pb.GetTaskResponse(task=state)

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        violations: list[Violation] = []
        self._check_queue(violations, request.queue)
        if violations:
            await _status.abort_invalid(context, "invalid listing", violations)
        async with storage_errors(context):
            ids = await self._store.task_ids(request.queue, _LIST_LIMIT)
            records = await self._store.get_many(request.queue, ids)
        now = _now_ms()
        states = [task_state(request.queue, r, now) for r in records if r is not None]
        if request.status:
            states = [s for s in states if s.status == request.status]
        return pb.ListTasksResponse(tasks=states)

    async def ListTaskResults(
        self, request: pb.ListTaskResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaskResultsResponse:
        await self._check_task_ref(context, request.queue, request.task_id)
        async with storage_errors(context):
            raw = await self._store.results(request.queue, request.task_id)
        return pb.ListTaskResultsResponse(results=[pb.TaskResult.FromString(r) for r in raw])

    async def WatchTasks(
        self, request: pb.WatchTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTasksResponse]:
        violations: list[Violation] = []
        self._check_queue(violations, request.queue)
        if violations:
            await _status.abort_invalid(context, "invalid watch", violations)
        async with storage_errors(context, retry_hint="watch again"):
            cursor = await self._store.last_event(request.queue)
            while not caller_gone(context):
                cursor, entries = await self._store.events(request.queue, cursor, _WATCH_BLOCK_MS)
                if entries:
                    yield pb.WatchTasksResponse(events=[_event(e) for e in entries])


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
    )


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())[:1024]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
