"""The ``packetbus`` command line: run a server, dispatch, fetch and follow packets."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from packetbus.v1 import custody_pb2, packet_pb2, packet_service_pb2, speech_act_pb2

from . import _cli_agents, _cli_context, _cli_findings, _cli_groups, _cli_policy, _cli_tasks
from ._cli_json import json_line, json_pretty
from ._client import EARLIEST, LATEST, Client, fill_defaults, sign_as
from ._config import DEFAULT_TARGET, TARGET_ENV, AgentIdentity, ClientConfig
from ._errors import PacketbusError, describe_gap
from ._export import (
    read_keys,
    verify_export,
    write_carcel_entry,
    write_decision,
    write_keys,
    write_packet,
)
from ._inbox import inbox_topic

_CONTENT_KINDS = ("task", "finding", "context", "data", "raw")
_SPEECH_PREFIX = "SPEECH_ACT_"


def _speech_acts() -> list[str]:
    return [
        name.removeprefix(_SPEECH_PREFIX).lower().replace("_", "-")
        for name in speech_act_pb2.SpeechAct.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
        if name != "SPEECH_ACT_UNSPECIFIED"
    ]


def _fail(message: str, code: int = 1) -> int:
    print(f"packetbus: {message}", file=sys.stderr)
    return code


def _describe(error: PacketbusError) -> str:
    if error.field_violations:
        fields = "; ".join(str(v) for v in error.field_violations)
        return f"{error.code.name}: {fields}"
    return f"{error.code.name}: {error.message}"


def _timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time like 2026-01-31T12:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="packetbus", description="packetbus: a message bus for multi-agent systems."
    )
    parser.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        help=f"server address (env {TARGET_ENV}; default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds each call may take (default 30)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run a packetbus server")
    serve.add_argument(
        "--listen",
        default=os.environ.get("PACKETBUS_LISTEN", "127.0.0.1:50051"),
        help="address to listen on (env PACKETBUS_LISTEN; default 127.0.0.1:50051)",
    )
    serve.add_argument(
        "--redis-url",
        default=os.environ.get("PACKETBUS_REDIS_URL"),
        help="use this Redis 7+ or Redis Cluster instead of the embedded Valkey "
        "(env PACKETBUS_REDIS_URL)",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("PACKETBUS_DATA_DIR"),
        help="where the embedded Valkey keeps its data (env PACKETBUS_DATA_DIR; "
        "default ~/.local/share/packetbus)",
    )
    serve.add_argument(
        "--grace", type=float, default=10.0, help="seconds to drain on SIGTERM (default 10)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("PACKETBUS_WORKERS", "1")),
        help="server processes sharing the port, e.g. one per core (env PACKETBUS_WORKERS; "
        "default 1)",
    )
    serve.add_argument(
        "--signing-key-file",
        type=Path,
        default=os.environ.get("PACKETBUS_SIGNING_KEY_FILE"),
        help="the server's custody signing keys (env PACKETBUS_SIGNING_KEY_FILE; default "
        "DATA_DIR/custody-keys.json, created on first start)",
    )
    serve.add_argument(
        "--policy",
        type=Path,
        default=os.environ.get("PACKETBUS_POLICY"),
        metavar="FILE",
        help="governance policy (TOML): rules that allow, reject or hold packets; reloaded "
        "when the file changes, or on SIGHUP (env PACKETBUS_POLICY)",
    )
    serve.add_argument(
        "--no-custody-signing",
        action="store_true",
        help="do not sign the server's custody entries (only to measure what signing costs)",
    )
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")

    dispatch = commands.add_parser("dispatch", help="dispatch one packet")
    where = dispatch.add_mutually_exclusive_group(required=True)
    where.add_argument("--topic")
    where.add_argument("--to", metavar="AGENT_ID", help="to this agent's inbox, instead")
    dispatch.add_argument("--origin", required=True, help="the sending agent's id")
    dispatch.add_argument(
        "--speech-act",
        default="inform",
        choices=_speech_acts(),
        metavar="ACT",
        help="FIPA performative, e.g. inform, request, query-if (default inform)",
    )
    dispatch.add_argument("--tracking-id", help="UUID; generated when absent")
    dispatch.add_argument("--ttl", type=int, default=0, help="seconds (default: server's, 3600)")
    dispatch.add_argument("--schema-version", default="1.0")
    dispatch.add_argument(
        "--agent-key",
        type=Path,
        metavar="FILE",
        help="sign the packet's origin with this agent key file (schema 1.1)",
    )
    dispatch.add_argument(
        "--json",
        dest="contents",
        metavar="CONTENTS_JSON",
        help="contents as in a packet's protobuf JSON, with one key: "
        '{"finding": {...}}, {"task": {...}}, {"context": {...}}, {"data": {...}} '
        'or {"raw": {"contentType": ..., "data": BASE64}}',
    )

    get = commands.add_parser("get", help="print a stored packet as protobuf JSON")
    get.add_argument("tracking_id", metavar="TRACKING_ID")

    tail = commands.add_parser(
        "tail",
        help="follow a topic, one JSON line per packet; packets it missed (expired, or "
        'removed by retention) are one {"gap": ...} line, with a warning on stderr',
    )
    tail.add_argument("topic", metavar="TOPIC")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from", dest="start", choices=("earliest", "latest"), default="latest")
    start.add_argument("--after", metavar="CURSOR", help="resume right after this cursor")
    tail.add_argument("--count", type=int, default=0, help="stop after N packets")

    verify = commands.add_parser(
        "verify", help="verify a stored packet's chain of custody, or an export file offline"
    )
    what = verify.add_mutually_exclusive_group(required=True)
    what.add_argument("tracking_id", nargs="?", metavar="TRACKING_ID")
    what.add_argument("--file", type=Path, help="an export file: verified with no server")
    verify.add_argument(
        "--keys",
        type=Path,
        help="with --file: trust only these keys (a file from `packetbus keys list`)",
    )

    export = commands.add_parser(
        "export", help="write packets, their chains and the public keys as JSON lines"
    )
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    export.add_argument("--topic", default="", help="only this topic (default: every topic)")
    export.add_argument(
        "--since",
        type=_timestamp,
        metavar="ISO",
        help="only what was stored, carceled or decided from this time, e.g. "
        "2026-01-31T12:00:00Z (no zone: UTC)",
    )
    export.add_argument("--until", type=_timestamp, metavar="ISO", help="... up to this time")
    export.add_argument(
        "--packets-only",
        action="store_true",
        help="leave out carcel entries and governance decisions",
    )

    keys = commands.add_parser("keys", help="signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    key_commands.add_parser("list", help="print every published public key as JSON")
    rotate = key_commands.add_parser(
        "rotate",
        help="retire the server's signing key and create a new one (the running server "
        "picks it up within seconds; the old key keeps verifying)",
    )
    rotate.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("PACKETBUS_DATA_DIR"),
        help="the server's data directory (env PACKETBUS_DATA_DIR)",
    )
    rotate.add_argument(
        "--signing-key-file",
        type=Path,
        default=os.environ.get("PACKETBUS_SIGNING_KEY_FILE"),
        help="the server's key file, when not in the data directory",
    )
    new_agent = key_commands.add_parser(
        "new-agent", help="create an agent key, register it for the agent id, save it"
    )
    new_agent.add_argument("--agent-id", required=True)
    new_agent.add_argument("--out", type=Path, required=True, help="the key file to write (0600)")

    _cli_groups.add_parsers(commands)
    _cli_tasks.add_parsers(commands)
    _cli_findings.add_parsers(commands)
    _cli_agents.add_parsers(commands)
    _cli_context.add_parsers(commands)
    _cli_policy.add_parsers(commands)

    commands.add_parser("info", help="print server info as JSON")
    commands.add_parser(
        "health", help="exit 0 if the server reports SERVING (grpc.health.v1), 1 otherwise"
    )
    return parser


def _build_packet(args: argparse.Namespace) -> packet_pb2.Packet:
    packet = packet_pb2.Packet(
        topic=inbox_topic(args.to) if args.to else args.topic,
        origin=args.origin,
        speech_act=speech_act_pb2.SpeechAct.Value(
            _SPEECH_PREFIX + args.speech_act.upper().replace("-", "_")
        ),
        tracking_id=args.tracking_id or "",
        ttl_seconds=max(args.ttl, 0),
        schema_version=args.schema_version,
    )
    if args.ttl < 0:
        raise ValueError("--ttl must not be negative")
    if args.contents:
        try:
            contents: Any = json.loads(args.contents)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(contents, dict) or len(contents) != 1:
            raise ValueError(f"--json must be an object with exactly one key of {_CONTENT_KINDS}")
        kind = next(iter(contents))
        if kind not in _CONTENT_KINDS:
            raise ValueError(f"--json key {kind!r} is not one of {_CONTENT_KINDS}")
        try:
            json_format.ParseDict(contents, packet)
        except json_format.ParseError as exc:
            raise ValueError(f"--json does not fit {kind}: {exc}") from None
    return packet


async def _dispatch(client: Client, args: argparse.Namespace) -> int:
    try:
        packet = _build_packet(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.agent_key:
        try:
            identity = AgentIdentity.load(args.agent_key)
        except ValueError as exc:
            return _fail(str(exc), 2)
        fill_defaults(packet)
        sign_as(packet, identity)
    [result] = await client.dispatch_batch([packet], timeout=args.timeout)
    print(json_pretty(result))
    if result.WhichOneof("outcome") == "error":
        return _fail(_describe(PacketbusError.from_status(result.error)))
    return 0


async def _get(client: Client, args: argparse.Namespace) -> int:
    stored = await client.get_packet(args.tracking_id, timeout=args.timeout)
    print(json_pretty(stored))
    return 0


def _print_gap(gap: packet_service_pb2.SubscriptionGap) -> None:
    # On stdout with the packets, so a consumer of the JSON lines sees the gap
    # in its place; on stderr for the person watching.
    print(json.dumps({"gap": json_format.MessageToDict(gap)}, separators=(",", ":")), flush=True)
    print(f"packetbus: warning: {describe_gap(gap)}", file=sys.stderr, flush=True)


async def _tail(client: Client, args: argparse.Namespace) -> int:
    seen = 0
    async with client.subscribe(
        args.topic,
        start=EARLIEST if args.start == "earliest" else LATEST,
        after=args.after,
        on_gap=_print_gap,
    ) as subscription:
        async for stored in subscription:
            print(json_line(stored), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


async def _verify(client: Client, args: argparse.Namespace) -> int:
    result = await client.verify_custody(args.tracking_id, timeout=args.timeout)
    for entry in result.entries:
        verdict = custody_pb2.CustodyVerdict.Name(entry.verdict).removeprefix("CUSTODY_VERDICT_")
        print(
            f"entry {entry.index}: {verdict} {entry.action} by {entry.actor} "
            f"({entry.key_id}): {entry.detail}"
        )
    head = custody_pb2.CustodyVerdict.Name(result.head_verdict).removeprefix("CUSTODY_VERDICT_")
    print(f"head: {head}")
    print("verified" if result.verified else "NOT verified")
    return 0 if result.verified else 1


def _verify_file(args: argparse.Namespace) -> int:
    try:
        trusted = read_keys(args.keys) if args.keys else None
        report = verify_export(args.file, trusted_keys=trusted)
    except (OSError, ValueError, KeyError, json_format.ParseError) as exc:
        return _fail(f"cannot read {args.file}: {exc}")
    for what, problem in report.failures:
        print(f"{what}: {problem}")
    print(
        f"{report.verified} of {report.packets} packets verified "
        f"({report.carcel_entries} carceled; {report.decisions} decisions)"
    )
    if report.packets == 0:
        return _fail(f"{args.file} holds no packets")
    return 0 if report.ok else 1


async def _export(client: Client, args: argparse.Namespace) -> int:
    count = carceled = decided = 0
    keys = await client.signing_keys(timeout=args.timeout)
    with args.out.open("w") as out:
        write_keys(out, keys)
        async for response in client.export(
            args.topic,
            since=args.since,
            until=args.until,
            include_carcel_entries=not args.packets_only,
            include_decisions=not args.packets_only,
        ):
            for stored in response.packets:
                write_packet(out, stored)
            for entry in response.carcel_entries:
                write_carcel_entry(out, entry)
            for decision in response.decisions:
                write_decision(out, decision)
            count += len(response.packets)
            carceled += len(response.carcel_entries)
            decided += len(response.decisions)
    print(
        f"wrote {count} packets, {carceled} carcel entries, {decided} decisions and "
        f"{len(keys)} keys to {args.out}",
        file=sys.stderr,
    )
    return 0


async def _keys(client: Client, args: argparse.Namespace) -> int:
    if args.keys_command == "list":
        keys = await client.signing_keys(timeout=args.timeout)
        print(json.dumps({"keys": [json_format.MessageToDict(k) for k in keys]}, indent=2))
        return 0
    identity = AgentIdentity.generate(args.agent_id)
    key = await client.register_identity(identity, timeout=args.timeout)
    identity.save(args.out)
    print(json_pretty(key))
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from packetbus_server import default_data_dir, rotate_signing_key

    path = args.signing_key_file or (args.data_dir or default_data_dir()) / "custody-keys.json"
    fresh = rotate_signing_key(path)
    print(f"{path}: now signing with {fresh.signer.key_id}; earlier keys are retired")
    return 0


async def _info(client: Client, args: argparse.Namespace) -> int:
    print(json_pretty(await client.server_info(timeout=args.timeout)))
    return 0


async def _health(client: Client, args: argparse.Namespace) -> int:
    status = await client.health(timeout=args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


_COMMANDS = {
    "dispatch": _dispatch,
    "get": _get,
    "tail": _tail,
    "info": _info,
    "health": _health,
    "verify": _verify,
    "export": _export,
    "keys": _keys,
    **_cli_groups.COMMANDS,
    **_cli_tasks.COMMANDS,
    **_cli_findings.COMMANDS,
    **_cli_agents.COMMANDS,
    **_cli_context.COMMANDS,
    **_cli_policy.COMMANDS,
}


async def _run_client_command(args: argparse.Namespace) -> int:
    async with await Client.connect(
        args.target, config=ClientConfig(target=args.target), timeout=args.timeout
    ) as client:
        return await _COMMANDS[args.command](client, args)


def _serve(args: argparse.Namespace) -> int:
    import logging

    # The server side is imported only here, so the client library and the
    # other commands never load it.
    from packetbus_server import ServerConfig, default_data_dir, run

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = ServerConfig(
        listen=args.listen,
        redis_url=args.redis_url,
        data_dir=args.data_dir or default_data_dir(),
        grace_seconds=args.grace,
        signing_key_file=args.signing_key_file,
        custody_signing=not args.no_custody_signing,
        policy_file=args.policy,
    )
    try:
        run(config, workers=args.workers)
    except ValueError as exc:  # a bad key file or setting: say so, no traceback
        return _fail(f"cannot start: {exc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "verify" and args.file:
            return _verify_file(args)
        local = _cli_policy.run_local(args)
        if local is not None:
            return local
        if args.command == "keys" and args.keys_command == "rotate":
            return _rotate(args)
        return asyncio.run(_run_client_command(args))
    except PacketbusError as exc:
        return _fail(_describe(exc))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
