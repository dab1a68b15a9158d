"""``packetbus verify``, ``export`` and ``keys``: chains of custody, audit exports and
signing keys."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from packetbus.v1 import custody_pb2

from ._cli_args import fail
from ._cli_context import RECORD_KINDS
from ._cli_json import json_pretty
from ._cli_progress import bar, info, json_output
from ._client import Client
from ._config import AgentIdentity
from ._export import (
    read_keys,
    verify_export,
    write_carcel_entry,
    write_decision,
    write_keys,
    write_packet,
)

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def _timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time like 2026-01-31T12:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def add_parsers(commands: Any) -> None:
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
    source = export.add_mutually_exclusive_group()
    source.add_argument("--topic", default="", help="only this topic (default: every topic)")
    source.add_argument(
        "--task-queue",
        default="",
        metavar="QUEUE",
        help="instead of topics: this task queue's task packets (needs tasks.read on it)",
    )
    source.add_argument(
        "--finding-task-id",
        default="",
        metavar="TASK_ID",
        help="instead of topics: the finding packets posted for this task id (needs "
        "findings.read on it; no --since/--until)",
    )
    source.add_argument(
        "--record-kind",
        default="",
        choices=sorted(RECORD_KINDS),
        help="instead of topics: this kind's record packets, first stored first (needs "
        "records.read on it; no --since/--until)",
    )
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


async def _verify(client: Client, args: argparse.Namespace) -> int:
    result = await client.verify_custody(args.tracking_id, timeout=args.timeout)
    if args.json:
        print(json_pretty(result))
        return 0 if result.verified else 1
    for entry in result.entries:
        verdict = custody_pb2.CustodyVerdict.Name(entry.verdict).removeprefix("CUSTODY_VERDICT_")
        # "for <principal>": whose authenticated call made the server's hop.
        # A name with control characters (a record from a server that took one) is
        # shown escaped: it must not print lines of its own ("entry 2: VALID ...").
        principal = entry.principal if entry.principal.isprintable() else repr(entry.principal)
        on_behalf = f" for {principal}" if entry.principal else ""
        print(
            f"entry {entry.index}: {verdict} {entry.action} by {entry.actor}{on_behalf} "
            f"({entry.key_id}): {entry.detail}"
        )
    head = custody_pb2.CustodyVerdict.Name(result.head_verdict).removeprefix("CUSTODY_VERDICT_")
    print(f"head: {head}")
    print("verified" if result.verified else "NOT verified")
    return 0 if result.verified else 1


def _verify_file(args: argparse.Namespace) -> int:
    try:
        trusted = read_keys(args.keys) if args.keys else None
        with bar(f"verifying {args.file.name}", unit="B", total=args.file.stat().st_size) as shown:
            report = verify_export(args.file, trusted_keys=trusted, progress=shown.update)
    except (OSError, ValueError, KeyError, json_format.ParseError) as exc:
        return fail(f"cannot read {args.file}: {exc}")
    if args.json:
        summary = {
            "ok": report.ok and report.packets > 0,
            "packets": report.packets,
            "verified": report.verified,
            "carcelEntries": report.carcel_entries,
            "decisions": report.decisions,
            "failures": [{"what": what, "problem": problem} for what, problem in report.failures],
        }
        print(json.dumps(summary, indent=2))
        return 0 if summary["ok"] else 1
    for what, problem in report.failures:
        print(f"{what}: {problem}")
    print(
        f"{report.verified} of {report.packets} packets verified "
        f"({report.carcel_entries} carceled; {report.decisions} decisions)"
    )
    if report.packets == 0:
        return fail(f"{args.file} holds no packets")
    return 0 if report.ok else 1


async def _export(client: Client, args: argparse.Namespace) -> int:
    count = carceled = decided = 0
    keys = await client.signing_keys(timeout=args.timeout)
    placed = bool(args.task_queue or args.finding_task_id or args.record_kind)
    record_kind = RECORD_KINDS[args.record_kind][0] if args.record_kind else 0
    with args.out.open("w") as out, bar("exporting", unit="packets") as shown:
        write_keys(out, keys)
        async for response in client.export(
            args.topic,
            since=args.since,
            until=args.until,
            # Tasks, findings and records have no carcel entries or decisions of their own.
            include_carcel_entries=not (placed or args.packets_only),
            include_decisions=not (placed or args.packets_only),
            task_queue=args.task_queue,
            finding_task_id=args.finding_task_id,
            record_kind=record_kind,
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
            shown.update(len(response.packets))
            shown.set_postfix(carceled=carceled, decisions=decided, refresh=False)
    if json_output():
        summary = {
            "out": str(args.out),
            "packets": count,
            "carcelEntries": carceled,
            "decisions": decided,
            "keys": len(keys),
        }
        print(json.dumps(summary, indent=2))
        return 0
    info(
        f"wrote {count} packets, {carceled} carcel entries, {decided} decisions and "
        f"{len(keys)} keys to {args.out}"
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
    if json_output():
        print(json.dumps({"keyFile": str(path), "keyId": fresh.signer.key_id}, indent=2))
        return 0
    print(f"{path}: now signing with {fresh.signer.key_id}; earlier keys are retired")
    return 0


def run_local(args: argparse.Namespace) -> int | None:
    """The commands that need no server (verify --file, keys rotate); None for the others."""
    if args.command == "verify" and args.file:
        return _verify_file(args)
    if args.command == "keys" and args.keys_command == "rotate":
        return _rotate(args)
    return None


COMMANDS: dict[str, Command] = {"verify": _verify, "export": _export, "keys": _keys}
