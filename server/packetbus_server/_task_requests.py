"""TaskService request checks: the fields of a post, a claim and a task reference,
each broken rule a Violation (field path, rule, message) for _status.abort_invalid."""

from __future__ import annotations

import re

import grpc

from packetbus.v1 import task_service_pb2 as pb

from . import _status
from ._field_rules import validate_agent_id, validate_id, validate_topic
from ._limits import Limits
from ._validation import Violation

_MAX_PRIORITY = 1000
_DEFAULT_ATTEMPTS = 3
_DEFAULT_LEASE_S = 30
MAX_LEASE_S = 600
# A claim's request id: a UUID, or any short token of the same characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


def check_queue(violations: list[Violation], queue: str, limits: Limits) -> None:
    validate_topic(violations, "queue", queue, limits.max_topic_length)


def task_ref_violations(queue: str, task_id: str, limits: Limits) -> list[Violation]:
    """What is wrong with a (queue, task_id) reference; empty when nothing is."""
    violations: list[Violation] = []
    check_queue(violations, queue, limits)
    validate_id(violations, "task_id", task_id)
    return violations


async def check_task_ref(
    context: grpc.aio.ServicerContext, queue: str, task_id: str, limits: Limits
) -> None:
    """Abort INVALID_ARGUMENT ("invalid task") unless (queue, task_id) is well formed."""
    violations = task_ref_violations(queue, task_id, limits)
    if violations:
        await _status.abort_invalid(context, "invalid task", violations)


def post_violations(request: pb.PostTaskRequest) -> tuple[list[Violation], int]:
    """(what is wrong with the task fields of a post, its max attempts, default 3).
    The packet itself is checked by _admission.admit."""
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
    return violations, attempts


def claim_violations(request: pb.ClaimTaskRequest, limits: Limits) -> tuple[list[Violation], int]:
    """(what is wrong with a claim, its lease in seconds, default 30, at most 600)."""
    violations: list[Violation] = []
    check_queue(violations, request.queue, limits)
    validate_agent_id(violations, "worker", request.worker)
    # The claim script looks in one ready set per capability, all in one run that
    # holds the store: unbounded, one claim of a million kept every other client
    # waiting for seconds. A worker is an agent, whose capabilities are bounded so.
    if len(request.capabilities) > limits.max_agent_capabilities:
        violations.append(
            Violation(
                "capabilities",
                "COUNT",
                f"at most {limits.max_agent_capabilities} (as an agent may register); "
                f"got {len(request.capabilities)}",
            )
        )
    for i, capability in enumerate(request.capabilities[: limits.max_agent_capabilities]):
        validate_id(violations, f"capabilities[{i}]", capability)
    lease_s = request.lease_seconds or _DEFAULT_LEASE_S
    if not 1 <= lease_s <= MAX_LEASE_S:
        violations.append(
            Violation("lease_seconds", "RANGE", f"must be 1..{MAX_LEASE_S}; got {lease_s}")
        )
    if request.request_id and not _REQUEST_ID.match(request.request_id):
        violations.append(
            Violation(
                "request_id",
                "REQUEST_ID_FORMAT",
                'must be 1..128 letters, digits or "._:-" (e.g. a UUID)',
            )
        )
    return violations, lease_s
