"""The ``packetbus`` commands on packets and the server: dispatch, get, tail, info, health."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from packetbus.v1 import packet_pb2, packet_service_pb2, speech_act_pb2

from ._cli_args import COUNT, UINT32, describe, fail, fail_call, integer
from ._cli_json import json_line, json_pretty
from ._cli_progress import info
from ._client import EARLIEST, LATEST, Client, fill_defaults, sign_as
from ._config import AgentIdentity
from ._errors import PacketbusError, describe_gap
from ._inbox import inbox_topic

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]

_CONTENT_KINDS = ("task", "finding", "context", "data", "raw")
_SPEECH_PREFIX = "SPEECH_ACT_"


def _speech_acts() -> list[str]:
    return [
        name.removeprefix(_SPEECH_PREFIX).lower().replace("_", "-")
        for name in speech_act_pb2.SpeechAct.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
        if name != "SPEECH_ACT_UNSPECIFIED"
    ]


def add_parsers(commands: Any) -> None:
    """dispatch, get and tail."""
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
    dispatch.add_argument(
        "--tracking-id",
        help="UUID, the idempotency key: the same command again answers the original "
        "result (generated when absent)",
    )
    dispatch.add_argument(
        "--ttl", type=integer(0, UINT32), default=0, help="seconds (default: server's, 3600)"
    )
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
    tail.add_argument("--count", type=COUNT, default=0, help="stop after N packets")


def add_server_parsers(commands: Any) -> None:
    """info and health."""
    commands.add_parser("info", help="print server info as JSON")
    commands.add_parser(
        "health", help="exit 0 if the server reports SERVING (grpc.health.v1), 1 otherwise"
    )


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
        return fail(str(exc), 2)
    if args.agent_key:
        try:
            identity = AgentIdentity.load(args.agent_key)
        except ValueError as exc:
            return fail(str(exc), 2)
        fill_defaults(packet)
        sign_as(packet, identity)
    try:
        [result] = await client.dispatch_batch([packet], timeout=args.timeout)
    except PacketbusError as exc:
        if not exc.outcome_unknown:
            raise
        # Stored or not: the same packet again answers the original result.
        return fail(
            f"{exc.code.name}: {exc.message} (the packet may have been stored: run the "
            f"command again with --tracking-id {packet.tracking_id} to find out)",
            status=exc.code.name,
        )
    print(json_pretty(result))
    if result.WhichOneof("outcome") == "error":
        refused = PacketbusError.from_status(result.error)
        return fail_call(refused, describe(refused))
    return 0


async def _get(client: Client, args: argparse.Namespace) -> int:
    stored = await client.get_packet(args.tracking_id, timeout=args.timeout)
    print(json_pretty(stored))
    return 0


def _print_gap(gap: packet_service_pb2.SubscriptionGap) -> None:
    # On stdout with the packets, so a consumer of the JSON lines sees the gap
    # in its place; on stderr for the person watching.
    print(json.dumps({"gap": json_format.MessageToDict(gap)}, separators=(",", ":")), flush=True)
    info(f"warning: {describe_gap(gap)}")


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


async def _info(client: Client, args: argparse.Namespace) -> int:
    print(json_pretty(await client.server_info(timeout=args.timeout)))
    return 0


async def _health(client: Client, args: argparse.Namespace) -> int:
    status = await client.health(timeout=args.timeout)
    print(json.dumps({"status": status}) if args.json else status)
    return 0 if status == "SERVING" else 1


COMMANDS: dict[str, Command] = {
    "dispatch": _dispatch,
    "get": _get,
    "tail": _tail,
    "info": _info,
    "health": _health,
}
