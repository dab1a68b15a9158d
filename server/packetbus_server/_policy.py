"""Governance policies: parse a TOML policy file, compile its rules, judge packets.

Pure logic, no I/O beyond the bytes handed in. A policy file:

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
import fnmatch
import hashlib
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from packetbus.v1 import packet_pb2, speech_act_pb2

from ._access.authorization import Authorization, AuthorizationError, compile_section

MAX_RULES = 1000
MAX_POLICY_BYTES = 1024 * 1024
MAX_REASON_LENGTH = 500
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
RECORD_KINDS = ("session_summary", "swarm_registry", "remediation_scan")
CONTENT_TYPES = ("task", "finding", "context", "data", "raw", "none", *RECORD_KINDS, "record")
_OPERATORS = ("eq", "ne", "in", "not_in", "gt", "ge", "lt", "le", "glob", "exists")
_RULE_KEYS = ("id", "decision", "reason", "origin", "speech_act", "topic", "content_type", "fields")
_TOP_KEYS = ("default", "approval", "rules", "authorization")
_SPEECH_PREFIX = "SPEECH_ACT_"


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


Scalar = str | float | bool | None
_MISSING = object()
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


def parse(data: bytes) -> Policy:
    """Compile a policy file's bytes; raises PolicyError naming the rule or line at fault."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"the policy file is larger than {MAX_POLICY_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(f"the policy file is not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - set(_TOP_KEYS))
    if unknown:
        raise PolicyError(f"unknown top-level key(s) {unknown}; expected {list(_TOP_KEYS)}")
    default = _verdict(doc.get("default", "allow"), "default")
    approvers = _approvers(doc.get("approval", {}))
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise PolicyError("rules must be an array of tables ([[rules]])")
    if len(raw_rules) > MAX_RULES:
        raise PolicyError(f"{len(raw_rules)} rules; at most {MAX_RULES}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        rule = _rule(index, raw)
        if rule.id in seen:
            raise PolicyError(f"rules[{index}]: id {rule.id!r} is used by an earlier rule")
        seen.add(rule.id)
        rules.append(rule)
    authorization = None
    if "authorization" in doc:
        try:
            authorization = compile_section(doc["authorization"])
        except AuthorizationError as exc:
            raise PolicyError(str(exc)) from None
    default_decision = (
        None
        if default is Verdict.ALLOW
        else Decision(default, "default", f"no rule matched; the policy default is {default.value}")
    )
    return Policy(
        rules=tuple(rules),
        default=default,
        version=hashlib.sha256(data).hexdigest(),
        approvers=approvers,
        authorization=authorization,
        _default_decision=default_decision,
        _approver=_glob_matcher(approvers) if approvers else None,
    )


def _verdict(value: object, where: str) -> Verdict:
    try:
        return Verdict(value)
    except ValueError:
        raise PolicyError(
            f"{where}: decision must be one of allow, reject, hold, not {value!r}"
        ) from None


def _approvers(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, dict):
        raise PolicyError("approval must be a table ([approval])")
    unknown = sorted(set(raw) - {"approvers"})
    if unknown:
        raise PolicyError(f"approval: unknown key(s) {unknown}; expected ['approvers']")
    if "approvers" not in raw:
        return ()
    return tuple(_strings(raw["approvers"], "approval.approvers"))


def _strings(value: object, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise PolicyError(f"{where}: must be a non-empty string or a list of them")
    return values  # type: ignore[return-value]


def _rule(index: int, raw: object) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be a table")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise PolicyError(
            f"{where}: id is required: 1-64 characters of A-Z a-z 0-9 _ . : - "
            f"(not starting with a symbol), not {rule_id!r}"
        )
    where = f"{where} (id {rule_id!r})"
    unknown = sorted(set(raw) - set(_RULE_KEYS))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown}; expected {list(_RULE_KEYS)}")
    if "decision" not in raw:
        raise PolicyError(f"{where}: decision is required (allow, reject or hold)")
    verdict = _verdict(raw["decision"], where)
    reason = raw.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH or "\n" in reason:
        raise PolicyError(f"{where}: reason must be one line of at most {MAX_REASON_LENGTH} chars")
    if verdict is not Verdict.ALLOW and not reason.strip():
        raise PolicyError(f"{where}: a {verdict.value} rule needs a reason")
    checks: list[Check] = []
    if "speech_act" in raw:
        checks.append(_speech_act_check(raw["speech_act"], where))
    if "content_type" in raw:
        checks.append(_content_type_check(raw["content_type"], where))
    if "topic" in raw:
        matcher = _glob_matcher(_strings(raw["topic"], f"{where}: topic"))
        checks.append(lambda p: matcher(p.topic))
    if "origin" in raw:
        origin = _glob_matcher(_strings(raw["origin"], f"{where}: origin"))
        checks.append(lambda p: origin(p.origin))
    if "fields" in raw:
        fields = raw["fields"]
        if not isinstance(fields, dict) or not fields:
            raise PolicyError(f"{where}: fields must be a non-empty table of path = condition")
        checks.extend(
            _field_check(path, cond, f"{where}: fields.{path}") for path, cond in fields.items()
        )
    decision = None if verdict is Verdict.ALLOW else Decision(verdict, rule_id, reason)
    return Rule(rule_id, verdict, reason, tuple(checks), decision)


def _glob_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    literal = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    globs = [p for p in patterns if p not in literal]
    if not globs:
        return literal.__contains__
    regex = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))
    return lambda value: value in literal or regex.match(value) is not None


def speech_act_value(name: str) -> int | None:
    """The enum value of "REQUEST", "request", "query-if" or "SPEECH_ACT_REQUEST"."""
    key = name.strip().upper().replace("-", "_")
    if not key.startswith(_SPEECH_PREFIX):
        key = _SPEECH_PREFIX + key
    if key == "SPEECH_ACT_UNSPECIFIED" or key not in speech_act_pb2.SpeechAct.keys():  # noqa: SIM118
        return None
    return speech_act_pb2.SpeechAct.Value(key)


def _speech_act_check(raw: object, where: str) -> Check:
    values = set()
    for name in _strings(raw, f"{where}: speech_act"):
        value = speech_act_value(name)
        if value is None:
            raise PolicyError(
                f"{where}: speech_act {name!r} is not a speech act (e.g. REQUEST, INFORM)"
            )
        values.add(value)
    accepted = frozenset(values)
    return lambda p: p.speech_act in accepted


def _content_type_check(raw: object, where: str) -> Check:
    kinds: set[str] = set()
    media: list[str] = []
    for value in _strings(raw, f"{where}: content_type"):
        if "/" in value:
            media.append(value.lower())
        elif value == "record":  # a swarm record of any kind (RecordService.PutRecord)
            kinds.update(RECORD_KINDS)
        elif value in CONTENT_TYPES:
            kinds.add(value)
        else:
            raise PolicyError(
                f"{where}: content_type {value!r} is not one of {list(CONTENT_TYPES)} "
                "nor a media type like application/json"
            )
    media_match = _glob_matcher(media) if media else None

    def check(packet: packet_pb2.Packet) -> bool:
        kind = packet.WhichOneof("contents") or "none"
        if kind in kinds:
            return True
        return (
            media_match is not None
            and kind == "raw"
            and media_match(packet.raw.content_type.lower())
        )

    return check


# -- content fields --------------------------------------------------------------------


def _value(v: struct_pb2.Value) -> object:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return v.struct_value
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    return None


def resolve(packet: packet_pb2.Packet, path: Sequence[str]) -> object:
    """The value at `path` in the packet's contents, or _MISSING."""
    kind = packet.WhichOneof("contents")
    if kind is None or kind == "raw":
        return _MISSING
    node: object = getattr(packet, kind)
    for part in path:
        if isinstance(node, struct_pb2.Struct):
            if part not in node.fields:
                return _MISSING
            node = _value(node.fields[part])
        elif isinstance(node, Message):
            descriptor = node.DESCRIPTOR.fields_by_name.get(part)
            if descriptor is None:
                return _MISSING
            if descriptor.message_type is not None:
                try:
                    if not node.HasField(part):
                        return _MISSING
                except ValueError:  # repeated and map fields have no presence
                    pass
            node = getattr(node, part)
        elif isinstance(node, Mapping):
            if part not in node:
                return _MISSING
            node = node[part]
        else:
            return _MISSING
    if isinstance(node, int) and not isinstance(node, bool):
        return float(node)
    if isinstance(node, Message):
        return node  # compared with nothing: only `exists` sees it
    if hasattr(node, "__len__") and not isinstance(node, str | Mapping):
        return list(node)  # type: ignore[call-overload]
    return node


def _scalar(value: object, where: str) -> Scalar:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise PolicyError(f"{where}: numbers must be finite")
        return float(value)
    raise PolicyError(f"{where}: expected a string, number or boolean, not {value!r}")


def _equal(a: object, b: Scalar) -> bool:
    # TOML true is not 1: booleans equal booleans only.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _number(value: object) -> float | None:
    if isinstance(value, float) and not isinstance(value, bool):
        return value
    return None


def _operator(op: str, arg: object, where: str) -> Callable[[object], bool]:
    if op in ("eq", "ne"):
        want = _scalar(arg, where)
        if op == "eq":
            return lambda v: _equal(v, want)
        return lambda v: not _equal(v, want)
    if op in ("in", "not_in"):
        if not isinstance(arg, list) or not arg:
            raise PolicyError(f"{where}: {op} takes a non-empty list")
        options = [_scalar(x, f"{where}.{op}") for x in arg]
        if op == "in":
            return lambda v: any(_equal(v, o) for o in options)
        return lambda v: not any(_equal(v, o) for o in options)
    if op in ("gt", "ge", "lt", "le"):
        if isinstance(arg, bool) or not isinstance(arg, int | float):
            raise PolicyError(f"{where}: {op} takes a number, not {arg!r}")
        bound = float(_scalar(arg, where))  # type: ignore[arg-type]
        compare: Callable[[float], bool] = {
            "gt": lambda x: x > bound,
            "ge": lambda x: x >= bound,
            "lt": lambda x: x < bound,
            "le": lambda x: x <= bound,
        }[op]

        def numeric(v: object) -> bool:
            number = _number(v)
            return number is not None and compare(number)

        return numeric
    if op == "glob":
        match = _glob_matcher(_strings(arg, f"{where}.glob"))
        return lambda v: isinstance(v, str) and match(v)
    raise PolicyError(f"{where}: unknown operator {op!r}; expected one of {list(_OPERATORS)}")


def _field_check(path: str, condition: object, where: str) -> Check:
    parts = path.split(".")
    if not all(parts):
        raise PolicyError(f"{where}: the path has an empty segment")
    if isinstance(condition, dict):
        if not condition:
            raise PolicyError(f"{where}: the condition table is empty")
        exists: bool | None = None
        tests = []
        for op, arg in condition.items():
            if op == "exists":
                if not isinstance(arg, bool):
                    raise PolicyError(f"{where}: exists takes true or false")
                exists = arg
            else:
                tests.append(_operator(op, arg, where))
        if exists is False and tests:
            raise PolicyError(f"{where}: exists = false cannot be combined with other operators")
        all_tests = tuple(tests)

        def check(packet: packet_pb2.Packet) -> bool:
            value = resolve(packet, parts)
            if value is _MISSING:
                return exists is False
            if exists is False:
                return False
            return all(t(value) for t in all_tests)

        return check
    if isinstance(condition, list):
        raise PolicyError(f"{where}: to match any of several values write {{ in = [...] }}")
    equal = _operator("eq", condition, where)
    return lambda packet: (value := resolve(packet, parts)) is not _MISSING and equal(value)
