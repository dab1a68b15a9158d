"""Which calls the client retries, and whether a failed call may have taken effect.

Every unary RPC of the surface is in `POLICY`, classified by what the server does
when the same request comes twice (the second being a retry after a reply that
was lost):

- READ: it changes nothing. Retried.
- IDEMPOTENT: the repeat changes nothing more and answers as the first did (a
  tracking id, entry id, upload id, fencing token or derived id makes it so), or
  at worst answers a "nothing was there" flag (`deleted`, `existed`, `purged`)
  for what the first one removed. Retried.
- ONCE: a repeat would be refused although the first one was applied (a
  requeued carcel entry is gone, a deregistered agent is unknown). Retried only when the request surely never
  reached the server (no connection could be made); otherwise the error is
  raised with `PacketbusError.outcome_unknown` set, for the caller to check.

An error raised after retries tells whether the outcome is known:
`outcome_unknown` is True when the request may have reached the server and
taken effect (see `maybe_applied`), False when it surely did not (a definite
refusal, or never sent) or the call changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from packetbus.rich_status import error_info, status_in
from packetbus.v1 import (
    agent_service_pb2,
    carcel_service_pb2,
    consumer_group_service_pb2,
    context_service_pb2,
    custody_service_pb2,
    finding_service_pb2,
    packet_service_pb2,
    policy_service_pb2,
    record_service_pb2,
    task_service_pb2,
    topic_service_pb2,
)


class Retry(enum.Enum):
    READ = "read"
    IDEMPOTENT = "idempotent"
    ONCE = "once"


_R, _I, _O = Retry.READ, Retry.IDEMPOTENT, Retry.ONCE

# By "<Service>.<Method>", every call the contract does not declare a read
# (packetbus's reads follow their protos, below; grpc.health's are listed here);
# tests/test_client_retries.py checks every method of
# every service has a policy. Streams resume by cursor on their own (reads); Pull
# sends unconfirmed settlements again on its next stream; PutContext is sent
# again under its upload id when its data is bytes (_context.ContextClient.put).
_LISTED: Mapping[str, Retry] = {
    # Idempotent by tracking id: the same packet again answers the original result.
    "PacketService.Dispatch": _I,
    # The same key again is harmless.
    "CustodyService.RegisterAgentKey": _I,
    # The same settings again answer the group.
    "ConsumerGroupService.CreateConsumerGroup": _I,
    # A repeat finds nothing to delete: `deleted` is False.
    "ConsumerGroupService.DeleteConsumerGroup": _I,
    # A settlement replayed answers OK (the group records its last settlement).
    # A consumer's settlements sent outside its stream follow these too (_settling).
    "ConsumerGroupService.Acknowledge": _I,
    "ConsumerGroupService.Nack": _I,
    "ConsumerGroupService.ExtendLeases": _I,
    # A repeat finds the entry gone (NOT_FOUND) although the first requeued it.
    "CarcelService.RequeueCarcelEntry": _O,
    # A repeat purges what is left: `purged` counts only that.
    "CarcelService.PurgeCarcelEntries": _I,
    # Idempotent by (queue, task id) and the packet's meaning.
    "TaskService.PostTask": _I,
    # A claim's request id makes a repeated claim answer the same claim, and a
    # repeated completion with the same token and result answers OK.
    "TaskService.ClaimTask": _I,
    "TaskService.CompleteTask": _I,
    # Extends the lease from now again: harmless.
    "TaskService.HeartbeatTask": _I,
    # The same token and reason again answer the first outcome (the task service
    # keeps each token's settlement).
    "TaskService.ReleaseTask": _I,
    "TaskService.FailTask": _I,
    # Idempotent by finding id and the packet's meaning.
    "FindingService.PostFinding": _I,
    # The escalation's tracking id is derived from the task: stored once.
    "FindingService.Escalate": _I,
    # An upsert: the same registration again answers what the first did.
    "AgentService.RegisterAgent": _I,
    # Keeps it alive for another TTL again: harmless.
    "AgentService.HeartbeatAgent": _I,
    # A repeat finds the agent gone: NOT_FOUND (unless allow_missing).
    "AgentService.DeregisterAgent": _O,
    # A repeat finds nothing to delete: `existed` is False.
    "ContextService.DeleteContext": _I,
    # The value already set answers OK, compare-and-set or not.
    "ContextService.SetGlobalContext": _I,
    "ContextService.DeleteGlobalContext": _I,
    # Once per entry id: the same entry again, or rebuilt, answers the log's length.
    "ContextService.AppendMemory": _I,
    "ContextService.AppendTrace": _I,
    # Idempotent by tracking id and the packet's meaning.
    "RecordService.PutRecord": _I,
    # Approving or denying again answers the same receipt or carcel entry.
    "PolicyService.ApprovePacket": _I,
    "PolicyService.DenyPacket": _I,
    # The same limits again change nothing more (`removed` counts only this call's).
    "TopicService.SetTopicRetention": _I,
    "Health.Check": _R,
    "Health.List": _R,
}


def _services() -> list[ServiceDescriptor]:
    modules = [
        agent_service_pb2,
        carcel_service_pb2,
        consumer_group_service_pb2,
        context_service_pb2,
        custody_service_pb2,
        finding_service_pb2,
        packet_service_pb2,
        policy_service_pb2,
        record_service_pb2,
        task_service_pb2,
        topic_service_pb2,
        health_pb2,
    ]
    return [s for m in modules for s in m.DESCRIPTOR.services_by_name.values()]


SERVICES = _services()


def no_side_effects(method: MethodDescriptor) -> bool:
    """Whether the contract declares `method` a read (`option idempotency_level =
    NO_SIDE_EFFECTS` in its proto): retried freely here, and still served by a
    server whose store refuses writes (its eviction guard reads the same option)."""
    level = method.GetOptions().idempotency_level
    return level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


POLICY: Mapping[str, Retry] = {
    **{
        f"{s.name}.{m.name}": Retry.READ
        for s in SERVICES
        for m in s.methods
        if no_side_effects(m) and not m.client_streaming and not m.server_streaming
    },
    **_LISTED,
}
# Each unary method's request type (every one is its own) -> "<Service>.<Method>".
_BY_REQUEST = {
    m.input_type.full_name: f"{s.name}.{m.name}"
    for s in SERVICES
    for m in s.methods
    if not m.client_streaming and not m.server_streaming
}


def rpc_of(request: Message) -> str:
    """ "<Service>.<Method>" of the unary RPC `request` is for ("" if unknown)."""
    return _BY_REQUEST.get(request.DESCRIPTOR.full_name, "")


def policy_of(request: Message) -> Retry:
    """How the RPC of `request` is retried; an RPC not in `POLICY` (none is: a test
    checks) is treated as ONCE, the safe side."""
    return POLICY.get(rpc_of(request), Retry.ONCE)


# Details gRPC gives a call that found no connection to send on: it never left
# this process, so it cannot have taken effect.
_NOT_SENT = (
    "failed to connect to all addresses",
    "dns resolution failed",
    "failed to connect to remote host",
    "connection refused",
    # The bearer token could not be had (_security._BearerToken): the call never
    # left the client; retried, as a rotated token file may be back in a moment.
    "getting metadata from plugin failed",
)


def credential_expired(error: grpc.aio.AioRpcError) -> bool:
    """Whether the server ended a stream because the credential it was opened with
    expired (UNAUTHENTICATED, ErrorInfo reason CREDENTIAL_EXPIRED; the server
    judges an open stream again before each response). Opened again, the stream
    carries the client's current token (a TokenFile's renewed one); a token that
    was not renewed is then refused as such (TOKEN_EXPIRED) and raised."""
    if error.code() != grpc.StatusCode.UNAUTHENTICATED:
        return False
    info = error_info(status_in(error.trailing_metadata()))
    return info is not None and info.reason == "CREDENTIAL_EXPIRED"


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """Whether `error` (UNAVAILABLE) came before the request reached any server."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (error.details() or "").lower()
    return any(marker in details for marker in _NOT_SENT)


# grpc.aio's own status for a client stream whose message could not be written
# because the stream had already ended under it (a lost connection, a server that
# answered first): it replaces the real status with this one (grpc/grpc#36066).
_LOCAL_WRITE_FAILED = "Internal error from Core"


def broken_while_writing(error: grpc.aio.AioRpcError) -> bool:
    """Whether `error` is grpc.aio's INTERNAL for a client stream's write that failed
    because the stream had ended (grpc/grpc#36066), not a status any server sent:
    like UNAVAILABLE, the call may or may not have run, and may be sent again."""
    details: str | None = error.details()
    return error.code() == grpc.StatusCode.INTERNAL and details == _LOCAL_WRITE_FAILED


# Codes that can end a call after the server ran it: the answer was lost on the
# way (UNAVAILABLE), came too late (DEADLINE_EXCEEDED), was cut off (CANCELLED by
# the server or a proxy), or the failure is not one the server chose to report
# (UNKNOWN, INTERNAL). Every other code is the server's definite refusal, made
# before it wrote anything (DESIGN.md 2.2: checks come before the first write).
MAYBE_APPLIED = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


def maybe_applied(error: grpc.aio.AioRpcError) -> bool:
    """Whether the call that failed with `error` may have taken effect on the server."""
    code = error.code()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # The reply was larger than this client accepts: the call ran.
        return "received message larger than max" in (error.details() or "").lower()
    return code in MAYBE_APPLIED and not never_sent(error) and not refused_before_running(error)


# ErrorInfo reasons (domain "packetbus") of a refusal the server made before the
# call ran anything, whatever its code (README: "The store: eviction, ...").
NOT_APPLIED_REASONS = frozenset({"STORE_MAY_EVICT"})


def refused_before_running(error: grpc.aio.AioRpcError) -> bool:
    """Whether the server said (an ErrorInfo of NOT_APPLIED_REASONS in the status
    details) that it refused the call before running any of it."""
    info = error_info(status_in(error.trailing_metadata()))
    return info is not None and info.domain == "packetbus" and info.reason in NOT_APPLIED_REASONS
