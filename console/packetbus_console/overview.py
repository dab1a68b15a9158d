"""The Overview: the packetbus server's Prometheus metrics, scraped by the console and
kept as a bounded history of derived series (`metrics_series`).

``packetbus console --metrics-url URL`` (repeatable: one URL per replica of the server;
their counters are summed) gives the server's /metrics endpoint, the URL
``packetbus serve --metrics-listen HOST:PORT`` prints at start (``packetbus metrics on
http://HOST:PORT/metrics``). One `Overview` per console scrapes every URL each
``--metrics-interval`` seconds (default `INTERVAL`), whatever the number of browsers, and
keeps the samples of the last `WINDOW` seconds. It never reads the store itself: the
store's gauges are what the server reads at scrape time.

A URL may carry ``user:password@`` (sent as HTTP Basic authentication, never shown: a
URL is shown and logged without it, see `shown`). An https URL is checked against the
packetbus connection's TLS CA (global ``--tls-ca``), and the connection's client
certificate is offered (an endpoint with ``--tls-client-ca`` wants it).

Routes. Who may see them: the metrics have no per-principal view (any caller who sees
them sees all of it), so a caller sees the Overview when the packetbus server accepts
it: a signed-in session, or without one a caller whose client the server accepts
(a server that authenticates nobody, or a console whose own connection carries a token or
client certificate); where the server wants credentials and the console has none of its
own, only a signed-in session (see `_admit`):

- ``GET /api/overview`` -> ``{"intervalSeconds": float, "windowSeconds": float,
  "replicas": [str], "series": [str], "samples": [Sample]}``, oldest sample first; a
  Sample is ``{"at": float (s since the epoch), "replicas": [{"url": str, "up": bool,
  "error": str | null}], "values": {series -> number | null}, "totals": {"dispatched",
  "delivered", "redeliveries", "carceled", "held", "rejected" -> number | null}}``
  (null: unknown, see `metrics_series`). 409 ``FAILED_PRECONDITION`` when the console
  was started without ``--metrics-url``.
- ``GET /api/overview/events``: Server-Sent Events: ``event: history`` with the document
  above, then ``event: sample`` with each new Sample; ``: keepalive`` comments; ``event:
  error`` (``{"error", "code": "UNAUTHENTICATED"}``) ends it when its session ends. It
  counts as one of the console's live views (`live.LiveViews`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import logging
import math
import ssl
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from packetbus import Client, PacketbusError
from packetbus._security import TlsSettings

from . import sse
from .errors import ApiError
from .metrics_series import SERIES, NotMetrics, Reading, Replica, read, sample
from .sessions import COOKIE

if TYPE_CHECKING:  # app imports this module's Overview (Console holds one)
    from .app import Console

INTERVAL = 2.0  # seconds between scrapes, by default
MIN_INTERVAL = 0.5
MAX_INTERVAL = 60.0
WINDOW = 600.0  # seconds of history kept
MAX_BODY = 16 * 1024 * 1024  # bytes of one scrape read at most
LISTENER_BACKLOG = 8  # samples queued for a slow event stream (older ones dropped)

_log = logging.getLogger("packetbus_console")
# The server cannot answer now (the console's target is down or restarting).
_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def shown(url: str) -> str:
    """`url` without its userinfo (what is shown and logged)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


class _Target:
    """One replica's metrics URL: what is fetched, its Basic credentials, how it is shown."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.shown = shown(url)
        self.url = self.shown
        self.authorization: str | None = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(pair.encode()).decode()


def _ssl_context(tls: TlsSettings | None) -> ssl.SSLContext:
    """An https scrape's TLS: the connection's CA (else the system's), its client certificate."""
    if tls is None:
        return ssl.create_default_context()
    context = ssl.create_default_context(
        cafile=str(tls.ca_file) if tls.ca_file is not None else None,
        cadata=tls.ca_pem.decode() if tls.ca_pem else None,
    )
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return context


def _fetch(target: _Target, context: ssl.SSLContext | None, timeout: float) -> str:
    """The body of one scrape (blocking: run in a thread). Raises OSError (with a message
    that names no credential) when it cannot be had."""
    request = urllib.request.Request(target.url, headers={"Accept": "text/plain"})
    if target.authorization is not None:
        request.add_unredirected_header("Authorization", target.authorization)
    https = target.url.startswith("https:")
    try:
        with urllib.request.urlopen(
            request, timeout=timeout, context=context if https else None
        ) as reply:
            body: bytes = reply.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"cannot connect: {exc.reason}") from None
    except http.client.RemoteDisconnected:  # e.g. a server shutting down
        raise OSError("the connection closed without an answer") from None
    except http.client.HTTPException as exc:  # e.g. the gRPC port: not HTTP/1.1
        raise OSError(f"not an HTTP/1.1 answer ({type(exc).__name__})") from None
    except TimeoutError:
        raise OSError(f"no answer within {timeout:g} s") from None
    if len(body) > MAX_BODY:
        raise OSError(f"the metrics are over {MAX_BODY} bytes")
    return body.decode("utf-8", errors="replace")


class Overview:
    """The scraper and its history (see the module docstring). `urls`: one per replica;
    `interval` in seconds; `tls`: the packetbus connection's TLS, for https URLs."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        interval: float = INTERVAL,
        tls: TlsSettings | None = None,
        window: float = WINDOW,
    ) -> None:
        self.targets = [_Target(url) for url in urls]
        self.interval = interval
        self.window = window
        self.timeout = min(10.0, max(5.0, interval))  # the server reads its store when scraped
        self.history: deque[dict[str, Any]] = deque(maxlen=max(1, math.ceil(window / interval)))
        self._tls = tls
        self._context: ssl.SSLContext | None = None
        self._last: list[Reading | None] = [None] * len(self.targets)
        self._errors: list[str | None] = [None] * len(self.targets)
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()

    def document(self) -> dict[str, Any]:
        """The history as ``GET /api/overview`` answers it."""
        return {
            "intervalSeconds": self.interval,
            "windowSeconds": self.window,
            "replicas": [t.shown for t in self.targets],
            "series": list(SERIES),
            "samples": list(self.history),
        }

    async def run(self) -> None:
        """Scrape every `interval` seconds until cancelled (ticks missed by a slow
        scrape are skipped, not caught up)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            try:
                await self.scrape_once()
            except Exception:  # a bug: said, and the scraper goes on (no silent end)
                _log.exception("the Overview's scrape failed")
            ticks = math.floor((loop.time() - start) / self.interval) + 1
            await asyncio.sleep(max(0.0, start + ticks * self.interval - loop.time()))

    async def scrape_once(self) -> dict[str, Any]:
        """Scrape every replica once, append the sample to the history, push it to
        each listener, and return it."""
        # One instant per sample, on both clocks: the rates are over the monotonic one,
        # and a sample's `at` is the same instant, so rate x (at - previous at) is the
        # increase whatever each fetch took.
        wall, now = time.time(), time.monotonic()
        outcomes = await asyncio.gather(*(self._scrape(t, now) for t in self.targets))
        replicas = []
        for index, (reading, error) in enumerate(outcomes):
            replicas.append(Replica(self._last[index], reading, error))
            self._report(index, error)
            # A failed scrape keeps the last reading: the next rate spans the gap, so
            # what was counted meanwhile is not lost (and a restart during it is a reset).
            self._last[index] = reading or self._last[index]
        derived = sample(replicas)
        doc: dict[str, Any] = {
            "at": round(wall, 3),
            "replicas": [
                {"url": t.shown, "up": r.current is not None, "error": r.error}
                for t, r in zip(self.targets, replicas, strict=True)
            ],
            **derived,
        }
        self.history.append(doc)
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()  # a slow stream misses the oldest sample, not memory
            queue.put_nowait(doc)
        return doc

    def _report(self, index: int, error: str | None) -> None:
        """Log a replica's scrapes failing or working again (once per change, not
        every `interval`)."""
        shown = self.targets[index].shown
        if error is not None and error != self._errors[index]:
            _log.warning("cannot scrape %s: %s", shown, error)
        elif error is None and self._errors[index] is not None:
            _log.warning("scraping %s again", shown)
        self._errors[index] = error

    async def _scrape(self, target: _Target, at: float) -> tuple[Reading | None, str | None]:
        try:
            if target.url.startswith("https:") and self._context is None:
                self._context = _ssl_context(self._tls)
            text = await asyncio.to_thread(_fetch, target, self._context, self.timeout)
            return read(text, at), None
        except (OSError, NotMetrics, ssl.SSLError) as exc:
            return None, str(exc) or type(exc).__name__

    @contextlib.contextmanager
    def listening(self) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        """A queue receiving each new sample while the block runs."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(LISTENER_BACKLOG)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)


def _console(request: Request) -> Console:
    return cast("Console", request.app.state.console)


async def _overview_for(request: Request, client: Client) -> Overview:
    """The console's Overview once the caller may see it (`_admit`); ApiError 409
    without --metrics-url."""
    console = _console(request)
    await _admit(console, request, client)
    if console.overview is None:
        raise ApiError(
            409,
            "FAILED_PRECONDITION",
            "this console has no metrics to chart: start it with --metrics-url URL "
            "(the server's /metrics, which `packetbus serve --metrics-listen HOST:PORT` "
            "prints as 'packetbus metrics on URL')",
        )
    return console.overview


async def _admit(console: Console, request: Request, client: Client) -> None:
    """Let through a signed-in session (its token was checked at sign-in and the
    session ends at its expiry), else a caller whose client the server accepts: a
    GetServerInfo call with it succeeds (a server authenticating nobody, or a console
    whose own connection carries a token or client certificate); else PacketbusError
    (401 UNAUTHENTICATED). The answer is remembered, so the Overview still shows while
    the server is down (when it matters most): a server that cannot answer now is
    judged by its last answer."""
    if console.sessions.get(request.cookies.get(COOKIE)) is not None:
        return
    try:
        await client.server_info(timeout=10)
    except PacketbusError as exc:
        if exc.code in _DOWN:
            if console.default_accepted:
                return
        else:
            console.default_accepted = False
        raise
    console.default_accepted = True


async def overview_route(request: Request, client: Client) -> Response:
    return JSONResponse((await _overview_for(request, client)).document())


async def overview_events(request: Request, client: Client) -> Response:
    overview = await _overview_for(request, client)
    console = _console(request)
    views = console.live
    if views.open >= views.most:
        raise ApiError(
            503, "RESOURCE_EXHAUSTED", f"{views.most} live views are open: close one first"
        )
    session = sse.session_of(console, request)
    views.open += 1
    return sse.response(_stream(console, overview, session))


async def _stream(console: Console, overview: Overview, session: str | None) -> AsyncIterator[str]:
    try:
        with overview.listening() as queue:
            yield sse.message("history", overview.document())
            while True:
                try:
                    doc = await asyncio.wait_for(queue.get(), sse.KEEPALIVE)
                except TimeoutError:
                    doc = None
                # A session signed out (or expired) since the stream began ends it.
                if sse.ended(console, session):
                    yield sse.SESSION_ENDED
                    return
                yield sse.KEEPALIVE_COMMENT if doc is None else sse.message("sample", doc)
    finally:
        console.live.open -= 1


ROUTES = (
    ("/api/overview", ("GET",), overview_route),
    ("/api/overview/events", ("GET",), overview_events),
)
