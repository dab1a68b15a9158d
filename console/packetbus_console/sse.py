"""Server-Sent Events as the console sends them (events, live, overview): one message
format, one keepalive, one response shape, and how a stream notices that its session
ended.

A message is ``[id: <id>]\\nevent: <name>\\ndata: <compact JSON>\\n\\n``; an error ends a
stream with ``event: error`` and ``{"error", "code"}`` (as the JSON errors); a comment
``: keepalive`` goes out after `KEEPALIVE` seconds without a message, so proxies keep an
idle stream open (WHATWG HTML, "Server-sent events").
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from .sessions import COOKIE

if TYPE_CHECKING:  # app imports live, which imports this module
    from .app import Console

KEEPALIVE = 15.0  # seconds without a message before a keepalive comment
KEEPALIVE_COMMENT = ": keepalive\n\n"


def message(event: str, data: Any, *, ident: str | None = None) -> str:
    """One SSE message: `data` as compact JSON (keys sorted, so equal data is equal text)."""
    text = json.dumps(data, separators=(",", ":"), sort_keys=True)
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {text}\n\n"


def error(code: str, text: str) -> str:
    """The message that ends a stream with an error (`code`: a gRPC status name or the
    console's own)."""
    return message("error", {"error": text, "code": code})


SESSION_ENDED = error("UNAUTHENTICATED", "the session ended: sign in again")


def response(chunks: AsyncIterator[str]) -> StreamingResponse:
    """The streaming answer sending `chunks`: never cached, never buffered by a proxy."""
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def session_of(console: Console, request: Request) -> str | None:
    """The session `request` streams for (None: no session, the console's default
    client), so that `ended` can tell when it is signed out or expires."""
    cookie = request.cookies.get(COOKIE)
    return cookie if console.sessions.get(cookie) is not None else None


def ended(console: Console, session: str | None) -> bool:
    """Whether the stream's session has ended since it began (signed out, expired): the
    stream then stops, rather than go on with the token the session held."""
    return session is not None and console.sessions.get(session) is None
