"""``GET /api/agents/events``: membership events as Server-Sent Events; `relay` serves
any gRPC watch with cursors so (tasks.py: a queue's task events).

Each WatchAgents event is one SSE message::

    id: <the event's cursor>
    event: membership
    data: <MembershipEvent as JSON: cursor, kind (MEMBERSHIP_EVENT_KIND_JOINED,
           _STALE, _LEFT...), agent, oldState, newState, at, reason>

The stream starts after ``Last-Event-ID`` (the header a browser's EventSource
sends when it reconnects) or the ``after`` query parameter when given, else with
the events after it opens: its first message is then ``id: <start cursor>``,
``event: start``, ``data: {"cursor": "<start cursor>"}``, the cursor the server
started the watch after, so a browser that reconnects before any event resumes
there and misses nothing (the gRPC watch itself resumes the same way). A
comment line (``: keepalive``) every `sse.KEEPALIVE` seconds without events keeps
proxies from closing an idle stream. A refused or failed watch ends the stream with
one ``event: error`` message (``{"error", "code"}``, as the JSON errors); a
watch refused before it starts is answered as a JSON error instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from packetbus import Client, PacketbusError
from packetbus.v1 import agent_service_pb2

from . import sse
from .errors import from_packetbus
from .shapes import as_json

ADMISSION = 10.0  # seconds the server may take to admit (or refuse) the watch
REFUSAL_WAIT = 0.5  # seconds, for a resumed watch (see agent_events)


class _Cursored(Protocol):
    @property
    def cursor(self) -> str: ...


E = TypeVar("E", bound=_Cursored)
# Opens a watch: after a cursor (""), calling `started` with the cursor a watch
# from now starts after.
OpenWatch = Callable[[str, Callable[[str], None]], AsyncIterator[E]]


def _message(kind: str, event: _Cursored) -> str:
    assert isinstance(event, Message)  # a gRPC watch's events are protobuf messages
    return sse.message(kind, as_json(event), ident=event.cursor)


async def agent_events(request: Request, client: Client) -> Response:
    def open_watch(
        after: str, started: Callable[[str], None]
    ) -> AsyncIterator[agent_service_pb2.MembershipEvent]:
        if after:
            return client.watch_agents(after_cursor=after)
        return client.watch_agents(started=started)

    return await relay(request, open_watch, "membership")


async def relay(request: Request, open_watch: OpenWatch[E], kind: str) -> Response:
    """A gRPC watch as the SSE stream the module docstring describes, each event an
    `kind` message (`open_watch`: see OpenWatch; a watch refused before it starts is
    a JSON error answer)."""
    after = request.headers.get("last-event-id") or request.query_params.get("after", "")
    start: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def started(cursor: str) -> None:
        if not start.done():
            start.set_result(cursor)

    watch = open_watch(after, started)
    # The watch's admission (its start cursor, its first event or its refusal) is
    # awaited here, so a watch the server refuses is an ordinary JSON error answer.
    first: asyncio.Task[E] = asyncio.ensure_future(anext(aiter(watch)))
    # Resumed after a cursor, the server sends no start cursor: a refusal comes at
    # once, so a short wait tells it from a watch with no event yet.
    admitted: set[asyncio.Future[Any]] = {first, start}
    await asyncio.wait(
        admitted,
        timeout=REFUSAL_WAIT if after else ADMISSION,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if first.done() and not first.cancelled() and first.exception() is not None:
        error = first.exception()
        if isinstance(error, PacketbusError):
            return from_packetbus(error)
        raise error  # type: ignore[misc]
    opening = ": connected\n\n"
    if start.done():
        cursor = start.result()
        opening = sse.message("start", {"cursor": cursor}, ident=cursor)
    return sse.response(_stream(watch, first, opening, kind))


async def _stream(
    watch: AsyncIterator[E], first: asyncio.Task[E], opening: str, kind: str
) -> AsyncIterator[str]:
    pending: asyncio.Task[E] | None = first
    yield opening
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(watch))
            done, _ = await asyncio.wait({pending}, timeout=sse.KEEPALIVE)
            if not done:
                yield sse.KEEPALIVE_COMMENT
                continue
            task, pending = pending, None
            try:
                event = task.result()
            except StopAsyncIteration:
                return
            except PacketbusError as exc:
                yield sse.error(exc.code.name, exc.message)
                return
            yield _message(kind, event)
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
