"""The ``packetbus`` command line: run a server, dispatch, fetch and follow packets."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from . import (
    _cli_a2a,
    _cli_agents,
    _cli_console,
    _cli_context,
    _cli_custody,
    _cli_findings,
    _cli_groups,
    _cli_packets,
    _cli_policy,
    _cli_serve,
    _cli_tasks,
    _cli_topics,
)
from ._cli_args import Parser, describe, fail, guarded, number
from ._cli_connection import add_connection_flags, add_to_subcommands, connection_config
from ._cli_progress import add_output_flags, configure
from ._client import Client
from ._config import DEFAULT_TARGET, TARGET_ENV
from ._errors import PacketbusError


def _parser() -> argparse.ArgumentParser:
    # No abbreviations of the global flags: argparse matches them against every
    # argument, the subcommand's too, so `dispatch --to AGENT` was refused as an
    # ambiguous --token/--token-file (a subcommand's own flags still abbreviate).
    parser = Parser(
        prog="packetbus",
        description="packetbus: a message bus for multi-agent systems.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        help=f"server address (env {TARGET_ENV}; default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=number(0.001),
        default=30.0,
        help="seconds each call may take (default 30)",
    )
    add_connection_flags(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _cli_serve.add_parser(commands)
    _cli_packets.add_parsers(commands)

    _cli_custody.add_parsers(commands)
    _cli_groups.add_parsers(commands)
    _cli_topics.add_parsers(commands)
    _cli_tasks.add_parsers(commands)
    _cli_findings.add_parsers(commands)
    _cli_agents.add_parsers(commands)
    _cli_context.add_parsers(commands)
    _cli_policy.add_parsers(commands)
    _cli_a2a.add_parsers(commands)
    _cli_console.add_parser(commands)

    # Last in --help, after the commands of every role.
    _cli_packets.add_server_parsers(commands)
    add_to_subcommands(parser, skip=frozenset({"serve", "console"}))
    add_output_flags(parser)
    return parser


_COMMANDS = {
    **_cli_packets.COMMANDS,
    **_cli_custody.COMMANDS,
    **_cli_groups.COMMANDS,
    **_cli_topics.COMMANDS,
    **_cli_tasks.COMMANDS,
    **_cli_findings.COMMANDS,
    **_cli_agents.COMMANDS,
    **_cli_context.COMMANDS,
    **_cli_policy.COMMANDS,
}


async def _run_client_command(args: argparse.Namespace) -> int:
    try:
        async with await Client.connect(
            args.target, config=connection_config(args), timeout=args.timeout
        ) as client:
            return await _COMMANDS[args.command](client, args)
    except PacketbusError as exc:
        if args.command == "health" and args.json:
            # A checker that reads JSON gets JSON for a server it cannot reach too.
            print(json.dumps({"status": "UNREACHABLE", "error": describe(exc)}))
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. A usage error exits 2 (argparse); every
    other failure is one line on stderr (see `guarded`)."""
    args = _parser().parse_args(argv)
    configure(json_output=args.json, quiet=args.quiet)
    return guarded(lambda: _main(args), describe)


def _main(args: argparse.Namespace) -> int:
    if args.command == "serve":
        if args.json:
            return fail("serve prints no result, only its log: --json does not apply to it", 2)
        return _cli_serve.run(args)
    if args.command == "a2a":
        return _cli_a2a.run(args)
    if args.command == "console":
        return _cli_console.run(args)
    local = _cli_policy.run_local(args)
    if local is None:
        local = _cli_custody.run_local(args)
    if local is not None:
        return local
    return asyncio.run(_run_client_command(args))


if __name__ == "__main__":
    sys.exit(main())
