"""Topics and consumer groups: the topics a caller may read, one topic's retention and
groups, and browsing a topic's packets from a cursor.

Every answer is a JSON object in protobuf's JSON mapping (camelCase keys; 64-bit
counts as strings, as that mapping gives them); errors are `errors`' shape.

- ``GET /api/topics?prefix=&limit=`` -> ``{"topics": [TopicSummary], "truncated":
  bool}``: TopicService.ListTopics in name order (``name``, ``packets``,
  ``firstCursor``, ``lastCursor``, ``retention``, ``consumerGroups``,
  ``carcelEntries``), only topics the caller holds ``topics.subscribe`` on; at most
  `limit` (1-1000, default 1000). ``/api/topics/events``: the same, live (`live`).
- ``GET /api/topics/{topic}`` -> ``{"topic": str, "retention": TopicRetention,
  "packets": str, "storedBytes": str, "groups": [ConsumerGroup] | null,
  "groupsRefused": str}``: GetTopicRetention (needs ``topics.subscribe``) and
  ListConsumerGroups (``outstanding``, ``consumers``, ``lag`` when the store can
  tell, ``lastDeliveredCursor``). Without ``groups.read`` on the topic, ``groups`` is
  null and ``groupsRefused`` says why (the rest is still shown); otherwise
  ``groupsRefused`` is "". ``/api/topics/{topic}/events``: the same, live.
- ``GET /api/topics/{topic}/packets?after=<cursor>&limit=`` -> ``{"packets":
  [PacketRow], "nextCursor": str, "gaps": [SubscriptionGap]}``: the packets stored
  after cursor `after` (from the oldest kept when absent), at most `limit` (1-200,
  default 50), read with Subscribe and ended as soon as no more is stored now (no
  packet within `IDLE_SECONDS`; `FIRST_WAIT_SECONDS` for the first): never waits
  for new ones. A PacketRow is ``{"cursor", "trackingId", "origin", "speechAct",
  "contents" (the contents field set, "" for none), "contentBytes" (the packet's
  stored content, in bytes), "dispatchedAt", "storedAt", "conversationId"}``.
  ``nextCursor`` is where the next page starts (pass it as `after`): the last
  packet's cursor, or past a gap; `after` itself when nothing came. ``gaps`` are the
  packets retention or expiry removed before they could be read (each with
  ``resumeAfterCursor`` and ``reason``), skipped, never silently.

Topic names may hold ``/`` (``inbox/...``): sent escaped (``%2F``, as the front end
does) ``{topic}`` is one segment (`app.EncodedSlashRoute`), so ``a%2Fevents`` is topic
``a/events``; sent unescaped it is the rest of the path, where a name ending in
``/events`` or ``/packets`` would be read as topic ``a``'s stream or packets. Only a
topic named exactly ``events`` has no detail path (``/api/topics/events`` is the
listing's stream). A malformed `after`, `limit` or topic is 400 ``INVALID_ARGUMENT``; a
refusal 401 or 403 as packetbus answered it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
from starlette.requests import Request

from packetbus import Client, PacketbusError
from packetbus.v1 import packet_service_pb2, speech_act_pb2

from .errors import ApiError
from .live import json_route, live_route
from .shapes import as_json, count, first, is_utf8, limit

BROWSE_DEFAULT = 50
BROWSE_MOST = 200
FIRST_WAIT_SECONDS = 1.0  # for the first packet: a stored one comes at once
IDLE_SECONDS = 0.25  # between packets: the stream sends what is stored in batches
_CURSOR = re.compile(r"[0-9]{1,20}-[0-9]{1,20}\Z")
_CALL_SECONDS = 10


def _topic(request: Request) -> str:
    topic = str(request.path_params["topic"])
    if not topic or not is_utf8(topic):
        raise ApiError(400, "INVALID_ARGUMENT", "the path must name a topic")
    return topic


async def topics(request: Request, client: Client) -> dict[str, Any]:
    most = limit(request)
    prefix = request.query_params.get("prefix", "")
    if not is_utf8(prefix):
        raise ApiError(400, "INVALID_ARGUMENT", "prefix is not valid Unicode")
    found, truncated = await first(client.list_topics(prefix, timeout=_CALL_SECONDS), most)
    return {"topics": [as_json(summary) for summary in found], "truncated": truncated}


async def topic(request: Request, client: Client) -> dict[str, Any]:
    name = _topic(request)
    held = await client.get_topic_retention(name, timeout=_CALL_SECONDS)
    doc: dict[str, Any] = {"topic": name, **as_json(held), "groups": None, "groupsRefused": ""}
    try:
        groups = await client.list_consumer_groups(name, timeout=_CALL_SECONDS)
    except PacketbusError as exc:
        if exc.code != grpc.StatusCode.PERMISSION_DENIED:
            raise
        doc["groupsRefused"] = exc.message
    else:
        doc["groups"] = [as_json(group) for group in groups]
    return doc


def _browse_limit(request: Request) -> int:
    return count(request, "limit", most=BROWSE_MOST, default=BROWSE_DEFAULT)


def _after(request: Request) -> str | None:
    raw = request.query_params.get("after")
    if raw is None or raw == "":
        return None
    if not _CURSOR.match(raw):
        raise ApiError(
            400, "INVALID_ARGUMENT", f"after must be a cursor like 1700000000000-0, not {raw!r}"
        )
    return raw


def packet_row(stored: packet_service_pb2.StoredPacket) -> dict[str, Any]:
    """What the browse list shows of one stored packet (see the module docstring)."""
    packet = stored.packet
    return {
        "cursor": stored.receipt.cursor,
        "trackingId": packet.tracking_id,
        "origin": packet.origin,
        "speechAct": speech_act_pb2.SpeechAct.Name(packet.speech_act),
        "contents": packet.WhichOneof("contents") or "",
        "contentBytes": len(stored.content) or packet.ByteSize(),
        "dispatchedAt": _time(packet, "dispatched_at"),
        "storedAt": _time(stored.receipt, "stored_at"),
        "conversationId": packet.conversation_id,
    }


def _time(message: Any, field: str) -> str:
    return str(getattr(message, field).ToJsonString()) if message.HasField(field) else ""


async def packets(request: Request, client: Client) -> dict[str, Any]:
    name = _topic(request)
    most = _browse_limit(request)
    after = _after(request)
    rows: list[dict[str, Any]] = []
    gaps: list[dict[str, Any]] = []
    subscription = client.subscribe(
        name,
        start=packet_service_pb2.START_POSITION_EARLIEST,
        after=after,
        max_batch_packets=most,
        on_gap=lambda gap: gaps.append(as_json(gap)),
    )
    async with subscription:
        wait = FIRST_WAIT_SECONDS
        while len(rows) < most:
            try:
                async with asyncio.timeout(wait):
                    stored = await anext(subscription)
            except (TimeoutError, StopAsyncIteration):
                break  # nothing more stored now: the page ends here
            rows.append(packet_row(stored))
            wait = IDLE_SECONDS
        next_cursor = subscription.cursor or after or ""
    return {"packets": rows, "nextCursor": next_cursor, "gaps": gaps}


# More specific paths first: {topic:path} would take "<topic>/events" whole.
ROUTES = (
    ("/api/topics", ("GET",), json_route(topics)),
    ("/api/topics/events", ("GET",), live_route(topics)),
    ("/api/topics/{topic:path}/events", ("GET",), live_route(topic)),
    ("/api/topics/{topic:path}/packets", ("GET",), json_route(packets)),
    ("/api/topics/{topic:path}", ("GET",), json_route(topic)),
)
