"""``packetbus agents``: the agent registry from the command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ._cli_args import COUNT, SECONDS
from ._cli_json import json_line, json_pretty
from ._cli_progress import info, json_output
from ._client import Client
from ._config import AgentIdentity

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def _label(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a label is NAME=VALUE; got {text!r}")
    return name, value


def add_parsers(commands: Any) -> None:
    agents = commands.add_parser("agents", help="the agent registry: register, find, watch")
    sub = agents.add_subparsers(dest="agents_command", required=True, metavar="AGENTS_COMMAND")

    register = sub.add_parser(
        "register", help="register an agent (or update it); prints it as JSON"
    )
    register.add_argument("agent_id", metavar="AGENT_ID")
    register.add_argument("--role", default="")
    register.add_argument(
        "--capability", action="append", default=[], dest="capabilities", help="repeatable"
    )
    register.add_argument("--parent", default="", help="the agent that spawned it")
    register.add_argument("--label", action="append", default=[], type=_label, metavar="NAME=VALUE")
    register.add_argument("--endpoint", default="")
    register.add_argument(
        "--ttl", type=SECONDS, default=0, help="heartbeat TTL seconds (default 30)"
    )
    register.add_argument("--state", default="")
    register.add_argument(
        "--key-file", help="an agent key file (packetbus keys new-agent): register its key too"
    )

    heartbeat = sub.add_parser("heartbeat", help="keep an agent alive for another TTL")
    heartbeat.add_argument("agent_id", metavar="AGENT_ID")
    heartbeat.add_argument("--state", help="set the agent's state")

    get = sub.add_parser("get", help="print an agent as JSON")
    get.add_argument("agent_id", metavar="AGENT_ID")

    listing = sub.add_parser("list", help="one JSON line per matching agent, in id order")
    listing.add_argument("--role", default="")
    listing.add_argument("--capability", default="")
    listing.add_argument("--parent", default="")
    listing.add_argument("--liveness", choices=("any", "live", "stale"), default="any")

    deregister = sub.add_parser("deregister", help="remove an agent; prints the ids removed")
    deregister.add_argument("agent_id", metavar="AGENT_ID")
    deregister.add_argument("--cascade", action="store_true", help="and the agents it spawned")
    deregister.add_argument("--allow-missing", action="store_true")

    watch = sub.add_parser("watch", help="one JSON line per membership event")
    start = watch.add_mutually_exclusive_group()
    start.add_argument("--earliest", action="store_true", help="from the oldest event kept")
    start.add_argument("--after", default="", metavar="CURSOR", help="resume after a cursor")
    watch.add_argument("--count", type=COUNT, default=0, help="stop after N events")


async def _agents(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    command = args.agents_command
    if command == "register":
        identity = AgentIdentity.load(args.key_file) if args.key_file else None
        response = await client.register_agent(
            args.agent_id,
            role=args.role,
            capabilities=args.capabilities,
            parent_id=args.parent,
            labels=dict(args.label),
            endpoint=args.endpoint,
            ttl=args.ttl,
            state=args.state,
            identity=identity,
            timeout=t,
        )
        print(json_pretty(response))
    elif command == "heartbeat":
        print(json_pretty(await client.heartbeat_agent(args.agent_id, state=args.state, timeout=t)))
    elif command == "get":
        print(json_pretty(await client.get_agent(args.agent_id, timeout=t)))
    elif command == "list":
        for agent in await client.list_agents(
            role=args.role,
            capability=args.capability,
            parent_id=args.parent,
            liveness=args.liveness,
            timeout=t,
        ):
            print(json_line(agent))
    elif command == "deregister":
        removed = await client.deregister_agent(
            args.agent_id, cascade=args.cascade, allow_missing=args.allow_missing, timeout=t
        )
        if json_output():
            print(json.dumps({"removed": removed}))
        else:
            for agent_id in removed:
                print(agent_id)
        if not removed:
            info(f"{args.agent_id} was not registered")
    else:
        seen = 0
        async for event in client.watch_agents(
            start="earliest" if args.earliest else "latest", after_cursor=args.after
        ):
            print(json_line(event), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


COMMANDS: dict[str, Command] = {"agents": _agents}
