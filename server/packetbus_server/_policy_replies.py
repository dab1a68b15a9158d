"""Reply building for PolicyService: the policy in force (GetPolicy) and held
packets (HeldPacket, and about how many bytes one takes in a reply)."""

from __future__ import annotations

from packetbus.v1 import policy_service_pb2 as pb

from ._access.authorization import Authorization
from ._packet_service import PacketService
from ._packing import stored_size
from ._policy import Verdict
from ._policy_store import HeldRecord
from ._policy_watch import PolicyWatch
from ._stored_packets import stored_packet

_VERDICTS = {
    Verdict.ALLOW: pb.POLICY_VERDICT_ALLOW,
    Verdict.REJECT: pb.POLICY_VERDICT_REJECT,
    Verdict.HOLD: pb.POLICY_VERDICT_HOLD,
}


def held_size(record: HeldRecord) -> int:
    """About how many bytes a held record takes as a HeldPacket."""
    return (
        stored_size(len(record.stored), record.content_length)
        + len(record.topic)
        + len(record.rule_id)
        + len(record.reason)
        + len(record.version)
    )


def authorization_message(authorization: Authorization) -> pb.AuthorizationPolicy:
    """The `[authorization]` section as written, for GetPolicy."""
    return pb.AuthorizationPolicy(
        principals=[
            pb.AuthorizationPrincipal(
                match=entry.match, roles=entry.roles, agent_id=entry.agent_id or ""
            )
            for entry in authorization.principals
        ],
        roles=[
            pb.AuthorizationRole(
                name=role.name,
                grants=[
                    pb.AuthorizationGrant(permissions=g.permissions, resources=g.resources)
                    for g in role.grants
                ],
            )
            for role in authorization.roles.values()
        ],
    )


def policy_response(watch: PolicyWatch) -> pb.GetPolicyResponse:
    """GetPolicy's reply: the policy in force as written (rules, approvers, the
    `[authorization]` section), when it was loaded, and the last load error if any."""
    response = pb.GetPolicyResponse(path=str(watch.path) if watch.path else "")
    policy = watch.policy
    if policy is not None:
        response.loaded = True
        response.version = policy.version
        response.loaded_at.FromMilliseconds(watch.loaded_at_ms)
        response.default_verdict = _VERDICTS[policy.default]
        response.approvers.extend(policy.approvers)
        response.rules.extend(
            pb.PolicyRule(id=r.id, verdict=_VERDICTS[r.verdict], reason=r.reason)
            for r in policy.rules
        )
        if policy.authorization is not None:
            response.authorization.CopyFrom(authorization_message(policy.authorization))
    if watch.failure is not None:
        response.load_error = watch.failure.message
        response.load_error_at.FromMilliseconds(watch.failure.at_ms)
    return response


def held_message(record: HeldRecord, packet_service: PacketService) -> pb.HeldPacket:
    """A held record as the wire's HeldPacket (its packet with the topic's head)."""
    stored = stored_packet(
        record.topic,
        "",
        record.expires_at_ms,
        record.stored,
        record.content_length,
        stored_at_ms=record.held_at_ms,
    )
    packet_service.attach_head(stored)
    held = pb.HeldPacket(
        topic=record.topic,
        rule_id=record.rule_id,
        reason=record.reason,
        policy_version=record.version,
        packet=stored,
    )
    held.held_at.FromMilliseconds(record.held_at_ms)
    return held
