"""Identity binds what names an agent: origins, authors, workers, inboxes.

Issue 14, item 4: "a packet's origin must be the calling principal's agent id, or
one it is permitted to act for; an inbox is read only by its agent". Both come to
one question, `gate.may_act_as(agent_id)`: the caller's own agent id, or an agent
id the policy grants it `agents.act_for` on (a coordinator for the workers it
spawned). A refusal names permission `agents.act_for` and the agent id as its
resource, so the policy line that would allow it is plain from the ErrorInfo.

Always allowed while authorization is off or the caller is LOCAL (the server's two
README commands): nothing changes for a server with no `[authorization]` section.

Which request fields name the caller (bound) and which do not is written beside
each field in the protos; in short: a packet's `origin` (Dispatch, PostTask,
PostFinding, PutRecord), Escalate's `origin`, context `author`, AppendMemory's and
AppendTrace's `agent`, ClaimTask's `worker` are bound, and so is the worker of the
claim a settlement's fencing token names (_task_settling: the token is a counter,
no proof of who calls). A Pull's `consumer` (a name inside a group) and a
Finding's `worker_id` (contents the origin asserts) are not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import status_pb2

from .. import _status
from .._fields import inbox_owner
from .gate import allows, authorizing, caller, denial, may_act_as
from .permissions import Permission
from .principal import LOCAL


def acting_refusal(agent_id: str, field: str) -> status_pb2.Status | None:
    """None when the running call may name `agent_id` in request field `field`
    (a path such as ``packets[2].origin``); else the PERMISSION_DENIED status
    (ErrorInfo: permission agents.act_for, resource `agent_id`, principal)."""
    if may_act_as(agent_id):
        return None
    principal = caller()
    assert principal is not None  # may_act_as is True outside an admitted call
    status = denial(principal, Permission.AGENTS_ACT_FOR, agent_id)
    status.message = (
        f"{field} names agent {agent_id!r}; principal {principal.name!r} is agent "
        f"{principal.agent_id!r} and lacks permission agents.act_for on {agent_id!r}"
    )
    return status


def packet_refusal(topic: str, origin: str, index: int) -> status_pb2.Status | None:
    """None when the running call may dispatch a packet to `topic` as `origin`;
    else why not, as packet `index`'s result: topics.publish on the topic first,
    then the origin's binding (both PERMISSION_DENIED with an ErrorInfo)."""
    if not allows(Permission.TOPICS_PUBLISH, topic):
        principal = caller()
        assert principal is not None
        return denial(principal, Permission.TOPICS_PUBLISH, topic)
    return acting_refusal(origin, f"packets[{index}].origin")


class SenderCheck:
    """`packet_refusal` for the packets of one batch, at little cost per packet: none
    while authorization is off or the caller is LOCAL (the hot path of a server
    with no `[authorization]`: one look at the call, not one per packet), and each
    (topic, origin) pair allowed once is not asked of the authorizer again (a
    batch is mostly one topic and one origin)."""

    __slots__ = ("_active", "_allowed")

    def __init__(self) -> None:
        self._active = authorizing()
        self._allowed: set[tuple[str, str]] = set()

    def refusal(self, topic: str, origin: str, index: int) -> status_pb2.Status | None:
        """As `packet_refusal(topic, origin, index)`."""
        if not self._active or (topic, origin) in self._allowed:
            return None
        refusal = packet_refusal(topic, origin, index)
        if refusal is None:
            self._allowed.add((topic, origin))
        return refusal


async def require_acting(context: grpc.aio.ServicerContext, agent_id: str, field: str) -> None:
    """Abort the call with PERMISSION_DENIED unless it may name `agent_id` in `field`."""
    refusal = acting_refusal(agent_id, field)
    if refusal is not None:
        await _status.abort_with(context, refusal)


def inbox_refusal(topic: str) -> status_pb2.Status | None:
    """None unless `topic` is an agent's inbox the running call may not read.

    An inbox is read (subscribed, pulled, settled, its groups managed, its packets
    got) only by its agent, or by a principal the policy lets act for that agent
    (agents.act_for on it: whoever may send as an agent may read what is sent to
    it). Sending to an inbox needs only topics.publish on it.
    """
    owner = inbox_owner(topic)
    if owner is None or may_act_as(owner):
        return None
    principal = caller()
    assert principal is not None
    status = denial(principal, Permission.AGENTS_ACT_FOR, owner)
    status.message = (
        f"{topic!r} is the inbox of agent {owner!r}, read only by that agent; principal "
        f"{principal.name!r} is agent {principal.agent_id!r} and lacks permission "
        f"agents.act_for on {owner!r}"
    )
    return status


async def require_inbox_reader(context: grpc.aio.ServicerContext, topic: str) -> None:
    """Abort the call with PERMISSION_DENIED if `topic` is an inbox it may not read."""
    refusal = inbox_refusal(topic)
    if refusal is not None:
        await _status.abort_with(context, refusal)


def _topic(request: Any) -> str:
    return str(request.topic)


# The RPCs that read or consume a topic's packets by a topic their request names
# (Pull's first message and GetPacket's stored topic are checked in the services).
# Carcel, held-packet and audit RPCs are not here: they are operators' and
# auditors' permissions, granted on topic patterns on purpose.
INBOX_READS: dict[str, Callable[[Any], str]] = {
    "packetbus.v1.PacketService/Subscribe": _topic,
    "packetbus.v1.ConsumerGroupService/CreateConsumerGroup": _topic,
    "packetbus.v1.ConsumerGroupService/GetConsumerGroup": _topic,
    "packetbus.v1.ConsumerGroupService/ListConsumerGroups": _topic,
    "packetbus.v1.ConsumerGroupService/DeleteConsumerGroup": _topic,
    "packetbus.v1.ConsumerGroupService/Acknowledge": _topic,
    "packetbus.v1.ConsumerGroupService/Nack": _topic,
    "packetbus.v1.ConsumerGroupService/ExtendLeases": _topic,
}


async def admit_inbox_read(method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
    """After the gate: abort a call of `method` that reads an inbox not its caller's."""
    topic_of = INBOX_READS.get(method)
    if topic_of is not None and request is not None:
        principal = caller()
        if principal is not None and principal is not LOCAL:
            await require_inbox_reader(context, topic_of(request))


__all__ = [
    "INBOX_READS",
    "SenderCheck",
    "acting_refusal",
    "admit_inbox_read",
    "inbox_owner",
    "inbox_refusal",
    "packet_refusal",
    "require_acting",
    "require_inbox_reader",
]
