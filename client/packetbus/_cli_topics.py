"""``packetbus topic list`` and ``packetbus topic retention``: the topics the server
knows, and a topic's own retention limits (TopicService)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from ._cli_args import SECONDS, integer
from ._cli_json import json_line, json_pretty
from ._client import Client

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]

# The wire's uint64; the server refuses values past its own bounds, naming them.
_UINT64 = integer(0, 2**64 - 1)


def add_parsers(commands: Any) -> None:
    topic = commands.add_parser("topic", help="topics: list; a topic's settings: retention")
    sub = topic.add_subparsers(dest="topic_command", required=True, metavar="TOPIC_COMMAND")
    listing = sub.add_parser(
        "list",
        help="one JSON line per topic you may read, in name order: packets, first and "
        "last cursor, retention, consumer groups, carcel entries",
    )
    listing.add_argument("--prefix", default="", help="only topics whose name starts with this")
    retention = sub.add_parser("retention", help="a topic's retention limits: get, set")
    rsub = retention.add_subparsers(
        dest="retention_command", required=True, metavar="RETENTION_COMMAND"
    )
    get = rsub.add_parser("get", help="print the limits and what the topic holds, as JSON")
    get.add_argument("topic", metavar="TOPIC")
    put = rsub.add_parser(
        "set",
        help="replace the limits (unnamed ones: none) and apply them at once; idempotent",
    )
    put.add_argument("topic", metavar="TOPIC")
    put.add_argument("--max-age", type=SECONDS, default=0, help="seconds (default: no limit)")
    put.add_argument("--max-packets", type=_UINT64, default=0, help="(default: no limit)")
    put.add_argument("--max-bytes", type=_UINT64, default=0, help="(default: no limit)")
    put.add_argument(
        "--work-queue",
        action="store_true",
        help="also drop each packet once every consumer group has acked it",
    )


async def _topic(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    if args.topic_command == "list":
        async for summary in client.list_topics(args.prefix, timeout=t):
            print(json_line(summary), flush=True)
    elif args.retention_command == "get":
        print(json_pretty(await client.get_topic_retention(args.topic, timeout=t)))
    else:
        response = await client.set_topic_retention(
            args.topic,
            max_age_seconds=args.max_age,
            max_packets=args.max_packets,
            max_bytes=args.max_bytes,
            work_queue=args.work_queue,
            timeout=t,
        )
        print(json_pretty(response))
    return 0


COMMANDS: dict[str, Command] = {"topic": _topic}
