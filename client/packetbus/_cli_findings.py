"""``packetbus findings``: findings of tasks, their conflicts, escalations."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import json_format

from packetbus.v1 import contents_pb2

from ._cli_args import number
from ._cli_json import json_line
from ._client import Client

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def add_parsers(commands: Any) -> None:
    findings = commands.add_parser(
        "findings", help="findings of tasks: post, list, conflicts, escalate"
    )
    sub = findings.add_subparsers(dest="findings_command", required=True, metavar="COMMAND")
    post = sub.add_parser("post", help="post a finding; prints it and its conflicts as JSON")
    post.add_argument("task_id", metavar="TASK_ID")
    post.add_argument("--id", default="", help="the finding's id (default: its tracking id)")
    post.add_argument("--origin", required=True)
    post.add_argument("--claim", required=True)
    post.add_argument("--confidence", type=number(0, 1), required=True)
    post.add_argument("--subject", default="", help="what it is about (default: the claim)")
    post.add_argument("--refutes", action="store_true", help="it says the claim does not hold")
    post.add_argument("--citation", action="append", default=[], dest="citations")
    listing = sub.add_parser("list", help="one JSON line per finding of a task")
    listing.add_argument("task_id", metavar="TASK_ID")
    conflicts = sub.add_parser("conflicts", help="one JSON line per conflicting pair")
    conflicts.add_argument("task_id", metavar="TASK_ID")
    conflicts.add_argument("--threshold", type=number(0, 1), default=0.0)
    escalate = sub.add_parser("escalate", help="escalate a task's findings to a human")
    escalate.add_argument("task_id", metavar="TASK_ID")
    escalate.add_argument("finding_ids", nargs="+", metavar="FINDING_ID")
    escalate.add_argument("--origin", required=True)
    escalate.add_argument("--reason", required=True)
    escalations = sub.add_parser("escalations", help="one JSON line per escalation")
    escalations.add_argument("--task", default="", help="only this task's")


async def _findings(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    command = args.findings_command
    if command == "post":
        finding = contents_pb2.Finding(
            task_id=args.task_id,
            id=args.id,
            claim=args.claim,
            confidence=args.confidence,
            subject=args.subject,
            refutes=args.refutes,
            citations=args.citations,
        )
        response = await client.post_finding(finding, origin=args.origin, timeout=t)
        print(json.dumps(json_format.MessageToDict(response), indent=2))
    elif command == "list":
        for stored in await client.list_findings(args.task_id, timeout=t):
            print(json_line(stored))
    elif command == "conflicts":
        for conflict in await client.detect_conflicts(
            args.task_id, threshold=args.threshold, timeout=t
        ):
            print(json_line(conflict))
    elif command == "escalate":
        stored = await client.escalate(
            args.task_id, args.finding_ids, reason=args.reason, origin=args.origin, timeout=t
        )
        print(json_line(stored))
    else:
        for stored in await client.list_escalations(args.task, timeout=t):
            print(json_line(stored))
    return 0


COMMANDS: dict[str, Command] = {"findings": _findings}
