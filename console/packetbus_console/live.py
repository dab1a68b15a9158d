"""Live views: a JSON view re-read on the caller's behalf and pushed as Server-Sent Events.

The packetbus API has watches for agents (events.py) and tasks, but not for everything a page
shows (held packets, the carcel, decision counts, topics, findings). For those the console
re-reads the view every few seconds with the caller's own client and pushes it to the browser
whenever the answer differs from the last one pushed, so a page never needs a manual refresh.

A view is an async function ``(request, client) -> dict`` (the JSON object the plain GET route
answers). `json_route(view)` is that GET route; `live_route(view)` is its ``.../events``
twin, taking the same query parameters plus ``interval`` (seconds between reads,
`MIN_INTERVAL`-`MAX_INTERVAL`, default `INTERVAL`)::

    event: snapshot
    data: <the view's JSON>          (the first read, then each read whose answer changed)

    : keepalive                      (every KEEPALIVE seconds without a change)

    event: error
    data: {"error": "...", "code": "<NAME>"}   (a later read failed; the stream ends)

The first read is made before the answer starts, so a bad query or a refused call is the
plain route's JSON error (400, 401, 403, ...), not a stream. A stream ends with an
``UNAUTHENTICATED`` error event when its session is signed out or expires, so a signed-out
browser stops receiving data at the next read. Live views are bounded: at most
`LiveViews.most` at once per console (beyond: 503 ``RESOURCE_EXHAUSTED``); each holds no
more than its last answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from packetbus import Client, PacketbusError

from .errors import ApiError
from .sessions import COOKIE
from .shapes import number

if TYPE_CHECKING:  # app imports this module (Console holds a LiveViews)
    from .app import Console, Handler

View = Callable[[Request, Client], Awaitable[dict[str, Any]]]

INTERVAL = 2.0  # seconds between reads, by default
MIN_INTERVAL = 0.25
MAX_INTERVAL = 60.0
KEEPALIVE = 15.0  # seconds without a pushed message before a keepalive comment
MAX_VIEWS = 64  # live views open at once per console, by default

_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class LiveViews:
    """How many live views are open (`open`), and the most allowed at once (`most`)."""

    def __init__(self, most: int = MAX_VIEWS) -> None:
        self.most = most
        self.open = 0


def _console(request: Request) -> Console:
    return cast("Console", request.app.state.console)


def json_route(view: View) -> Handler:
    """The plain GET route of `view`: its JSON answer."""

    async def handler(request: Request, client: Client) -> Response:
        return JSONResponse(await view(request, client))

    return handler


def live_route(view: View) -> Handler:
    """The ``.../events`` route of `view` (see the module docstring)."""

    async def handler(request: Request, client: Client) -> Response:
        interval = _interval(request)
        views = _console(request).live
        if views.open >= views.most:
            raise ApiError(
                503, "RESOURCE_EXHAUSTED", f"{views.most} live views are open: close one first"
            )
        views.open += 1
        try:
            first = await view(request, client)
        except BaseException:
            views.open -= 1
            raise
        # The session the stream reads for (None: no session, the console's default
        # client), so its end is noticed (see _stream).
        cookie = request.cookies.get(COOKIE)
        session = cookie if _console(request).sessions.get(cookie) is not None else None
        return StreamingResponse(
            _stream(request, client, view, first, interval, session),
            media_type="text/event-stream",
            headers=_HEADERS,
        )

    return handler


def _interval(request: Request) -> float:
    return number(
        request, "interval", low=MIN_INTERVAL, high=MAX_INTERVAL, default=INTERVAL, unit=" seconds"
    )


def _snapshot(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _error(code: str, message: str) -> str:
    return f"event: error\ndata: {json.dumps({'error': message, 'code': code})}\n\n"


async def _stream(
    request: Request,
    client: Client,
    view: View,
    first: dict[str, Any],
    interval: float,
    session: str | None,
) -> AsyncIterator[str]:
    console = _console(request)
    try:
        last = _snapshot(first)
        yield f"event: snapshot\ndata: {last}\n\n"
        quiet = 0.0
        while True:
            await asyncio.sleep(interval)
            # A session signed out (or expired) since the stream began: stop here,
            # rather than reading on with the token it held.
            if session is not None and console.sessions.get(session) is None:
                yield _error("UNAUTHENTICATED", "the session ended: sign in again")
                return
            try:
                data = _snapshot(await view(request, client))
            except PacketbusError as exc:
                yield _error(exc.code.name, exc.message)
                return
            except ApiError as exc:
                yield _error(exc.code, str(exc))
                return
            if data != last:
                last, quiet = data, 0.0
                yield f"event: snapshot\ndata: {data}\n\n"
                continue
            quiet += interval
            if quiet >= KEEPALIVE:
                quiet = 0.0
                yield ": keepalive\n\n"
    finally:
        console.live.open -= 1
