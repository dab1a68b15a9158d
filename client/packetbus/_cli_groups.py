"""``packetbus groups``, ``packetbus consume`` and ``packetbus carcel``: the CLI side of
consumer groups and the carcel."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import json_format

from ._cli_args import ATTEMPTS, COUNT, SECONDS, fail, number
from ._cli_json import json_line, json_pretty
from ._cli_progress import bar
from ._client import EARLIEST, LATEST, Client

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def add_parsers(commands: Any) -> None:
    groups = commands.add_parser("groups", help="consumer groups: create, get, list, delete")
    sub = groups.add_subparsers(dest="groups_command", required=True, metavar="GROUPS_COMMAND")
    create = sub.add_parser("create", help="create a consumer group (idempotent)")
    create.add_argument("topic", metavar="TOPIC")
    create.add_argument("group", metavar="GROUP")
    start = create.add_mutually_exclusive_group()
    start.add_argument("--from", dest="start", choices=("earliest", "latest"), default="latest")
    start.add_argument("--after", metavar="CURSOR", help="start right after this cursor")
    create.add_argument(
        "--ack-deadline", type=SECONDS, default=0, help="lease in seconds (default 30)"
    )
    create.add_argument(
        "--max-attempts", type=ATTEMPTS, default=0, help="deliveries before the carcel (default 5)"
    )
    for name in ("get", "delete"):
        cmd = sub.add_parser(name, help=f"{name} a consumer group")
        cmd.add_argument("topic", metavar="TOPIC")
        cmd.add_argument("group", metavar="GROUP")
    listing = sub.add_parser("list", help="every consumer group of a topic")
    listing.add_argument("topic", metavar="TOPIC")

    consume = commands.add_parser(
        "consume", help="consume as a member of a consumer group, one JSON line per delivery"
    )
    consume.add_argument("topic", metavar="TOPIC")
    consume.add_argument("group", metavar="GROUP")
    consume.add_argument("--consumer", required=True, help="this consumer's name")
    consume.add_argument("--count", type=COUNT, default=0, help="stop after N deliveries")
    consume.add_argument(
        "--settle",
        choices=("ack", "nack", "none"),
        default="ack",
        help="what to do with each delivery once printed (default ack; none lets its "
        "lease run out)",
    )
    consume.add_argument("--reason", default="", help="with --settle nack: the reason")

    inbox = commands.add_parser(
        "inbox", help="read an agent's inbox, one JSON line per delivery (acked once printed)"
    )
    inbox.add_argument("agent", metavar="AGENT_ID")
    inbox.add_argument("--count", type=COUNT, default=0, help="stop after N deliveries")
    inbox.add_argument(
        "--wait", type=number(0), default=0, help="stop after this many seconds without a delivery"
    )

    carcel = commands.add_parser("carcel", help="carceled packets: list, get, requeue, purge")
    csub = carcel.add_subparsers(dest="carcel_command", required=True, metavar="CARCEL_COMMAND")
    listing = csub.add_parser("list", help="one JSON line per carcel entry, oldest first")
    listing.add_argument("--topic", default="", help="only this topic (default: every topic)")
    listing.add_argument("--reason", default="", help="only entries with this reason")
    for name, text in (
        ("get", "print a carcel entry as JSON"),
        ("requeue", "validate a carceled packet again and deliver it once more"),
    ):
        cmd = csub.add_parser(name, help=text)
        cmd.add_argument("topic", metavar="TOPIC")
        cmd.add_argument("id", metavar="ID")
    purge = csub.add_parser("purge", help="remove carcel entries of a topic")
    purge.add_argument("topic", metavar="TOPIC")
    purge.add_argument("ids", nargs="*", default=[], metavar="ID")
    purge.add_argument("--all", action="store_true", help="every entry of the topic, instead")


async def _groups(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    if args.groups_command == "create":
        group = await client.create_consumer_group(
            args.topic,
            args.group,
            start=EARLIEST if args.start == "earliest" else LATEST,
            after=args.after,
            ack_deadline_seconds=args.ack_deadline,
            max_delivery_attempts=args.max_attempts,
            timeout=t,
        )
        print(json_pretty(group))
    elif args.groups_command == "get":
        print(json_pretty(await client.get_consumer_group(args.topic, args.group, timeout=t)))
    elif args.groups_command == "list":
        for group in await client.list_consumer_groups(args.topic, timeout=t):
            print(json_line(group))
    else:
        deleted = await client.delete_consumer_group(args.topic, args.group, timeout=t)
        print(json.dumps({"deleted": deleted}))
        return 0 if deleted else 1
    return 0


async def _consume(client: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with client.consume(
        args.topic,
        args.group,
        consumer=args.consumer,
        # Take no more than wanted: the rest stays with the group for others.
        max_outstanding_packets=args.count or 1000,
    ) as consumer:
        async for delivery in consumer:
            line = {
                "deliveryId": delivery.delivery_id,
                "deliveryCount": delivery.delivery_count,
                "packet": json_format.MessageToDict(delivery.packet),
            }
            print(json.dumps(line, separators=(",", ":")), flush=True)
            if args.settle == "ack":
                await delivery.ack()
            elif args.settle == "nack":
                await delivery.nack(reason=args.reason)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


async def _inbox(client: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with await client.inbox(
        args.agent, max_outstanding_packets=args.count or 1000, timeout=args.timeout
    ) as inbox:
        while not args.count or seen < args.count:
            try:
                async with asyncio.timeout(args.wait or None):
                    delivery = await anext(inbox)
            except TimeoutError:
                break
            line = {
                "deliveryId": delivery.delivery_id,
                "deliveryCount": delivery.delivery_count,
                "packet": json_format.MessageToDict(delivery.packet),
            }
            print(json.dumps(line, separators=(",", ":")), flush=True)
            await delivery.ack()
            seen += 1
    return 0


async def _carcel(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    if args.carcel_command == "list":
        with bar("carcel entries", unit="entries", beside_output=True) as shown:
            async for entry in client.carcel_entries(args.topic, reason=args.reason, timeout=t):
                print(json_line(entry), flush=True)
                shown.update()
    elif args.carcel_command == "get":
        print(json_pretty(await client.get_carcel_entry(args.topic, args.id, timeout=t)))
    elif args.carcel_command == "requeue":
        cursor = await client.requeue_carcel_entry(args.topic, args.id, timeout=t)
        print(json.dumps({"cursor": cursor}))
    else:
        if bool(args.ids) == args.all:
            return fail("carcel purge: name the entries (ID ...) or pass --all", 2)
        purged = await client.purge_carcel(args.topic, args.ids, timeout=t)
        print(json.dumps({"purged": purged}))
    return 0


COMMANDS: dict[str, Command] = {
    "groups": _groups,
    "consume": _consume,
    "inbox": _inbox,
    "carcel": _carcel,
}
