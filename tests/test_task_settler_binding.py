"""Only the claiming worker settles its claim (issue 14, item 4: identity binds what
names an agent; a claim names its worker).

A fencing token is a counter per task (1 for the first claim), shown to any reader
of the queue (WatchTasks events, GetTask): it orders claims, it proves no one's
identity. Another principal that may claim in the queue used to heartbeat,
release, complete (with a result of its choosing) or fail a task claimed by
worker-1 by sending token 1. Now a settlement is refused PERMISSION_DENIED
(agents.act_for on the claim's worker) unless the caller may act as that worker,
and nothing changes; the worker itself, and a coordinator that acts for it,
still settle.

Real server on loopback, real store, real Ed25519 JWTs (tests/_binding.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import task_service_pb2 as tasks_pb
from packetbus_server import RunningServer
from tests._binding import WORKER_1, WORKER_2, Caller, denied, packet_as, refused, serve_bound
from tests._store_keys import key_names, new_keys
from tests.conftest import unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

COORDINATOR = "spiffe://example.org/agent/coordinator"

POLICY = """
[authorization]

[[authorization.principals]]
match = "spiffe://example.org/agent/coordinator"
roles = ["coordinator", "worker"]

[[authorization.principals]]
match = "spiffe://example.org/agent/worker-*"
roles = ["worker"]

[authorization.roles.coordinator]
grants = [{ permissions = ["agents.act_for"], resources = ["worker-*"] }]

[authorization.roles.worker]
grants = [{ permissions = ["tasks.*"], resources = ["jobs.*"] }]
"""


@pytest.fixture
async def callers(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[[str], Caller]]:
    srv: RunningServer
    srv, issuer = await serve_bound(redis_url, tmp_path, POLICY)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            yield lambda name: Caller(channel, issuer, name)
    finally:
        await srv.stop(grace=0)


async def _claimed(worker: Caller, queue: str) -> tuple[str, int]:
    """A task posted to `queue` by `worker` and claimed by it: (task id, token)."""
    task = packet_as(queue, "worker-1")
    task.task.CopyFrom(packetbus.Task(id=unique("t"), description="do it"))
    await worker.tasks.PostTask(tasks_pb.PostTaskRequest(packet=task), metadata=worker.metadata)
    claim = await worker.tasks.ClaimTask(
        tasks_pb.ClaimTaskRequest(queue=queue, worker="worker-1"), metadata=worker.metadata
    )
    assert claim.task.task_id == task.task.id
    return claim.task.task_id, claim.task.fencing_token


def _settlements(queue: str, task_id: str, token: int) -> dict[str, Callable[[Caller], Any]]:
    return {
        "heartbeat": lambda c: c.tasks.HeartbeatTask(
            tasks_pb.HeartbeatTaskRequest(queue=queue, task_id=task_id, fencing_token=token),
            metadata=c.metadata,
        ),
        "release": lambda c: c.tasks.ReleaseTask(
            tasks_pb.ReleaseTaskRequest(queue=queue, task_id=task_id, fencing_token=token),
            metadata=c.metadata,
        ),
        "complete": lambda c: c.tasks.CompleteTask(
            tasks_pb.CompleteTaskRequest(
                queue=queue, task_id=task_id, fencing_token=token, summary="forged: all fine"
            ),
            metadata=c.metadata,
        ),
        "fail": lambda c: c.tasks.FailTask(
            tasks_pb.FailTaskRequest(queue=queue, task_id=task_id, fencing_token=token),
            metadata=c.metadata,
        ),
    }


@pytest.mark.parametrize("kind", ["heartbeat", "release", "complete", "fail"])
async def test_another_worker_cannot_settle_a_claim_with_its_token(
    callers: Callable[[str], Caller], raw_redis: redis_asyncio.Redis, kind: str
) -> None:
    owner, other = callers(WORKER_1), callers(WORKER_2)
    queue = unique("jobs.q")
    task_id, token = await _claimed(owner, queue)
    assert token == 1  # a counter: anyone can guess it
    before = await key_names(raw_redis)
    code, info, message = await refused(_settlements(queue, task_id, token)[kind](other))
    assert (code, info) == (
        grpc.StatusCode.PERMISSION_DENIED,
        denied(WORKER_2, "agents.act_for", "worker-1"),
    )
    assert "claimed by agent 'worker-1'" in message
    assert await new_keys(raw_redis, before) == set()
    got = await owner.tasks.GetTask(
        tasks_pb.GetTaskRequest(queue=queue, task_id=task_id), metadata=owner.metadata
    )
    assert got.task.status == tasks_pb.TASK_STATUS_CLAIMED
    assert got.task.fencing_token == token
    # The worker itself settles it.
    await _settlements(queue, task_id, token)[kind](owner)


async def test_a_coordinator_acting_for_the_worker_settles_its_claim(
    callers: Callable[[str], Caller],
) -> None:
    owner, coordinator = callers(WORKER_1), callers(COORDINATOR)
    queue = unique("jobs.q")
    task_id, token = await _claimed(owner, queue)
    await _settlements(queue, task_id, token)["complete"](coordinator)
    got = await owner.tasks.GetTask(
        tasks_pb.GetTaskRequest(queue=queue, task_id=task_id), metadata=owner.metadata
    )
    assert got.task.status == tasks_pb.TASK_STATUS_COMPLETED
