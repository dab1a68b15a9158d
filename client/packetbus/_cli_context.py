"""``packetbus context`` and ``packetbus records``: shared context and swarm records."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from google.protobuf import json_format
from tqdm import tqdm

from packetbus.v1 import contents_pb2
from packetbus.v1 import record_service_pb2 as record_pb
from packetbus.v1.context_service_pb2 import LogEntry

from ._cli_args import COUNT, INT64, fail, integer
from ._cli_json import json_line, json_pretty
from ._cli_progress import bar, counted, json_output
from ._client import Client
from ._context import file_chunks, file_digest, new_entry
from ._errors import PacketbusError

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]

RECORD_KINDS = {
    "session": (record_pb.RECORD_KIND_SESSION_SUMMARY, contents_pb2.SessionSummary),
    "swarm": (record_pb.RECORD_KIND_SWARM_REGISTRY, contents_pb2.SwarmRegistry),
    "remediation": (record_pb.RECORD_KIND_REMEDIATION_SCAN, contents_pb2.RemediationScan),
}


_ENTRY_ID_HELP = (
    "UUID, the entry's id and idempotency key: the same command again answers as the "
    "first did and appends nothing (default: a new one)"
)


def _doc_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scope", metavar="SCOPE")
    parser.add_argument("name", metavar="NAME")


def add_parsers(commands: Any) -> None:
    context = commands.add_parser(
        "context", help="shared context documents, the global map, memory logs, traces"
    )
    sub = context.add_subparsers(dest="context_command", required=True, metavar="COMMAND")
    put = sub.add_parser("put", help="write a document from a file or stdin; prints its version")
    _doc_args(put)
    put.add_argument("--file", type=Path, help="read the bytes from this file (default: stdin)")
    put.add_argument("--author", required=True, help="the writing agent's id")
    put.add_argument(
        "--expected-version",
        type=integer(0, INT64),
        help="write only over this version (0: only if it does not exist)",
    )
    put.add_argument(
        "--ttl", type=integer(0, INT64), default=0, help="seconds to keep it (default 24 h)"
    )
    put.add_argument("--content-type", default="")
    put.add_argument(
        "--upload-id",
        default="",
        help="UUID, the upload's idempotency key: the same command again answers the "
        "original commit instead of writing a new version (default: a new one)",
    )
    get = sub.add_parser("get", help="read a document to stdout or a file")
    _doc_args(get)
    get.add_argument("--out", type=Path, help="write the bytes here; prints the version as JSON")
    get.add_argument("--version", type=integer(0, INT64), help="only this version")
    delete = sub.add_parser("delete", help="delete a document")
    _doc_args(delete)
    delete.add_argument("--expected-version", type=integer(0, INT64))
    delete.add_argument("--author", default="")
    listing = sub.add_parser("list", help="one JSON line per document of a scope")
    listing.add_argument("scope", metavar="SCOPE")
    listing.add_argument("--prefix", default="", help="only names starting with this")
    watch = sub.add_parser("watch", help="one JSON line per change of a scope's documents")
    watch.add_argument("scope", metavar="SCOPE")
    watch.add_argument("--prefix", default="")
    watch.add_argument("--after", default="", help="resume after this cursor")
    watch.add_argument("--count", type=COUNT, default=0, help="stop after this many changes")

    glob = sub.add_parser("global", help="the global context map")
    gsub = glob.add_subparsers(dest="global_command", required=True, metavar="COMMAND")
    gset = gsub.add_parser("set")
    gset.add_argument("key")
    gset.add_argument("value")
    gset.add_argument("--expected", help="set only if the value is this ('' : unset)")
    for verb in ("get", "delete"):
        gsub.add_parser(verb).add_argument("key")
    gsub.add_parser("list")

    memory = sub.add_parser("memory", help="an agent's memory log")
    msub = memory.add_subparsers(dest="memory_command", required=True, metavar="COMMAND")
    mappend = msub.add_parser("append")
    mappend.add_argument("agent")
    mappend.add_argument("text")
    mappend.add_argument("--kind", default="")
    mappend.add_argument("--entry-id", default="", help=_ENTRY_ID_HELP)
    mlist = msub.add_parser("list", help="newest first")
    mlist.add_argument("agent")
    mlist.add_argument("--limit", type=COUNT, default=0)

    trace = sub.add_parser("trace", help="an agent's trace of a task")
    tsub = trace.add_subparsers(dest="trace_command", required=True, metavar="COMMAND")
    tappend = tsub.add_parser("append")
    tappend.add_argument("task_id")
    tappend.add_argument("agent")
    tappend.add_argument("text")
    tappend.add_argument("--kind", default="")
    tappend.add_argument("--entry-id", default="", help=_ENTRY_ID_HELP)
    tlist = tsub.add_parser("list", help="oldest first")
    tlist.add_argument("task_id")
    tlist.add_argument("agent")
    tlist.add_argument("--limit", type=COUNT, default=0)

    records = commands.add_parser(
        "records", help="swarm records: session summaries, swarm registries, remediation scans"
    )
    rsub = records.add_subparsers(dest="records_command", required=True, metavar="COMMAND")
    rput = rsub.add_parser("put", help="store a record given as protobuf JSON")
    rput.add_argument("kind", choices=sorted(RECORD_KINDS))
    rput.add_argument(
        "record_json",
        metavar="JSON",
        help='the record\'s fields as JSON, e.g. \'{"label": "run-1"}\'',
    )
    rput.add_argument("--origin", required=True)
    rput.add_argument(
        "--retention", type=integer(0, INT64), default=0, help="seconds (default: the kind's)"
    )
    rput.add_argument(
        "--tracking-id",
        default="",
        help="UUID, the record's id and idempotency key: the same command again answers "
        "the original record (generated when absent)",
    )
    rget = rsub.add_parser("get")
    rget.add_argument("kind", choices=sorted(RECORD_KINDS))
    rget.add_argument("record_id")
    rlist = rsub.add_parser("list", help="one JSON line per record, newest first")
    rlist.add_argument("kind", choices=sorted(RECORD_KINDS))
    rlist.add_argument("--limit", type=COUNT, default=100)


async def _put(client: Client, args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "expected_version": args.expected_version,
        "ttl": args.ttl,
        "content_type": args.content_type,
        "author": args.author,
        "upload_id": args.upload_id or str(uuid.uuid4()),
        "timeout": args.timeout,
    }
    try:
        if args.file is None:
            # All of stdin first: sent as bytes, a put is retried after a lost connection.
            document = await client.put_context(
                args.scope, args.name, sys.stdin.buffer.read(), **options
            )
        else:
            size, digest = file_digest(args.file)
            with bar(f"putting {args.name}", unit="B", total=size) as shown:
                document = await client.put_context(
                    args.scope,
                    args.name,
                    counted(file_chunks(args.file), shown),
                    size=size,
                    sha256=digest,
                    **options,
                )
    except PacketbusError as exc:
        if not exc.outcome_unknown:
            raise
        return fail(
            f"{exc.code.name}: {exc.message} (it may have been committed: run the command "
            f"again with --upload-id {options['upload_id']} to find out)",
            status=exc.code.name,
        )
    print(json_pretty(document))
    return 0


async def _context(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    command = args.context_command
    if command == "put":
        return await _put(client, args)
    if command == "get":
        if args.out is None:
            value = await client.get_context(args.scope, args.name, version=args.version, timeout=t)
            if json_output():  # the bytes as protobuf JSON writes bytes: base64
                fields = json_format.MessageToDict(value.document)
                fields["data"] = base64.b64encode(value.data).decode()
                print(json.dumps(fields, indent=2))
            else:
                sys.stdout.buffer.write(value.data)
                sys.stdout.buffer.flush()
        else:
            with args.out.open("wb") as sink, bar(f"getting {args.name}", unit="B") as shown:
                document = await client.get_context_to(
                    args.scope,
                    args.name,
                    cast(BinaryIO, _Counting(sink, shown)),
                    version=args.version,
                    timeout=t,
                )
            print(json_pretty(document))
    elif command == "delete":
        print(
            json_line(
                await client.delete_context(
                    args.scope,
                    args.name,
                    expected_version=args.expected_version,
                    author=args.author,
                    timeout=t,
                )
            )
        )
    elif command == "list":
        token = ""
        with bar("documents", unit="documents", beside_output=True) as shown:
            while True:
                page = await client.list_contexts(
                    args.scope, name_prefix=args.prefix, page_token=token, timeout=t
                )
                for document in page.documents:
                    print(json_line(document))
                shown.update(len(page.documents))
                token = page.next_page_token
                if not token:
                    break
    elif command == "watch":
        seen = 0
        async for response in client.watch_context(
            args.scope, name_prefix=args.prefix, after_cursor=args.after, timeout=None
        ):
            if response.gap:
                print(json.dumps({"gap": True}), flush=True)
            for change in response.changes:
                print(json_line(change), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    return 0
    else:
        return await _context_small(client, args)
    return 0


async def _context_small(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    command = args.context_command
    if command == "global":
        g = args.global_command
        if g == "set":
            await client.set_global_context(
                args.key, args.value, expected_value=args.expected, timeout=t
            )
        elif g == "get":
            value = await client.get_global_context(args.key, timeout=t)
            print(json.dumps({"key": args.key, "value": value}) if json_output() else value)
        elif g == "delete":
            print(json.dumps({"existed": await client.delete_global_context(args.key, timeout=t)}))
        else:
            print(json.dumps(await client.list_global_context(timeout=t), indent=2))
    elif command == "memory":
        if args.memory_command == "append":
            entry = _entry(args)
            return await _appended(entry, client.append_memory(args.agent, entry, timeout=t))
        else:
            for e in await client.list_memory(args.agent, limit=args.limit, timeout=t):
                print(json_line(e))
    elif args.trace_command == "append":
        entry = _entry(args)
        return await _appended(
            entry, client.append_trace(args.task_id, args.agent, entry, timeout=t)
        )
    else:
        for e in await client.list_traces(args.task_id, args.agent, limit=args.limit, timeout=t):
            print(json_line(e))
    return 0


async def _records(client: Client, args: argparse.Namespace) -> int:
    t = args.timeout
    kind, message_class = RECORD_KINDS[args.kind]
    if args.records_command == "put":
        try:
            record = json_format.Parse(args.record_json, message_class())
        except json_format.ParseError as exc:
            raise ValueError(f"the {args.kind} record is not valid: {exc}") from None
        response = await client.put_record(
            record,
            origin=args.origin,
            retention=args.retention,
            tracking_id=args.tracking_id,
            timeout=t,
        )
        print(json_pretty(response))
    elif args.records_command == "get":
        print(json_pretty(await client.get_record(kind, args.record_id, timeout=t)))
    else:
        token, listed = "", 0
        with bar(f"{args.kind} records", unit="records", beside_output=True) as shown:
            while listed < args.limit:
                page = await client.list_records(
                    kind, page_size=min(100, args.limit - listed), page_token=token, timeout=t
                )
                for stored in page.records:
                    print(json_line(stored))
                listed += len(page.records)
                shown.update(len(page.records))
                token = page.next_page_token
                if not token:
                    break
    return 0


COMMANDS: dict[str, Command] = {"context": _context, "records": _records}


def _entry(args: argparse.Namespace) -> LogEntry:
    entry = new_entry(args.text, kind=args.kind)
    if args.entry_id:
        entry.entry_id = args.entry_id
    return entry


async def _appended(entry: LogEntry, append: Awaitable[int]) -> int:
    """Print the log's length after `append`; when it may have been appended though it
    failed, say which --entry-id makes running it again safe."""
    try:
        length = await append
    except PacketbusError as exc:
        if not exc.outcome_unknown:
            raise
        return fail(
            f"{exc.code.name}: {exc.message} (the entry may have been appended: run the "
            f"command again with --entry-id {entry.entry_id} to find out)",
            status=exc.code.name,
        )
    print(json.dumps({"length": length}))
    return 0


class _Counting:
    """A binary sink that adds each write's length to a progress bar."""

    def __init__(self, sink: BinaryIO, progress: tqdm[Any]) -> None:
        self._sink = sink
        self._progress = progress

    def write(self, data: bytes) -> int:
        written = self._sink.write(data)
        self._progress.update(len(data))
        return written
