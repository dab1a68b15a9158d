"""Parsing a policy file: its TOML read, every key checked, each rule compiled into
checks, and the Policy built (`parse`); the file's format is in _policy's docstring.

Apart from the model (_policy) so that what a policy is and how it judges reads on
its own, and from the checks (_policy_matchers, _policy_fields) that each rule's
match keys compile into.
"""

from __future__ import annotations

import hashlib
import re
import tomllib

from ._access.authorization import AuthorizationError, compile_section
from ._policy import Check, Decision, Policy, PolicyError, Rule, Verdict
from ._policy_fields import field_check
from ._policy_matchers import content_type_check, glob_matcher, speech_act_check, string_list

MAX_RULES = 1000
MAX_POLICY_BYTES = 1024 * 1024
MAX_REASON_LENGTH = 500
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_RULE_KEYS = ("id", "decision", "reason", "origin", "speech_act", "topic", "content_type", "fields")
_TOP_KEYS = ("default", "approval", "rules", "authorization")


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
        _approver=glob_matcher(approvers) if approvers else None,
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
    return tuple(string_list(raw["approvers"], "approval.approvers"))


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
        checks.append(speech_act_check(raw["speech_act"], where))
    if "content_type" in raw:
        checks.append(content_type_check(raw["content_type"], where))
    if "topic" in raw:
        matcher = glob_matcher(string_list(raw["topic"], f"{where}: topic"))
        checks.append(lambda p: matcher(p.topic))
    if "origin" in raw:
        origin = glob_matcher(string_list(raw["origin"], f"{where}: origin"))
        checks.append(lambda p: origin(p.origin))
    if "fields" in raw:
        fields = raw["fields"]
        if not isinstance(fields, dict) or not fields:
            raise PolicyError(f"{where}: fields must be a non-empty table of path = condition")
        checks.extend(
            field_check(path, cond, f"{where}: fields.{path}") for path, cond in fields.items()
        )
    decision = None if verdict is Verdict.ALLOW else Decision(verdict, rule_id, reason)
    return Rule(rule_id, verdict, reason, tuple(checks), decision)
