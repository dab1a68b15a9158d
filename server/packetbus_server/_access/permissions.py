"""Permissions, and which one each RPC needs on which resource.

A permission is granted on resources by glob pattern (the policy file's
`[authorization]` section). Each permission names one kind of resource, so a
pattern is matched against a bare name: a topic, a task queue, a task id, a
context scope, a global-context key, an agent id, a record kind (its contents
field: session_summary, swarm_registry, remediation_scan). An empty
resource (a listing over every topic, the policy itself) is matched by ``*``.

`RULES` is the only place that says what an RPC needs. Where a request names its
resource the gate checks before the servicer runs; a rule marked `in_service`
is checked where the resource is known: each packet of a Dispatch batch, the
first message of a stream, a packet's topic once it is read.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packetbus.v1 import record_service_pb2


class Permission(enum.StrEnum):
    """What a role may be granted, each over one kind of resource (in brackets)."""

    TOPICS_PUBLISH = "topics.publish"  # dispatch packets to [topic]
    TOPICS_SUBSCRIBE = "topics.subscribe"  # subscribe to, read packets of, list [topic]
    TOPICS_CONSUME = "topics.consume"  # pull, ack, nack, extend in groups of [topic]
    TOPICS_MANAGE = "topics.manage"  # set the retention limits of [topic]
    GROUPS_MANAGE = "groups.manage"  # create, delete consumer groups of [topic]
    GROUPS_READ = "groups.read"  # get, list consumer groups of [topic]
    TASKS_POST = "tasks.post"  # post tasks to [queue]
    TASKS_CLAIM = "tasks.claim"  # claim, heartbeat, release, complete, fail in [queue]
    TASKS_READ = "tasks.read"  # get, list, watch tasks of [queue]; list [queue] among the queues
    FINDINGS_POST = "findings.post"  # post findings, escalate for [task id]
    FINDINGS_READ = "findings.read"  # get, list findings, conflicts, escalations of [task id]
    CONTEXT_READ = "context.read"  # get, list, watch contexts of [scope]
    CONTEXT_WRITE = "context.write"  # put, delete contexts of [scope]
    GLOBAL_CONTEXT_READ = "global_context.read"  # get, list [key]
    GLOBAL_CONTEXT_WRITE = "global_context.write"  # set, delete [key]
    MEMORY_READ = "memory.read"  # list the memory of [agent id]
    MEMORY_WRITE = "memory.write"  # append to the memory of [agent id]
    TRACES_READ = "traces.read"  # list the traces of [task id]
    TRACES_WRITE = "traces.write"  # append to the traces of [task id]
    RECORDS_READ = "records.read"  # get, list records of [kind]
    RECORDS_WRITE = "records.write"  # put records of [kind]
    AGENTS_REGISTER = "agents.register"  # register, heartbeat, deregister [agent id]
    AGENTS_READ = "agents.read"  # get, list, watch agents ([agent id]; "" for all)
    AGENTS_ACT_FOR = "agents.act_for"  # send packets as origin [agent id]
    KEYS_MANAGE = "keys.manage"  # register the signing key of [agent id]
    PACKETS_APPROVE = "packets.approve"  # approve or deny held packets of [topic]
    HELD_READ = "held.read"  # list and read held packets, decision counts of [topic]
    CARCEL_READ = "carcel.read"  # list and read carcel entries of [topic]
    CARCEL_REQUEUE = "carcel.requeue"  # requeue carcel entries of [topic]
    CARCEL_PURGE = "carcel.purge"  # purge carcel entries of [topic]
    POLICY_READ = "policy.read"  # read the policy [""]
    AUDIT_EXPORT = "audit.export"  # export and verify the packets of [topic]


Resource = Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class Rule:
    """What one RPC needs: `permission` on `resource(request)`; no permission: any
    authenticated principal may call it; `in_service`: the servicer checks."""

    permission: Permission | None
    resource: Resource | None = None
    in_service: bool = False


def _field(name: str) -> Resource:
    return lambda request: str(getattr(request, name))


def _none(request: Any) -> str:
    return ""


def _record_kind(request: Any) -> str:
    """A record kind as its contents field is named ("session_summary"; RecordKind
    RECORD_KIND_SESSION_SUMMARY): "" for none."""
    value = record_service_pb2.RecordKind.DESCRIPTOR.values_by_number.get(request.kind)
    if value is None or not request.kind:
        return ""  # the service refuses it as INVALID_ARGUMENT, if allowed this far
    return value.name.removeprefix("RECORD_KIND_").lower()


P = Permission
_AGENTS = "packetbus.v1.AgentService/"
_CARCEL = "packetbus.v1.CarcelService/"
_GROUPS = "packetbus.v1.ConsumerGroupService/"
_CONTEXT = "packetbus.v1.ContextService/"
_CUSTODY = "packetbus.v1.CustodyService/"
_FINDINGS = "packetbus.v1.FindingService/"
_PACKETS = "packetbus.v1.PacketService/"
_POLICY = "packetbus.v1.PolicyService/"
_RECORDS = "packetbus.v1.RecordService/"
_TASKS = "packetbus.v1.TaskService/"
_TOPICS = "packetbus.v1.TopicService/"
_IN_SERVICE = True

# Keyed by "package.Service/Method" (a gRPC method path without its leading "/").
RULES: dict[str, Rule] = {
    _AGENTS + "RegisterAgent": Rule(P.AGENTS_REGISTER, lambda r: str(r.agent.id)),
    _AGENTS + "HeartbeatAgent": Rule(P.AGENTS_REGISTER, _field("agent_id")),
    _AGENTS + "DeregisterAgent": Rule(P.AGENTS_REGISTER, _field("agent_id")),
    _AGENTS + "GetAgent": Rule(P.AGENTS_READ, _field("agent_id")),
    _AGENTS + "ListAgents": Rule(P.AGENTS_READ, _none),
    _AGENTS + "WatchAgents": Rule(P.AGENTS_READ, _none),
    _CARCEL + "ListCarcelEntries": Rule(P.CARCEL_READ, _field("topic")),
    _CARCEL + "GetCarcelEntry": Rule(P.CARCEL_READ, _field("topic")),
    _CARCEL + "RequeueCarcelEntry": Rule(P.CARCEL_REQUEUE, _field("topic")),
    _CARCEL + "PurgeCarcelEntries": Rule(P.CARCEL_PURGE, _field("topic")),
    _GROUPS + "CreateConsumerGroup": Rule(P.GROUPS_MANAGE, _field("topic")),
    _GROUPS + "GetConsumerGroup": Rule(P.GROUPS_READ, _field("topic")),
    _GROUPS + "ListConsumerGroups": Rule(P.GROUPS_READ, _field("topic")),
    _GROUPS + "DeleteConsumerGroup": Rule(P.GROUPS_MANAGE, _field("topic")),
    _GROUPS + "Pull": Rule(P.TOPICS_CONSUME, in_service=_IN_SERVICE),  # first message
    _GROUPS + "Acknowledge": Rule(P.TOPICS_CONSUME, _field("topic")),
    _GROUPS + "Nack": Rule(P.TOPICS_CONSUME, _field("topic")),
    _GROUPS + "ExtendLeases": Rule(P.TOPICS_CONSUME, _field("topic")),
    _CONTEXT + "PutContext": Rule(P.CONTEXT_WRITE, in_service=_IN_SERVICE),  # its header
    _CONTEXT + "GetContext": Rule(P.CONTEXT_READ, _field("scope")),
    _CONTEXT + "DeleteContext": Rule(P.CONTEXT_WRITE, _field("scope")),
    _CONTEXT + "ListContexts": Rule(P.CONTEXT_READ, _field("scope")),
    _CONTEXT + "WatchContext": Rule(P.CONTEXT_READ, _field("scope")),
    _CONTEXT + "SetGlobalContext": Rule(P.GLOBAL_CONTEXT_WRITE, _field("key")),
    _CONTEXT + "GetGlobalContext": Rule(P.GLOBAL_CONTEXT_READ, _field("key")),
    _CONTEXT + "DeleteGlobalContext": Rule(P.GLOBAL_CONTEXT_WRITE, _field("key")),
    _CONTEXT + "ListGlobalContext": Rule(P.GLOBAL_CONTEXT_READ, _none),
    _CONTEXT + "AppendMemory": Rule(P.MEMORY_WRITE, _field("agent")),
    _CONTEXT + "ListMemory": Rule(P.MEMORY_READ, _field("agent")),
    _CONTEXT + "AppendTrace": Rule(P.TRACES_WRITE, _field("task_id")),
    _CONTEXT + "ListTraces": Rule(P.TRACES_READ, _field("task_id")),
    _CUSTODY + "GetSigningKeys": Rule(None),  # public keys: any authenticated caller
    _CUSTODY + "RegisterAgentKey": Rule(P.KEYS_MANAGE, _field("agent_id")),
    _CUSTODY + "VerifyCustody": Rule(P.AUDIT_EXPORT, in_service=_IN_SERVICE),  # its topic
    # audit.export on its topic ('' for all), tasks.read on its task_queue,
    # findings.read on its finding_task_id, or records.read on its record_kind
    # (_placed_export.source).
    _CUSTODY + "ExportPackets": Rule(P.AUDIT_EXPORT, in_service=_IN_SERVICE),
    _FINDINGS + "PostFinding": Rule(P.FINDINGS_POST, lambda r: str(r.packet.finding.task_id)),
    _FINDINGS + "GetFinding": Rule(P.FINDINGS_READ, _field("task_id")),
    _FINDINGS + "ListFindings": Rule(P.FINDINGS_READ, _field("task_id")),
    _FINDINGS + "DetectConflicts": Rule(P.FINDINGS_READ, _field("task_id")),
    _FINDINGS + "Escalate": Rule(P.FINDINGS_POST, _field("task_id")),
    _FINDINGS + "ListEscalations": Rule(P.FINDINGS_READ, _field("task_id")),
    _PACKETS + "Dispatch": Rule(P.TOPICS_PUBLISH, in_service=_IN_SERVICE),  # each packet
    # Each packet of each batch, as Dispatch.
    _PACKETS + "DispatchStream": Rule(P.TOPICS_PUBLISH, in_service=_IN_SERVICE),
    _PACKETS + "GetPacket": Rule(P.TOPICS_SUBSCRIBE, in_service=_IN_SERVICE),  # its topic
    _PACKETS + "Subscribe": Rule(P.TOPICS_SUBSCRIBE, _field("topic")),
    _PACKETS + "GetServerInfo": Rule(None),  # the limits a client must know
    _POLICY + "GetPolicy": Rule(P.POLICY_READ, _none),
    _POLICY + "ListHeldPackets": Rule(P.HELD_READ, _field("topic")),
    _POLICY + "GetHeldPacket": Rule(P.HELD_READ, _field("topic")),
    _POLICY + "ApprovePacket": Rule(P.PACKETS_APPROVE, _field("topic")),
    _POLICY + "DenyPacket": Rule(P.PACKETS_APPROVE, _field("topic")),
    _POLICY + "GetPolicyStats": Rule(P.HELD_READ, _field("topic")),
    _RECORDS + "PutRecord": Rule(P.RECORDS_WRITE, in_service=_IN_SERVICE),  # its kind
    _RECORDS + "GetRecord": Rule(P.RECORDS_READ, _record_kind),
    _RECORDS + "ListRecords": Rule(P.RECORDS_READ, _record_kind),
    _TOPICS + "SetTopicRetention": Rule(P.TOPICS_MANAGE, _field("topic")),
    _TOPICS + "GetTopicRetention": Rule(P.TOPICS_SUBSCRIBE, _field("topic")),
    # Filtered, never refused: a topic is listed only to callers with topics.subscribe
    # on it (_topic_service._may_read).
    _TOPICS + "ListTopics": Rule(P.TOPICS_SUBSCRIBE, in_service=_IN_SERVICE),
    _TASKS + "PostTask": Rule(P.TASKS_POST, lambda r: str(r.packet.topic)),
    _TASKS + "ClaimTask": Rule(P.TASKS_CLAIM, _field("queue")),
    _TASKS + "HeartbeatTask": Rule(P.TASKS_CLAIM, _field("queue")),
    _TASKS + "ReleaseTask": Rule(P.TASKS_CLAIM, _field("queue")),
    _TASKS + "CompleteTask": Rule(P.TASKS_CLAIM, _field("queue")),
    _TASKS + "FailTask": Rule(P.TASKS_CLAIM, _field("queue")),
    _TASKS + "GetTask": Rule(P.TASKS_READ, _field("queue")),
    _TASKS + "ListTasks": Rule(P.TASKS_READ, _field("queue")),
    _TASKS + "ListTaskResults": Rule(P.TASKS_READ, _field("queue")),
    _TASKS + "WatchTasks": Rule(P.TASKS_READ, _field("queue")),
    # Filters: a queue the caller may not read is left out (_task_queues), not refused.
    _TASKS + "ListTaskQueues": Rule(P.TASKS_READ, in_service=_IN_SERVICE),
}
