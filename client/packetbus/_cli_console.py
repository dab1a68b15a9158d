"""``packetbus console``: the operator console's API (package packetbus_console,
extra ``packetbus[console]``)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._cli_args import fail
from ._cli_connection import connection_config
from ._cli_listen import bind_problem, host_port
from ._config import AgentIdentity


def metrics_url_problem(url: str) -> str | None:
    """Why `url` cannot be a metrics URL (naming it without its userinfo), else None."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        return "is not a URL"
    shown = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    try:
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        return f"{shown!r}: the port is not a number"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{shown!r} is not an http(s)://HOST:PORT/metrics URL"
    return None


# overview.INTERVAL, MIN_INTERVAL, MAX_INTERVAL (that module needs starlette: not
# imported before the command runs).
_METRICS_INTERVAL, _MIN_INTERVAL, _MAX_INTERVAL = 2.0, 0.5, 60.0
_MISSING = "the console needs starlette and uvicorn: pip install 'packetbus[console]'"


def add_parser(commands: Any) -> None:
    console = commands.add_parser(
        "console",
        help="serve the operator console's HTTP API for a packetbus server",
        description="Serve the operator console (a JSON API under /api, README 'Operator "
        "console') for the packetbus server at --target, as a client of it (gRPC). A person "
        "signs in with a packetbus bearer token (POST /api/session) and every call is then "
        "made as that principal. Prints 'packetbus console serving on URL' once it listens; "
        "SIGTERM drains it (exit 0). The connection to packetbus takes the global --tls-* "
        "and --token-file flags (before 'console') or their environment variables; the "
        "--tls-cert/--tls-key here are the console's own HTTPS certificate.",
    )
    console.add_argument(
        "--target",
        dest="console_target",
        default=None,
        help="the packetbus server (default: the global --target)",
    )
    console.add_argument(
        "--listen",
        default=os.environ.get("PACKETBUS_CONSOLE_LISTEN", "127.0.0.1:8090"),
        help="HTTP address HOST:PORT to serve on (env PACKETBUS_CONSOLE_LISTEN; default "
        "127.0.0.1:8090, loopback; port 0: any free one). Another address needs "
        "--tls-cert/--tls-key or --insecure-listen",
    )
    console.add_argument(
        "--tls-cert",
        dest="console_tls_cert",
        type=Path,
        metavar="FILE",
        help="the console's own HTTPS certificate (PEM; with --tls-key)",
    )
    console.add_argument(
        "--tls-key",
        dest="console_tls_key",
        type=Path,
        metavar="FILE",
        help="the private key of --tls-cert (PEM)",
    )
    console.add_argument(
        "--insecure-listen",
        action="store_true",
        help="serve plain HTTP on a non-loopback --listen address (sign-in tokens and "
        "session cookies then cross the network in clear text)",
    )
    console.add_argument(
        "--agent-key",
        type=Path,
        metavar="FILE",
        help="the approver agent's key file (from `packetbus keys new-agent`): it signs "
        "approvals and denials made through the console (without it they are refused)",
    )
    console.add_argument(
        "--metrics-url",
        dest="metrics_urls",
        action="append",
        default=[],
        metavar="URL",
        help="the packetbus server's Prometheus metrics (http(s)://HOST:PORT/metrics, the URL "
        "`packetbus serve --metrics-listen` prints as 'packetbus metrics on URL'), charted on "
        "the Overview page; repeat it once per replica (their counts are summed). Without it "
        "the Overview is refused (409)",
    )
    console.add_argument(
        "--metrics-interval",
        type=float,
        default=_METRICS_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between scrapes of --metrics-url ({_MIN_INTERVAL:g}-{_MAX_INTERVAL:g}, "
        f"default {_METRICS_INTERVAL:g}); the Overview keeps the last 10 minutes",
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def run(args: argparse.Namespace) -> int:
    """Run `console` until interrupted; its exit code."""
    if args.json:
        return fail("console prints no result: --json does not apply to it", 2)
    listen = host_port(args.listen)
    if listen is None:
        return fail(f"--listen {args.listen!r} is not HOST:PORT", 2)
    host, port = listen
    cert, key = args.console_tls_cert, args.console_tls_key
    if (cert is None) != (key is None):
        return fail("--tls-cert and --tls-key go together", 2)
    for path in (cert, key):
        if path is not None and not path.is_file():
            return fail(f"cannot read {path}: no such file", 2)
    if not _loopback(host) and cert is None and not args.insecure_listen:
        return fail(
            f"--listen {args.listen} is not loopback: serve HTTPS (--tls-cert/--tls-key) "
            "or pass --insecure-listen to send sign-in tokens in clear text",
            2,
        )
    approver = None
    if args.agent_key is not None:
        try:
            approver = AgentIdentity.load(args.agent_key)
        except (OSError, ValueError) as exc:
            return fail(f"--agent-key {args.agent_key}: {exc}", 2)
    if not _MIN_INTERVAL <= args.metrics_interval <= _MAX_INTERVAL:  # also NaN
        return fail(
            f"--metrics-interval must be {_MIN_INTERVAL:g}-{_MAX_INTERVAL:g} seconds, "
            f"not {args.metrics_interval:g}",
            2,
        )
    for url in args.metrics_urls:
        problem = metrics_url_problem(url)
        if problem:
            return fail(f"--metrics-url {problem}", 2)
    problem = bind_problem(host, port)
    if problem:
        return fail(f"cannot listen on {args.listen}: {problem}")
    try:
        from packetbus_console.serve import serve
    except ImportError as exc:  # starlette or uvicorn
        missing = (exc.name or "a dependency").split(".")[0]
        return fail(f"{_MISSING} ({missing} is not installed)")
    if args.console_target:
        args.target = args.console_target
    asyncio.run(
        serve(
            target=args.target,
            host=host,
            port=port,
            config=connection_config(args),
            approver=approver,
            tls_cert=cert,
            tls_key=key,
            metrics_urls=args.metrics_urls,
            metrics_interval=args.metrics_interval,
        )
    )
    return 0
