"""The gateway's HTTP side: one ASGI app routing each request to an agent.

Paths (``<id>`` is the agent id, percent-encoded):

- ``/.well-known/agent-card.json``: the default agent's card (404 without one);
- ``/agents/<id>/.well-known/agent-card.json``: that agent's card;
- ``/agents/<id>/``: A2A JSON-RPC (POST);
- ``/agents/<id>/rest/...``: A2A HTTP+JSON (``/message:send``, ``/tasks/{id}``...).

Cards are read from the registry on every request (they carry an ETag and a
short max-age, see `cards`); they are public, as the A2A spec has them.

Credentials (see `auth`): an A2A call's ``Authorization: Bearer <JWT>`` makes
every packetbus call for it under that token. A malformed Authorization header
is answered 401; with ``require_auth`` so is a call without one (both with
``WWW-Authenticate: Bearer``), and the cards declare the bearer scheme. A call
the packetbus server refuses (UNAUTHENTICATED / PERMISSION_DENIED) is answered
401 / 403. A2A calls go to an a2a-sdk `DefaultRequestHandler`
per agent, built on first use and kept in a bounded LRU; it holds no task
state of its own beyond the streams it serves (tasks are in the context store).
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from urllib.parse import unquote

import grpc
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes, create_rest_routes
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from packetbus import Client, PacketbusError
from packetbus.v1 import agent_service_pb2

from .auth import (
    BadCredential,
    ContextBuilder,
    NotingExecutor,
    Principals,
    Refusals,
    Replacing,
    bearer_token,
    refusals,
    refused_response,
    subject,
)
from .cards import AGENTS_PREFIX, CARD_PATH, REST_SUFFIX, build_card, card_response
from .executor import InboxExecutor
from .task_store import ContextTaskStore

_log = logging.getLogger(__name__)
_MAX_HANDLERS = 256  # agents whose handler stays built; others are built again on use


class Gateway:
    """The ASGI app (see the module docstring).

    `clients`: the packetbus client per request (see `auth.Principals`; a Client:
    that one for every request, credentials or not); `base_url`: how clients reach
    this gateway (put in cards); `default_agent`: the agent served at the root
    card ("" for none); `answer_timeout`: seconds a task waits for the agent's
    final answer (see `InboxExecutor`); `require_auth`: refuse A2A calls without
    a bearer token (401), and say so in the cards.
    """

    def __init__(
        self,
        clients: Client | Principals,
        base_url: str,
        *,
        default_agent: str = "",
        answer_timeout: float = 300.0,
        require_auth: bool = False,
    ) -> None:
        self._principals = clients if isinstance(clients, Principals) else Principals(clients)
        # The gateway's own settings: registry reads for cards and routing.
        self._client = self._principals.default
        self._require_auth = require_auth
        self._base_url = base_url.rstrip("/")
        self._default_agent = default_agent
        self._answer_timeout = answer_timeout
        self._apps: OrderedDict[str, tuple[Starlette, DefaultRequestHandler]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        if path == CARD_PATH:
            await self._card(self._default_agent, scope, receive, send)
        elif path.startswith(AGENTS_PREFIX):
            encoded, _, rest = path[len(AGENTS_PREFIX) :].partition("/")
            agent_id, rest = unquote(encoded), "/" + rest
            if rest == CARD_PATH:
                await self._card(agent_id, scope, receive, send)
            else:
                await self._a2a(agent_id, encoded, rest, scope, receive, send)
        else:
            await _not_found("no such path: A2A agents are under /agents/<id>/")(
                scope, receive, send
            )

    async def _agent(self, agent_id: str) -> agent_service_pb2.Agent | None:
        if not agent_id:
            return None
        try:
            return await self._client.get_agent(agent_id)
        except PacketbusError as exc:
            if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise

    async def _card(self, agent_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        agent = await self._agent(agent_id)
        if agent is None:
            await _not_found(f"no agent {agent_id!r} is registered")(scope, receive, send)
            return
        card = build_card(agent, self._base_url, require_auth=self._require_auth)
        await card_response(card, Request(scope, receive))(scope, receive, send)

    async def _a2a(
        self, agent_id: str, encoded: str, rest: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            token = bearer_token(Request(scope).headers.get("authorization"))
            if token is not None:
                subject(token)
        except BadCredential as exc:
            await refused_response(401, str(exc))(scope, receive, send)
            return
        if token is not None and not self._principals.forwards:
            message = (
                "this gateway cannot forward credentials: its packetbus connection is "
                "neither TLS nor to this machine"
            )
            await refused_response(401, message)(scope, receive, send)
            return
        if token is None and self._require_auth:
            message = "this gateway requires a credential: Authorization: Bearer <JWT>"
            await refused_response(401, message)(scope, receive, send)
            return
        app = await self._app_for(agent_id)
        if app is None:
            await _not_found(f"no agent {agent_id!r} is registered")(scope, receive, send)
            return
        prefix = AGENTS_PREFIX + encoded
        inner = dict(scope)
        inner["path"] = unquote(rest)
        inner["raw_path"] = rest.encode("latin-1")
        inner["root_path"] = scope.get("root_path", "") + prefix
        # Refusals met while serving this call (a2a-sdk's tasks copy the variable).
        kept = Refusals()
        reset = refusals.set(kept)
        try:
            await app(inner, receive, Replacing(send, kept))
        finally:
            refusals.reset(reset)

    async def _app_for(self, agent_id: str) -> Starlette | None:
        built = self._apps.get(agent_id)
        if built is not None:
            self._apps.move_to_end(agent_id)
            return built[0]
        agent = await self._agent(agent_id)
        if agent is None:
            return None
        card = build_card(agent, self._base_url, require_auth=self._require_auth)
        with warnings.catch_warnings():
            # A VersionedTaskStore without an event stream warns that streams do
            # not cross replicas: known, and the next slice's work (see __init__).
            warnings.simplefilter("ignore")
            handler = DefaultRequestHandler(
                agent_executor=NotingExecutor(
                    InboxExecutor(self._principals, agent_id, answer_timeout=self._answer_timeout)
                ),
                task_store=ContextTaskStore(self._principals, agent_id),
                agent_card=card,
            )
        app = Starlette(
            routes=[
                *create_jsonrpc_routes(handler, "/", context_builder=ContextBuilder()),
                *create_rest_routes(
                    handler, context_builder=ContextBuilder(), path_prefix=REST_SUFFIX
                ),
            ]
        )
        self._apps[agent_id] = (app, handler)
        while len(self._apps) > _MAX_HANDLERS:
            # Dropped, not closed: tasks it still runs finish on their own.
            self._apps.popitem(last=False)
        return app

    async def aclose(self) -> None:
        """Drain every agent's handler (its running tasks end)."""
        while self._apps:
            _, (_, handler) = self._apps.popitem()
            await handler.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _not_found(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=404)
