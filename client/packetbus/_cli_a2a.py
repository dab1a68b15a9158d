"""``packetbus a2a serve``: the A2A gateway (package packetbus_a2a, extra ``packetbus[a2a]``)."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from ._cli_args import fail, number
from ._cli_connection import connection_config
from ._cli_listen import bind_problem, host_port
from ._security import local_kind

_MISSING = "the A2A gateway needs a2a-sdk: pip install 'packetbus[a2a]'"


def add_parsers(commands: Any) -> None:
    a2a = commands.add_parser("a2a", help="serve packetbus agents to A2A clients")
    sub = a2a.add_subparsers(dest="a2a_command", required=True, metavar="A2A_COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run an A2A gateway (JSON-RPC, HTTP+JSON and, with --grpc-listen, gRPC) "
        "for the agents of a packetbus server",
        description="Serve the agents registered on a packetbus server to A2A clients. "
        "HTTP: an agent is chosen by path (/agents/ID/ for JSON-RPC, /agents/ID/rest for "
        "HTTP+JSON); a request whose A2A tenant names another agent is refused. gRPC: the "
        "agent is the request's tenant, or --default-agent when it is empty. Prints "
        "'packetbus a2a gateway serving on URL' (plus ' and gRPC on HOST:PORT') once it "
        "listens; SIGTERM drains it (exit 0).",
    )
    serve.add_argument(
        "--target",
        dest="a2a_target",
        default=None,
        help="the packetbus server (default: the global --target)",
    )
    serve.add_argument(
        "--listen",
        default=os.environ.get("PACKETBUS_A2A_LISTEN", "127.0.0.1:8080"),
        help="HTTP address HOST:PORT to serve A2A on "
        "(env PACKETBUS_A2A_LISTEN; default 127.0.0.1:8080, loopback)",
    )
    serve.add_argument(
        "--default-agent",
        default="",
        metavar="ID",
        help="the agent whose card /.well-known/agent-card.json serves, and the one "
        "gRPC calls without a tenant go to",
    )
    serve.add_argument(
        "--public-url",
        default="",
        help="the base URL clients use to reach the gateway, put in agent cards "
        "(default http://LISTEN)",
    )
    serve.add_argument(
        "--grpc-listen",
        default="",
        metavar="HOST:PORT",
        help="also serve A2A over gRPC (A2AService and gRPC health) on this address, "
        "e.g. 127.0.0.1:50052 (loopback; port 0: any free one); off unless given",
    )
    serve.add_argument(
        "--grpc-public-address",
        default="",
        metavar="HOST:PORT",
        help="the gRPC address clients use to reach the gateway, put in agent cards "
        "(default the --grpc-listen address as bound)",
    )
    serve.add_argument(
        "--answer-timeout",
        type=number(0.001),
        default=300.0,
        help="seconds an A2A task waits for the agent's final answer (default 300)",
    )
    serve.add_argument(
        "--require-auth",
        action="store_true",
        help="refuse A2A calls without 'Authorization: Bearer <JWT>' (HTTP 401, gRPC "
        "UNAUTHENTICATED; over gRPC the token is 'authorization' metadata) and declare "
        "the bearer scheme in agent cards. With or without it, a call's bearer token is "
        "forwarded to packetbus (TLS or loopback only), which authenticates it and applies "
        "that principal's permissions; tasks are then visible only to their creator",
    )


def run(args: argparse.Namespace) -> int:
    """Run `a2a serve` until interrupted; its exit code."""
    if args.json:
        return fail("a2a serve prints no result: --json does not apply to it", 2)
    listen = host_port(args.listen)
    if listen is None:
        return fail(f"--listen {args.listen!r} is not HOST:PORT", 2)
    host, port = listen
    if port == 0 and not args.public_url:
        # The kernel's pick would be unknown to the cards, which carry the gateway's URL.
        return fail("--listen port 0 needs --public-url: agent cards must name the real port", 2)
    grpc_listen = host_port(args.grpc_listen) if args.grpc_listen else None
    if args.grpc_listen and grpc_listen is None:
        return fail(f"--grpc-listen {args.grpc_listen!r} is not HOST:PORT", 2)
    if grpc_listen is not None and grpc_listen[1] == port != 0:
        return fail(f"--grpc-listen {args.grpc_listen!r} needs a port other than --listen's", 2)
    if args.grpc_public_address:
        if grpc_listen is None:
            return fail("--grpc-public-address needs --grpc-listen", 2)
        if host_port(args.grpc_public_address) is None:
            return fail(f"--grpc-public-address {args.grpc_public_address!r} is not HOST:PORT", 2)
    problem = bind_problem(host, port)
    if problem:
        return fail(f"cannot listen on {args.listen}: {problem}")
    if grpc_listen is not None and grpc_listen[1] != 0:
        problem = bind_problem(*grpc_listen)
        if problem:
            return fail(f"cannot listen on {args.grpc_listen}: {problem}")
    try:
        from packetbus_a2a.serve import serve
    except ImportError as exc:  # a2a-sdk, starlette or uvicorn
        missing = (exc.name or "a dependency").split(".")[0]
        return fail(f"{_MISSING} ({missing} is not installed)")
    if args.a2a_target:
        args.target = args.a2a_target
    config = connection_config(args)
    if args.require_auth and config.tls is None and local_kind(args.target) is None:
        return fail(
            f"--require-auth forwards callers' tokens, which travel only over TLS or to this "
            f"machine, and {args.target} is neither: give --tls-ca (or a loopback --target)",
            2,
        )
    asyncio.run(
        serve(
            target=args.target,
            host=host,
            port=port,
            config=config,
            default_agent=args.default_agent,
            public_url=args.public_url,
            answer_timeout=args.answer_timeout,
            grpc_host=grpc_listen[0] if grpc_listen else "",
            grpc_port=grpc_listen[1] if grpc_listen else None,
            grpc_public_address=args.grpc_public_address,
            require_auth=args.require_auth,
        )
    )
    return 0
