"""Governance policies: what a compiled policy is and how it judges a packet.

Pure logic, no I/O. The file is parsed in _policy_parse, a rule's match keys are
compiled in _policy_matchers and its content fields in _policy_fields. A policy file:

    default = "allow"                  # what no rule matches gets: allow | reject | hold

    [approval]
    approvers = ["guardian-*"]         # agents that may approve or deny held packets
                                       # (globs); absent: any agent with a registered key

    [[rules]]                          # ordered: the first rule that matches decides
    id = "spawn-needs-review"          # unique; 1-64 of A-Z a-z 0-9 _ . : -
    decision = "hold"                  # allow | reject | hold
    reason = "spawning drones needs a guardian"   # required for reject and hold
    origin = ["planner-*", "haiku-*"]  # match keys, all optional, all must hold:
    speech_act = "REQUEST"             #   globs (or lists of them) over origin and topic;
    topic = "ops.*"                    #   speech act names as in the proto enum;
    content_type = "data"              #   task | finding | context | data | raw | none,
                                       #   session_summary | swarm_registry |
                                       #   remediation_scan | record (any of those three),
                                       #   or a raw media type glob ("application/json*")
    [rules.fields]                     # content fields by dotted path: into `data`, or
    primitive = "logistics.spawn"      # into the typed contents (task.payload.x is
    vertical = { in = ["drones", "robotics"] }   # "payload.x" for a task)
    entropy = { gt = 0.7 }             # operators: eq ne in not_in gt ge lt le glob exists

A rule with no match keys matches every packet. A field a packet does not have
matches only ``{ exists = false }``.

An `[authorization]` section (who may call what: principals, roles, grants) turns
authorization on; its format and rules are in `_access.authorization`.

The same policy decides every write, not only Dispatch (see _governance for the
whole of it): PostTask, PostFinding and PutRecord are judged by their packets
(content_type task, finding, record); Escalate by the ESCALATE packet it
dispatches, with the caller's origin. Context writes carry no packet: each is
judged by a description with content_type "context", origin the writer, and
topic ``context/<scope>`` (PutContext, DeleteContext), ``global/<key>``
(SetGlobalContext, DeleteGlobalContext), ``memory/<agent>`` (AppendMemory) or
``trace/<task id>`` (AppendTrace); fields ``scope``, ``name`` (document name,
global key or entry id) and ``data.operation`` (put, delete, set, append).
Outside Dispatch a reject fails the call with PERMISSION_DENIED (ErrorInfo
POLICY_REJECTED; a packet goes to the carcel, a context write leaves nothing),
and a hold, which only Dispatch can honour, fails it with FAILED_PRECONDITION
(ErrorInfo POLICY_HOLD_UNSUPPORTED), nothing written.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from packetbus.v1 import packet_pb2

from ._access.authorization import Authorization


class PolicyError(ValueError):
    """The policy file is not valid; the message says where and why."""


class Verdict(enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy decided about one packet (never ALLOW: allowing is None)."""

    verdict: Verdict
    rule_id: str
    reason: str


Check = Callable[[packet_pb2.Packet], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    verdict: Verdict
    reason: str
    # Every one must hold (cheapest first).
    checks: tuple[Check, ...]
    decision: Decision | None

    def matches(self, packet: packet_pb2.Packet) -> bool:
        return all(check(packet) for check in self.checks)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    default: Verdict
    # SHA-256 of the file's bytes, hex: which policy decided.
    version: str
    approvers: tuple[str, ...] = ()
    # The [authorization] section; None: no section, authorization is off.
    authorization: Authorization | None = None
    _default_decision: Decision | None = field(default=None, repr=False)
    _approver: Callable[[str], bool] | None = field(default=None, repr=False)

    def evaluate(self, packet: packet_pb2.Packet) -> Decision | None:
        """The first matching rule's decision, else the default; None means allowed."""
        for rule in self.rules:
            if rule.matches(packet):
                return rule.decision
        return self._default_decision

    def may_approve(self, agent_id: str) -> bool:
        return self._approver is None or self._approver(agent_id)
