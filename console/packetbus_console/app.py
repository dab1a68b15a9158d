"""The console's ASGI app: sessions, the CSRF guard, and each route's packetbus client.

`Console` holds the shared packetbus connection (opened without a token), the
client for requests without a session (`default`: the console's own connection
settings, its own token if it has one), the approver identity that signs
approvals and denials (``--agent-key``), the sessions, and the Overview's metrics
scraper (``--metrics-url``, `overview`; None without it). `build_app` makes the
Starlette app serving the routes of `api`, `custody`, `events`, `topics`, `tasks`,
`findings` and `overview`, and the browser front end (`frontend`).

Every route runs through `Console.route`: a state-changing request (POST, DELETE)
without the header ``X-Packetbus-Console: 1`` is refused 403 (code ``CSRF``)
before anything else, since a cross-site form or image cannot set a custom
header; the caller's client is the session's (cookie `sessions.COOKIE`) or
`default`; a failed packetbus call is answered by `errors.from_packetbus`, the
console's own refusals by `errors.ApiError`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from packetbus import AgentIdentity, Client, PacketbusError

from .errors import ApiError, error_response, from_packetbus
from .live import LiveViews
from .overview import Overview
from .sessions import COOKIE, Sessions

CSRF_HEADER = "X-Packetbus-Console"
_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_log = logging.getLogger("packetbus_console")

Handler = Callable[[Request, Client], Awaitable[Response]]


class Console:
    """What the routes share (see the module docstring). `secure`: the console
    serves HTTPS (its session cookie is then ``Secure``); `overview`: the metrics
    scraper (None: the console was started without --metrics-url)."""

    def __init__(
        self,
        base: Client,
        default: Client | None = None,
        *,
        approver: AgentIdentity | None = None,
        secure: bool = False,
        overview: Overview | None = None,
    ) -> None:
        self.base = base
        self.default = default or base
        self.approver = approver
        self.secure = secure
        self.sessions = Sessions()
        self.live = LiveViews()
        self.overview = overview
        # The server accepted `default`'s calls at its last answer: who may see the
        # Overview while the server cannot answer (overview._admit).
        self.default_accepted = False

    def client_for(self, request: Request) -> Client:
        """The session's client (its token on every call), else `default`."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        return self.default if session is None else session.client

    def route(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """`handler` behind the CSRF guard, with the caller's client, its errors
        answered as JSON (see the module docstring)."""

        async def endpoint(request: Request) -> Response:
            if request.method in _CHANGES and request.headers.get(CSRF_HEADER) != "1":
                return error_response(
                    403, "CSRF", f"a state-changing request needs the header '{CSRF_HEADER}: 1'"
                )
            try:
                return await handler(request, self.client_for(request))
            except PacketbusError as exc:
                return from_packetbus(exc)
            except ApiError as exc:
                return error_response(exc.status, exc.code, str(exc))

        return endpoint


def build_app(console: Console) -> Starlette:
    """The console's Starlette app: the API routes under /api, the browser front end
    (`frontend`) at / and /assets."""
    from . import api, custody, events, findings, frontend, overview, tasks, topics

    # One Route per path, dispatching on the method: a wrong method is then one 405
    # whose Allow header names every method of the path (two Routes on one path
    # would answer with the first one's methods only).
    by_path: dict[str, dict[str, Handler]] = {}
    for path, methods, handler in (
        *api.ROUTES,
        *custody.ROUTES,
        *events.ROUTES,
        *topics.ROUTES,
        *tasks.ROUTES,
        *findings.ROUTES,
        *overview.ROUTES,
    ):
        by_path.setdefault(path, {}).update(dict.fromkeys(methods, handler))
    routes: list[BaseRoute] = [
        # A topic name may hold "/": sent as %2F it stays one segment (EncodedSlashRoute).
        (EncodedSlashRoute if path.startswith("/api/topics/") else Route)(
            path, console.route(_by_method(handlers)), methods=sorted(handlers)
        )
        for path, handlers in by_path.items()
    ]
    routes.extend(frontend.routes())
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_routed})
    # A trailing slash is no route (a JSON 404), not a 307 to the path without it: an
    # API caller gets an answer it can read, and no redirect is built from a request.
    app.router.redirect_slashes = False
    app.state.console = console
    return app


# Stands for an escaped "/" while a path is matched: NUL is in no topic name, and a
# path whose raw form holds %00 is matched as it is (and its topic refused).
_ESCAPED_SLASH = "\x00"


class EncodedSlashRoute(Route):
    """A Route whose path parameters may hold "/" sent escaped (%2F): matched on the
    request's raw path with each escaped slash kept inside its segment, so
    ``/api/topics/a%2Fevents`` is topic ``a/events``, not topic ``a``'s stream.
    Unescaped slashes are matched as by Route (``{topic:path}`` takes them)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        raw = scope.get("raw_path") or b""
        lowered = raw.lower()
        if scope["type"] != "http" or b"%2f" not in lowered or b"%00" in lowered:
            return super().matches(scope)
        text = raw.decode("latin-1").partition("?")[0]
        path = "/".join(
            unquote(segment).replace("/", _ESCAPED_SLASH) for segment in text.split("/")
        )
        match, child = super().matches({**scope, "path": path, "root_path": ""})
        params: dict[str, Any] = child.get("path_params", {})
        for name, value in params.items():
            if isinstance(value, str):
                params[name] = value.replace(_ESCAPED_SLASH, "/")
        return match, child


def _by_method(handlers: dict[str, Handler]) -> Handler:
    """The handler of each method (the Route admits only these methods, and HEAD
    where it admits GET: Starlette adds it, answered as GET without the body)."""

    async def handler(request: Request, client: Client) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request, client)

    return handler


# Starlette's own refusals (no route, a route without the method), by status: the
# code named in the JSON error, as `errors` names the console's.
_ROUTING_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


async def _not_routed(request: Request, exc: Exception) -> Response:
    """What no route serves: a page of the front end (`frontend.page`) for a GET
    outside the API, else the API's JSON error (`_routing_error`)."""
    assert isinstance(exc, HTTPException)
    from . import frontend

    page = frontend.page(request) if exc.status_code == 404 else None
    return page if page is not None else await _routing_error(request, exc)


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTPException (404 no such route, 405 wrong method: its
    ``Allow`` header kept) as the API's JSON error, not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    code = _ROUTING_CODES.get(exc.status_code, "INVALID_ARGUMENT")
    if exc.status_code == 404:
        api = request.url.path == "/api" or request.url.path.startswith("/api/")
        message = "no such API route" if api else "no page or file here"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed here"
    else:
        message = str(exc.detail)
    response = error_response(exc.status_code, code, message)
    response.headers.update(exc.headers or {})
    return response


def console_of(request: Request) -> Console:
    """The `Console` serving `request`."""
    console = request.app.state.console
    assert isinstance(console, Console)
    return console
