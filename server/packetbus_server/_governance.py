"""Governance beyond Dispatch: one packet posted outside it, and context writes.

The policy in force (the Governor's, `_policy`) decides, with the same rules and
the same first-match order as Dispatch (issue 14, item 5):

* A packet posted outside Dispatch (PostTask, PostFinding, PutRecord) is judged
  as it is, after validation and the origin check, **before anything is
  written** (`judge_posted`):

  - reject: the packet goes to its topic's carcel with the rule and reason, the
    decision is counted (GetPolicyStats) and logged, all by the one script that
    rejects dispatched packets (scripts/policy_decide.lua, idempotent by tracking
    id); the call fails PERMISSION_DENIED with ErrorInfo POLICY_REJECTED
    (metadata rule_id, rule_reason, policy_version, carcel_entry_id), as a
    dispatched packet's result does. A retry answers the same, also after a
    reload that would allow it (as Dispatch: the tracking id's record says so).
  - hold: a task, finding or record has no held state its store could keep
    (a held task would need a queue state that no claim sees, and approval to
    post it as a task, not append it to the topic's log): the call fails
    FAILED_PRECONDITION with ErrorInfo POLICY_HOLD_UNSUPPORTED (rule_id,
    rule_reason, policy_version); nothing is written or counted. Dispatch the
    packet instead to have it held.

* Escalate dispatches the server-built ESCALATE packet with the caller's origin
  (FindingService.Escalate): Dispatch judges it, so rules see the caller as its
  origin, topic ``escalations``, speech act ESCALATE, content type ``data``. A
  held escalation is honoured: ApprovePacket publishes it.

* A context write carries no packet. It is judged by a description built for the
  rules (`context_write`): a packet with origin = the writer, a topic naming what
  is written, speech act unspecified (no speech_act rule matches it), content
  type ``context``, and the Context contents below (fields rules read them:
  ``scope``, ``name``, ``data.operation``, ``data.content_type``):

  | RPC                 | origin                         | topic              | name    | operation |
  |---------------------|--------------------------------|--------------------|---------|-----------|
  | PutContext          | header.author                  | context/<scope>    | name    | put       |
  | DeleteContext       | author, else the caller's agent| context/<scope>    | name    | delete    |
  | SetGlobalContext    | the caller's agent id          | global/<key>       | key     | set       |
  | DeleteGlobalContext | the caller's agent id          | global/<key>       | key     | delete    |
  | AppendMemory        | agent                          | memory/<agent>     | entry id| append    |
  | AppendTrace         | agent                          | trace/<task id>    | entry id| append    |

  (The caller's agent id is the authenticated principal's; "" when the server
  authenticates no one.) reject: PERMISSION_DENIED, ErrorInfo POLICY_REJECTED
  (no carcel entry: there is no packet to keep); hold: FAILED_PRECONDITION,
  POLICY_HOLD_UNSUPPORTED. Either way nothing is written and nothing counted.
"""

from __future__ import annotations

import dataclasses

import grpc
from google.protobuf import any_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from packetbus import _custody
from packetbus.v1 import contents_pb2, packet_pb2

from . import _status
from ._access.gate import caller
from ._ingest import Accepted, to_write
from ._observability import counting
from ._policy import Decision, Verdict
from ._policy_decisions import ERROR_DOMAIN, POLICY_REJECTED, rejection
from ._policy_service import Governor
from ._policy_store import Decided, DecisionWrite
from ._storage_errors import storage_errors

POLICY_HOLD_UNSUPPORTED = "POLICY_HOLD_UNSUPPORTED"


def _decision_status(
    code: int, reason: str, message: str, metadata: dict[str, str]
) -> status_pb2.Status:
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    return status_pb2.Status(code=code, message=message, details=[packed])


def hold_refused(decision: Decision, version: str, what: str) -> status_pb2.Status:
    """FAILED_PRECONDITION: a hold rule matched a write that cannot be held."""
    return _decision_status(
        code_pb2.FAILED_PRECONDITION,
        POLICY_HOLD_UNSUPPORTED,
        f"policy rule {decision.rule_id!r} holds this {what} for approval ({decision.reason}), "
        f"but a {what} cannot be held; nothing was written (dispatch a packet to have it held)",
        {"rule_id": decision.rule_id, "rule_reason": decision.reason, "policy_version": version},
    )


def rejected_unkept(decision: Decision, version: str, what: str) -> status_pb2.Status:
    """PERMISSION_DENIED for a rejected write that leaves no carcel entry (a context write)."""
    return _decision_status(
        code_pb2.PERMISSION_DENIED,
        POLICY_REJECTED,
        f"{what} rejected by policy rule {decision.rule_id!r}: {decision.reason}; "
        "nothing was written",
        {"rule_id": decision.rule_id, "rule_reason": decision.reason, "policy_version": version},
    )


async def judge_posted(
    context: grpc.aio.ServicerContext,
    governor: Governor | None,
    accepted: Accepted,
    fingerprint: str,
    now_ns: int,
    *,
    what: str,
) -> None:
    """Judge a packet posted outside Dispatch (a task, finding or record) by the policy
    in force; return if it may be stored, else fail the call (module docstring). The
    rejected packet is kept under `fingerprint` (the write's, request fields
    included), so the same post again answers the same and another is ALREADY_EXISTS."""
    if governor is None or (policy := governor.watch.policy) is None:
        return
    packet = accepted.packet
    decision = policy.evaluate(packet)
    if decision is None:
        # Refused before under another policy? A retry answers what that call did.
        async with storage_errors(context):
            earlier = await governor.store.lookup(packet.topic, packet.tracking_id)
        if earlier is not None and earlier.status == "rejected":
            counting.rejected_as(POLICY_REJECTED, 1, earlier.rule_id)
            await _status.abort_with(context, rejection(earlier))
        return
    if decision.verdict is Verdict.HOLD:
        counting.rejected_as(POLICY_HOLD_UNSUPPORTED, 1, decision.rule_id)
        await _status.abort_with(context, hold_refused(decision, policy.version, what))
    [chain] = governor.custodian.seal_decided(
        [
            (
                packet,
                accepted.content,
                _custody.REJECTED,
                f"policy rule {decision.rule_id}: {decision.reason}",
            )
        ],
        now_ns,
    )
    # Kept under the write's fingerprint (request fields included), as posted.
    write = dataclasses.replace(to_write(accepted, chain), fingerprint=fingerprint)
    async with storage_errors(context):
        [outcome] = await governor.store.decide(
            [DecisionWrite(write, Verdict.REJECT, decision.rule_id, decision.reason)],
            policy.version,
            time_remaining=context.time_remaining(),
            # Its own place is noted once stored: not another packet's.
            dispatched=False,
        )
    refused = _posted_outcome(outcome, packet, what)
    counting.rejected([refused])
    await _status.abort_with(context, refused)


def _posted_outcome(outcome: Decided, packet: packet_pb2.Packet, what: str) -> status_pb2.Status:
    if outcome.status == "rejected":
        return rejection(outcome)
    # The tracking id is an earlier dispatched packet's, on the same topic: this
    # post is not that packet's retry (a task, finding or record is never stored
    # on the topic's log, nor held).
    return _status.with_reason(
        code_pb2.ALREADY_EXISTS,
        f"tracking_id {packet.tracking_id} of this {what} is already used by "
        f"another packet on topic {packet.topic!r}",
        "TRACKING_ID_IN_USE",
    )


def context_write(
    *, origin: str | None, topic: str, scope: str, name: str, operation: str, content_type: str = ""
) -> packet_pb2.Packet:
    """The description a context write is judged by (module docstring's table);
    `origin` None: the caller's agent id."""
    if origin is None:
        principal = caller()
        origin = principal.agent_id if principal is not None else ""
    data = struct_pb2.Struct()
    data.update({"operation": operation, "content_type": content_type})
    return packet_pb2.Packet(
        origin=origin,
        topic=topic,
        context=contents_pb2.Context(scope=scope, name=name, data=data),
    )


async def judge_context_write(
    context: grpc.aio.ServicerContext, governor: Governor | None, described: packet_pb2.Packet
) -> None:
    """Judge a context write by its description; return if allowed, else fail the call
    (PERMISSION_DENIED for reject, FAILED_PRECONDITION for hold); nothing is written."""
    if governor is None or (policy := governor.watch.policy) is None:
        return
    decision = policy.evaluate(described)
    if decision is None:
        return
    what = f"context write to {described.topic!r}"
    if decision.verdict is Verdict.HOLD:
        await _status.abort_with(context, hold_refused(decision, policy.version, "context write"))
    await _status.abort_with(context, rejected_unkept(decision, policy.version, what))
