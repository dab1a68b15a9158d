"""TaskService replies: a stored task as a TaskState, a queue's log entry as a TaskEvent."""

from __future__ import annotations

from packetbus import _wire
from packetbus.v1 import task_service_pb2 as pb

from ._stored_packets import stored_packet
from ._task_store import TaskRecord
from ._timestamps import timestamp

# Task statuses as the scripts write them (lib/tasks.lua), as the API names them.
STATUSES = {
    "queued": pb.TASK_STATUS_QUEUED,
    "claimed": pb.TASK_STATUS_CLAIMED,
    "completed": pb.TASK_STATUS_COMPLETED,
    "carceled": pb.TASK_STATUS_CARCELED,
}


def task_state(queue: str, record: TaskRecord, now_ms: int) -> pb.TaskState:
    status = STATUSES.get(record.text("st"), pb.TASK_STATUS_UNSPECIFIED)
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
        posted_at=timestamp(record.number("pa")),
        updated_at=timestamp(record.number("ua")),
    )
    if status == pb.TASK_STATUS_CLAIMED:
        state.worker = record.text("w")
        state.lease_expires_at.CopyFrom(timestamp(lease_end))
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


def task_event(entry: tuple[bytes, dict[bytes, bytes]]) -> pb.TaskEvent:
    """A queue's event log entry (id "<ms>-<seq>", fields) as a TaskEvent."""
    entry_id, f = entry
    ms = int(entry_id.split(b"-")[0])
    return pb.TaskEvent(
        task_id=f[b"id"].decode(),
        old_status=STATUSES.get(f[b"o"].decode(), pb.TASK_STATUS_UNSPECIFIED),
        new_status=STATUSES.get(f[b"n"].decode(), pb.TASK_STATUS_UNSPECIFIED),
        actor=f[b"a"].decode(),
        fencing_token=int(f[b"f"]),
        at=timestamp(ms),
        reason=f[b"r"].decode(),
        cursor=entry_id.decode(),
    )
