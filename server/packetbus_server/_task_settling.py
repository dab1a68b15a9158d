"""Settling tasks: heartbeats, releases, completions, failures and carcel moves, each
fenced by its claim's token, signed into the task packet's chain of custody, and
answered the same when sent again (scripts/task_settle.lua); and the failed attempts
of leases that ran out (scripts/task_expire.lua)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import grpc
from redis.exceptions import RedisClusterException, RedisError

from packetbus import _custody
from packetbus.v1 import custody_pb2
from packetbus.v1 import task_service_pb2 as pb

from . import _status
from ._access import binding
from ._clock import StoreClock
from ._custodian import ChainEnd, Custodian, Hop, SignedHop, chain_end
from ._field_rules import validate_id, validate_topic
from ._fields import utf8_length
from ._hop_store import HopStore, HopWrite
from ._json_data import check_json_data
from ._limits import Limits
from ._retry import StoreFailedError, StoreUnavailableError, is_retry_safe
from ._storage_errors import storage_errors
from ._task_store import Settled, TaskRecord, TaskStore
from ._validation import Violation

_SIGN_ROUNDS = 5

log = logging.getLogger("packetbus.server.tasks")

_STORE_FAILURES = (RedisError, RedisClusterException, StoreUnavailableError, StoreFailedError)


class TaskSettler:
    """What TaskService's settling calls and the agent reaper share."""

    def __init__(
        self,
        store: TaskStore,
        hops: HopStore,
        custodian: Custodian,
        limits: Limits,
        *,
        clock: StoreClock,
    ) -> None:
        self._store = store
        # The store's clock: the signed hops' times agree with the leases beside them.
        self._clock = clock
        self._hops = hops
        self._custodian = custodian
        self._limits = limits

    async def expire_before_read(self, queue: str) -> None:
        """Count the queue's leases that ran out before a read of its tasks (GetTask,
        ListTasks, WatchTasks), so the read shows each as it is. One try: a store that
        refuses the write (full, a read-only replica, too few replicas) or does not
        answer it leaves the read to go on. The read shows a lease that ran
        out all the same (task_state projects it); the next claim, settlement or read
        counts it. Retrying would spend the read's deadline on a write it can do
        without, and a refusal would fail a read the store still answers."""
        try:
            task_ids = await self._store.expire(queue)
            # Their "carceled" hops: a store that took the count may still refuse
            # these (full: the count's first writes free memory, a hop takes some).
            await self.carceled_hops(queue, task_ids)
        except Exception as exc:
            # What the store raises, or a torn connection (is_retry_safe): not a bug
            # of this read's own.
            if not (isinstance(exc, _STORE_FAILURES) or is_retry_safe(exc)):
                raise
            log.debug("run-out leases of %s not counted before a read (%s)", queue, exc)

    async def carceled_hops(self, queue: str, task_ids: Sequence[str]) -> None:
        """Append a signed "carceled" hop to each task a script moved to the carcel
        because its lease ran out on its last attempt (once, however many calls see
        it pending), then take them off the pending set."""
        if not task_ids:
            return
        for record in await self._store.get_many(queue, task_ids):
            if record is not None and record.text("st") == "carceled":
                await self.record_hop(
                    queue,
                    record,
                    _custody.CARCELED,
                    counterpart=f"queue:{queue}",
                    reason="max attempts: its lease ran out on its last attempt",
                    once=True,
                )
        await self._store.carcel_hops_done(queue, task_ids)

    async def record_hop(
        self,
        queue: str,
        record: TaskRecord,
        action: str,
        *,
        counterpart: str,
        reason: str = "",
        once: bool = False,
    ) -> TaskRecord:
        """Append the server's signed `action` hop to the task packet's chain (after the
        fact: the script already chose the task, or carceled it). `once`: not when the
        chain has it already (the same action for the same claim, appended by an
        earlier call whose reply was lost)."""
        hops = record.hops
        attempt = record.number("claims")
        for _ in range(_SIGN_ROUNDS):
            if once and _has_hop(hops, action, attempt):
                return TaskRecord(record.task_id, record.fields, hops)
            end = chain_end(record.payload, record.number("n"), hops)
            hop = self._sign_hop(record, end, action, counterpart=counterpart, reason=reason)
            if hop is None:
                return record
            [reply] = await self._hops.append(
                queue,
                [HopWrite(record.text("i"), end.hops, hop.entry, hop.hash, record.number("x"))],
            )
            if reply is None:
                return TaskRecord(record.task_id, record.fields, [*hops, hop.entry])
            hops = reply[1:]
        return TaskRecord(record.task_id, record.fields, hops)

    def _sign_hop(
        self, record: TaskRecord, end: ChainEnd, action: str, *, counterpart: str, reason: str
    ) -> SignedHop | None:
        """The server's signed `action` hop after `end` of the task packet's chain, for
        its current claim; None when this server does not sign custody entries."""
        digest = hashlib.sha256(record.payload[: record.number("n")]).digest()
        hop = Hop(
            record.text("i"),
            digest,
            end,
            action,
            counterpart=counterpart,
            attempt=record.number("claims"),
            reason=reason,
        )
        signed = self._custodian.sign_hops([hop], self._clock.now_ns())
        return signed[0] if signed else None

    # -- settling ----------------------------------------------------------------------

    @staticmethod
    async def _require_worker(context: grpc.aio.ServicerContext, worker: str, task_id: str) -> None:
        """Abort PERMISSION_DENIED (agents.act_for on `worker`) unless the caller may
        act as the agent that holds the claim."""
        refusal = binding.acting_refusal(worker, "fencing_token")
        if refusal is not None:
            refusal.message = (
                f"task {task_id!r} is claimed by agent {worker!r}; only that agent (or "
                f"one acting for it) settles the claim. {refusal.message}"
            )
            await _status.abort_with(context, refusal)

    async def settle(
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
        """One settling call of a worker's (`kind`: heartbeat, release, complete or
        fail; a last failure becomes "carcel"): (the kind done, its value: the lease
        end ms of a heartbeat, the carcel entry id of a carcel move). The same request
        sent again answers the same. Aborts the call: INVALID_ARGUMENT, NOT_FOUND,
        FAILED_PRECONDITION (the token no longer holds the task), ALREADY_EXISTS (the
        token settled it with another result), ABORTED (the chain kept moving)."""
        violations: list[Violation] = []
        validate_topic(violations, "queue", queue, self._limits.max_topic_length)
        validate_id(violations, "task_id", task_id)
        if fence <= 0:
            violations.append(Violation("fencing_token", "REQUIRED", "from the claim"))
        if result is not None:
            # A result is kept with the task and listed with it: no larger than a packet.
            size = result.ByteSize()
            if size > self._limits.max_packet_bytes:
                parts = {
                    "result": result.result.ByteSize(),
                    "summary": utf8_length(result.summary),
                    "error": utf8_length(result.error),
                }
                violations.append(
                    Violation(
                        max(parts, key=parts.__getitem__),  # the field that made it so
                        "RESULT_TOO_LARGE",
                        f"the result is {size} bytes; the limit is "
                        f"{self._limits.max_packet_bytes} (the packet limit)",
                    )
                )
            check_json_data(violations, "result", result.result)
        if violations:
            await _status.abort_invalid(context, f"invalid {kind}", violations)
        async with storage_errors(context):
            [record] = await self._store.get_many(queue, [task_id])
            if record is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"no task {task_id!r} in queue {queue!r}"
                )
                raise AssertionError("context.abort always raises")
            if record.number("f") == fence:
                # The claim this token names is its worker's to settle (issue 14: a
                # claim names an agent); a token is a counter anyone reading the
                # queue sees, no proof of who calls. Another token: the script
                # answers it (stale, or a retry of what was settled).
                await self._require_worker(context, record.text("w"), task_id)
            if kind == "fail" and record.number("fails") + 1 >= record.number("max"):
                kind = "carcel"
            settled = await self.sign_and_settle(
                queue, record, kind, fence, argument=argument, result=result
            )
            await self.carceled_hops(queue, settled.carceled)
        if settled.outcome == "again":
            # This very settlement, made before (a retry after a lost reply).
            return settled.value, settled.extra.decode()
        if settled.outcome == "conflict":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"task {task_id!r} was already {_DONE.get(settled.value, settled.value)} with "
                f"fencing token {fence}, with another {_WHAT[_CLASS[kind]]}; nothing changed",
                "TASK_SETTLED_OTHERWISE",
            )
        if settled.outcome == "settled":
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"fencing token {fence} no longer holds task {task_id!r}: the task was "
                f"{_DONE.get(settled.value, settled.value)} with it",
                "FENCING_TOKEN_STALE",
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
            if token.isascii() and token.isdigit() and fence > int(token):
                # Never a token of this task: "no longer holds" would say it once was.
                await _status.abort_with_reason(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"fencing token {fence} was never issued for task {task_id!r} "
                    f"(its newest claim has token {token})",
                    "FENCING_TOKEN_UNKNOWN",
                )
            await _status.abort_with_reason(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"fencing token {fence} no longer holds task {task_id!r}: {why}",
                "FENCING_TOKEN_STALE",
            )
        if settled.outcome == "stale":
            await context.abort(grpc.StatusCode.ABORTED, "the task's chain kept changing; retry")
        return kind, settled.value

    async def sign_and_settle(
        self,
        queue: str,
        record: TaskRecord,
        kind: str,
        fence: int,
        *,
        argument: str | int = "",
        result: pb.TaskResult | None = None,
        by_server: bool = False,
    ) -> Settled:
        """Settle a task with the server's signed hop for it, signing again while the
        chain moves under it; the script checks the fence before writing anything.
        `by_server`: the server settles it (not its worker), so no request of the
        worker's passes for a replay of this one."""
        task_id = record.task_id
        end = chain_end(record.payload, record.number("n"), record.hops)
        action = {
            "release": _custody.RELEASED,
            "complete": _custody.COMPLETED,
            "lapse": _custody.RELEASED,
            "fail": _custody.FAILED,
            "carcel": _custody.CARCELED,
        }.get(kind)
        serialized = b""
        asked = _request_digest(argument if kind != "heartbeat" else "", result)
        if result is not None:
            result.worker = record.text("w")  # the holder of the lease the fence names
            serialized = result.SerializeToString()
        for _ in range(_SIGN_ROUNDS):
            entry = entry_hash = b""
            if action is not None:
                hop = self._sign_hop(
                    record,
                    end,
                    action,
                    counterpart=f"queue:{queue} worker:{record.text('w')}",
                    reason=str(argument) if kind != "carcel" else _MAX_ATTEMPTS,
                )
                if hop is not None:
                    entry, entry_hash = hop.entry, hop.hash
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
                digest=asked,
                asker="server" if by_server else _CLASS.get(kind, ""),
            )
            if settled.outcome != "stale":
                break
            end = ChainEnd(end.ingest_entries, int(settled.value), settled.extra)
        return settled

    async def release_held(self, queue: str, worker: str, reason: str) -> int:
        """Put every task of `queue` that `worker` holds back in the queue at once (its
        agent went stale or left), each with a signed "released" hop. Each counts as
        a failed attempt, as a lease that runs out does (the worker is gone): after
        its last one the task goes to the carcel instead. Safe to repeat, by any
        replica: a task released already, or claimed again, fails its fence and is
        left alone. Returns how many this call released or carceled."""
        held = await self._store.held(queue, worker)
        records = await self._store.get_many(queue, [task_id for task_id, _ in held])
        released = 0
        for (_, fence), record in zip(held, records, strict=True):
            if record is None or record.number("f") != fence:
                continue
            last = record.number("fails") + 1 >= record.number("max")
            settled = await self.sign_and_settle(
                queue,
                record,
                "carcel" if last else "lapse",
                fence,
                argument=one_line(reason),
                by_server=True,
            )
            await self.carceled_hops(queue, settled.carceled)
            released += settled.outcome == "ok"
        return released


# Settlement kinds by the class of request they answer (a replay asks the same class;
# the server's own settlements are of class "server"), and words.
_CLASS = {
    "release": "release",
    "complete": "complete",
    "fail": "fail",
    "carcel": "fail",
}
_DONE = {
    "release": "released",
    "lapse": "released by the server (its worker's agent went stale or left)",
    "complete": "completed",
    "fail": "failed",
    "carcel": "moved to the carcel (its last attempt failed)",
}
_WHAT = {"release": "reason", "complete": "result", "fail": "error"}
_MAX_ATTEMPTS = "max attempts"


def _has_hop(hops: Sequence[bytes], action: str, attempt: int) -> bool:
    """Whether a chain's hops (serialized CustodyEntry) hold `action` for `attempt`."""
    for hop in reversed(hops):
        record = custody_pb2.CustodyRecord.FromString(
            custody_pb2.CustodyEntry.FromString(hop).record
        )
        if (record.action, record.attempt) == (action, attempt):
            return True
    return False


def _request_digest(argument: str | int, result: pb.TaskResult | None) -> str:
    """What a settlement asks, as hex: its argument and result without their time or
    worker (the server's), so a retry of the same request has the same digest."""
    h = hashlib.sha256(str(argument).encode())
    if result is not None:
        asked = pb.TaskResult()
        asked.CopyFrom(result)
        asked.ClearField("at")
        asked.ClearField("worker")
        h.update(b"\0" + asked.SerializeToString(deterministic=True))
    return h.hexdigest()


def one_line(text: str) -> str:
    return " ".join(text.splitlines())[:1024]
