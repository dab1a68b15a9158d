"""``packetbus policy``: governance from the command line (policy, approval queue, counts)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ._cli_json import json_line, json_pretty
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


def _check(path: Path) -> int:
    # The server's own parser: what it accepts is exactly what `serve --policy` loads.
    from packetbus_server._policy import PolicyError, parse

    try:
        policy = parse(path.read_bytes())
    except (OSError, PolicyError) as exc:
        print(f"packetbus: {path}: {exc}", file=sys.stderr)
        return 1
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
            },
            indent=2,
        )
    )
    return 0


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
            print(f"packetbus: {exc}", file=sys.stderr)
            return 2
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
    return None


COMMANDS: dict[str, Command] = {"policy": _policy}
