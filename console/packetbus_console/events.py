"""``GET /api/agents/events``: membership events as Server-Sent Events.

Each WatchAgents event is one SSE message::

    id: <the event's cursor>
    event: membership
    data: <MembershipEvent as JSON: cursor, kind (MEMBERSHIP_EVENT_KIND_JOINED,
           _STALE, _LEFT...), agent, oldState, newState, at, reason>

The stream starts after ``Last-Event-ID`` (the header a browser's EventSource
sends when it reconnects) or the ``after`` query parameter when given, else with
the events after it opens (the client resumes from the server's start cursor if
the gRPC stream breaks before the first event, so nothing in between is lost). A
comment line (``: keepalive``) every `KEEPALIVE` seconds without events keeps
proxies from closing an idle stream. A refused or failed watch ends the stream with
one ``event: error`` message (``{"error", "code"}``, as the JSON errors); a
watch refused before it starts is answered as a JSON error instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from packetbus import Client, PacketbusError
from packetbus.v1 import agent_service_pb2

from .errors import from_packetbus
from .shapes import as_json

KEEPALIVE = 15.0  # seconds


def _message(event: agent_service_pb2.MembershipEvent) -> str:
    data = json.dumps(as_json(event), separators=(",", ":"))
    return f"id: {event.cursor}\nevent: membership\ndata: {data}\n\n"


async def agent_events(request: Request, client: Client) -> Response:
    after = request.headers.get("last-event-id") or request.query_params.get("after", "")
    watch = client.watch_agents(after_cursor=after) if after else client.watch_agents()
    # The first event (or the refusal) is awaited here, so a watch the server
    # refuses is an ordinary JSON error answer, not a stream that ends at once.
    first: asyncio.Task[agent_service_pb2.MembershipEvent] = asyncio.ensure_future(
        anext(aiter(watch))
    )
    done, _ = await asyncio.wait({first}, timeout=0.5)
    if done and first.exception() is not None:
        error = first.exception()
        if isinstance(error, PacketbusError):
            return from_packetbus(error)
        raise error  # type: ignore[misc]
    return StreamingResponse(
        _stream(watch, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(
    watch: AsyncIterator[agent_service_pb2.MembershipEvent],
    first: asyncio.Task[agent_service_pb2.MembershipEvent],
) -> AsyncIterator[str]:
    pending: asyncio.Task[agent_service_pb2.MembershipEvent] | None = first
    yield ": connected\n\n"
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(watch))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE)
            if not done:
                yield ": keepalive\n\n"
                continue
            task, pending = pending, None
            try:
                event = task.result()
            except StopAsyncIteration:
                return
            except PacketbusError as exc:
                data = json.dumps({"error": exc.message, "code": exc.code.name})
                yield f"event: error\ndata: {data}\n\n"
                return
            yield _message(event)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(watch, "aclose", None)
        if closer is not None:
            with contextlib.suppress(BaseException):
                await closer()


ROUTES = (("/api/agents/events", ("GET",), agent_events),)
