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

    : keepalive                      (every sse.KEEPALIVE seconds without a change)

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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from packetbus import Client, PacketbusError

from . import sse
from .errors import ApiError
from .shapes import number

if TYPE_CHECKING:  # app imports this module (Console holds a LiveViews)
    from .app import Console, Handler

View = Callable[[Request, Client], Awaitable[dict[str, Any]]]

INTERVAL = 2.0  # seconds between reads, by default
MIN_INTERVAL = 0.25
MAX_INTERVAL = 60.0
MAX_VIEWS = 64  # live views open at once per console, by default


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
        session = sse.session_of(_console(request), request)
        return sse.response(_stream(request, client, view, first, interval, session))

    return handler


def _interval(request: Request) -> float:
    return number(
        request, "interval", low=MIN_INTERVAL, high=MAX_INTERVAL, default=INTERVAL, unit=" seconds"
    )


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
        last = sse.message("snapshot", first)
        yield last
        quiet = 0.0
        while True:
            await asyncio.sleep(interval)
            # A session signed out (or expired) since the stream began: stop here,
            # rather than reading on with the token it held.
            if sse.ended(console, session):
                yield sse.SESSION_ENDED
                return
            try:
                data = sse.message("snapshot", await view(request, client))
            except PacketbusError as exc:
                yield sse.error(exc.code.name, exc.message)
                return
            except ApiError as exc:
                yield sse.error(exc.code, str(exc))
                return
            if data != last:
                last, quiet = data, 0.0
                yield data
                continue
            quiet += interval
            if quiet >= sse.KEEPALIVE:
                quiet = 0.0
                yield sse.KEEPALIVE_COMMENT
    finally:
        console.live.open -= 1
