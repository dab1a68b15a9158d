"""``packetbus policy``: governance from the command line (policy, approval queue, counts)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ._cli_args import fail
from ._cli_json import json_line, json_pretty
from ._cli_progress import json_output
from ._client import Client
from ._config import AgentIdentity

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def add_parsers(commands: Any) -> None:
    policy = commands.add_parser(
        "policy", help="governance: the policy in force, held packets, approvals, counts"
    )
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="POLICY_COMMAND")
    sub.add_parser("show", help="print the policy in force (and its last load error) as JSON")
    check = sub.add_parser(
        "check", help="validate a policy file locally, without a server; exit 1 if invalid"
    )
    check.add_argument("file", type=Path, metavar="FILE")
    can = sub.add_parser(
        "can",
        help="may a principal do PERMISSION on RESOURCE under this policy file? prints "
        "allowed (and the role and grant that allow it) or denied; exit 0 allowed, "
        "1 denied, 2 a bad file or permission",
        description="Answer locally, without a server, what the server's [authorization] "
        "section decides: for a PERMISSION_DENIED, pass the ErrorInfo's principal, "
        "permission and resource.",
    )
    can.add_argument("file", type=Path, metavar="FILE")
    can.add_argument(
        "--principal",
        required=True,
        metavar="NAME",
        help="the principal's name: a SPIFFE ID, a certificate's CN or a JWT's sub",
    )
    can.add_argument("permission", metavar="PERMISSION", help="e.g. topics.publish")
    can.add_argument(
        "resource",
        metavar="RESOURCE",
        help="the bare resource: a topic, queue, agent id...; '' for a listing over all",
    )
    held = sub.add_parser("held", help="one JSON line per packet waiting for approval")
    held.add_argument("--topic", default="", help="only this topic (default: every topic)")
    for name, text in (
        ("approve", "approve a held packet: it is stored on its topic"),
        ("deny", "deny a held packet: it goes to its topic's carcel"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("topic", metavar="TOPIC")
        cmd.add_argument("tracking_id", metavar="TRACKING_ID")
        cmd.add_argument(
            "--agent-key",
            type=Path,
            required=True,
            metavar="FILE",
            help="the deciding agent's key file (from `packetbus keys new-agent`): "
            "its signed entry goes on the packet's chain",
        )
        if name == "approve":
            cmd.add_argument("--note", default="", help="why, recorded in the signed entry")
        else:
            cmd.add_argument("--reason", required=True, help="why, recorded in the carcel")
    stats = sub.add_parser("stats", help="counts by rule, reason and decision, as JSON")
    stats.add_argument("--topic", default="", help="only this topic (default: all, added up)")


def _authorization_summary(policy: Any) -> dict[str, Any] | None:
    section = policy.authorization
    if section is None:
        return None
    return {
        "principals": [
            {"match": list(e.match), "roles": list(e.roles)}
            | ({"agentId": e.agent_id} if e.agent_id else {})
            for e in section.principals
        ],
        "roles": {
            role.name: [
                {"permissions": list(g.permissions), "resources": list(g.resources)}
                for g in role.grants
            ]
            for role in section.roles.values()
        },
    }


def _check(path: Path) -> int:
    # The server's own parser: what it accepts is exactly what `serve --policy` loads.
    from packetbus_server._policy import PolicyError
    from packetbus_server._policy_parse import parse

    try:
        policy = parse(path.read_bytes())
    except (OSError, PolicyError) as exc:
        return fail(f"{path}: {exc}")
    print(
        json.dumps(
            {
                "version": policy.version,
                "default": policy.default.value,
                "rules": [
                    {"id": r.id, "decision": r.verdict.value, "reason": r.reason}
                    for r in policy.rules
                ],
                "approvers": list(policy.approvers),
                "authorization": _authorization_summary(policy),
            },
            indent=2,
        )
    )
    return 0


def _verdict(allowed: bool, explanation: str) -> None:
    """`policy can`'s answer: ``allowed: ...``/``denied: ...``, or with --json
    ``{"allowed": BOOL, "explanation": ...}``."""
    if json_output():
        print(json.dumps({"allowed": allowed, "explanation": explanation}, indent=2))
    else:
        print(f"{'allowed' if allowed else 'denied'}: {explanation}")


def _can(path: Path, name: str, permission_name: str, resource: str) -> int:
    """`packetbus policy can`: 0 allowed, 1 denied, 2 a file or permission unusable."""
    from packetbus_server._access import Permission, Principal
    from packetbus_server._access.principal import default_agent_id
    from packetbus_server._policy import PolicyError
    from packetbus_server._policy_parse import parse

    try:
        policy = parse(path.read_bytes())
    except (OSError, PolicyError) as exc:
        return fail(f"{path}: {exc}", 2)
    try:
        permission = Permission(permission_name)
    except ValueError:
        known = ", ".join(p.value for p in Permission)
        return fail(f"{permission_name!r} is not a permission; one of: {known}", 2)
    section = policy.authorization
    if section is None:
        _verdict(
            True,
            "the policy has no [authorization] section: every authenticated "
            "principal may call every RPC",
        )
        return 0
    mapped = section.agent_id(name)  # "": no agent id (its default is another's)
    agent_id = default_agent_id(name) if mapped is None else mapped
    roles = section.roles_of(name)
    who = f"principal {name!r} (agent id {agent_id!r}, roles {list(roles)})"
    if permission is Permission.AGENTS_ACT_FOR and agent_id != "" and resource == agent_id:
        # As the server judges it (_access.gate.may_act_as): an agent acts as itself
        # with no grant; "denied" here would contradict what the server lets through.
        _verdict(
            True,
            f"{who} may {permission.value} on {resource!r}: it is that agent "
            "itself (no grant needed)",
        )
        return 0
    reason = section.reason(Principal(name, "cli", agent_id), permission, resource)
    if reason is not None:
        grant = reason.granted
        _verdict(
            True,
            f"{who} may {permission.value} on {resource!r}: role {reason.role!r}, "
            f"grant {reason.grant} (permissions {list(grant.permissions)}, "
            f"resources {list(grant.resources)})",
        )
        return 0
    why = (
        "no grant of its roles gives it"
        if roles
        else "no [[authorization.principals]] entry matches it, so it has no role"
    )
    _verdict(False, f"{who} lacks {permission.value} on {resource!r}: {why}")
    return 1


async def _policy(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    command = args.policy_command
    if command == "show":
        print(json_pretty(await client.get_policy(timeout=t)))
    elif command == "held":
        async for held in client.list_held_packets(args.topic, timeout=t):
            print(json_line(held), flush=True)
    elif command in ("approve", "deny"):
        try:
            identity = AgentIdentity.load(args.agent_key)
        except ValueError as exc:
            return fail(str(exc), 2)
        if command == "approve":
            receipt = await client.approve_packet(
                args.topic, args.tracking_id, identity=identity, note=args.note, timeout=t
            )
            print(json_pretty(receipt))
        else:
            entry_id = await client.deny_packet(
                args.topic, args.tracking_id, reason=args.reason, identity=identity, timeout=t
            )
            print(json.dumps({"carcelEntryId": entry_id}))
    else:
        print(json_pretty(await client.policy_stats(args.topic, timeout=t)))
    return 0


def run_local(args: argparse.Namespace) -> int | None:
    """The commands that need no server; None for the others."""
    if args.command == "policy" and args.policy_command == "check":
        return _check(args.file)
    if args.command == "policy" and args.policy_command == "can":
        return _can(args.file, args.principal, args.permission, args.resource)
    return None


COMMANDS: dict[str, Command] = {"policy": _policy}
