"""The gateway's HTTP side: one ASGI app routing each request to an agent.

Paths (``<id>`` is the agent id, percent-encoded):

- ``/.well-known/agent-card.json``: the default agent's card (404 without one);
- ``/agents/<id>/.well-known/agent-card.json``: that agent's card;
- ``/agents/<id>/``: A2A JSON-RPC (POST);
- ``/agents/<id>/rest/...``: A2A HTTP+JSON (``/message:send``, ``/tasks/{id}``...,
  and the binding's tenant-prefixed forms ``/rest/<tenant>/message:send``...).

Cards are read from the registry on every request (they carry an ETag and a
short max-age, see `cards`). A2A calls go through one a2a-sdk route set on one
`AgentRouter` to the agent's `DefaultRequestHandler` (`AgentHandlers`, shared
with the gRPC servicer); an unregistered agent is a 404 before a2a-sdk sees it, and a body nested too
deeply for a2a-sdk's JSON parser is refused before it too (`bodies.guard`).
Cards are public, as the A2A spec has them.

Credentials (see `auth`): an A2A call's ``Authorization: Bearer <JWT>`` makes
every packetbus call for it under that token. A call `auth.credential_problem`
refuses (a malformed Authorization header, a token the gateway may not forward,
none under ``require_auth``) is answered 401 with ``WWW-Authenticate: Bearer``;
with ``require_auth`` the cards declare the bearer scheme. A call
the packetbus server refuses (UNAUTHENTICATED / PERMISSION_DENIED) is answered
401 / 403.
"""

from __future__ import annotations

from urllib.parse import unquote

from a2a.server.routes import create_jsonrpc_routes, create_rest_routes
from a2a.types.a2a_pb2 import AgentCard
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from packetbus import Client
from packetbus.v1 import agent_service_pb2

from .auth import Principals, Refusals, Replacing, credential_problem, refusals, refused_response
from .bodies import guard, route_error
from .cards import AGENTS_PREFIX, CARD_PATH, REST_SUFFIX, build_card, card_response
from .handlers import AgentHandlers
from .routing import SCOPE_AGENT, AgentRouter, PathAgentContextBuilder


class Gateway:
    """The ASGI app (see the module docstring).

    `base_url`: how clients reach this gateway over HTTP and `grpc_address`
    (``host:port``, "" without gRPC) over gRPC, both put in cards;
    `default_agent`: the agent served at the root card and answering gRPC calls
    without a tenant ("" for none); `answer_timeout`: seconds a task waits for
    the agent's final answer (see `InboxExecutor`); `require_auth`: refuse A2A
    calls without a bearer token (401), and say so in the cards. `clients`: the
    packetbus client per request (see `auth.Principals`; a Client: that one for
    every request, credentials or not). `handlers` and `router` are shared with
    the gRPC servicer (`grpc_server`).
    """

    def __init__(
        self,
        clients: Client | Principals,
        base_url: str,
        *,
        default_agent: str = "",
        answer_timeout: float = 300.0,
        grpc_address: str = "",
        require_auth: bool = False,
    ) -> None:
        self._principals = clients if isinstance(clients, Principals) else Principals(clients)
        self._require_auth = require_auth
        self._base_url = base_url.rstrip("/")
        self.grpc_address = grpc_address  # set once the gRPC port is bound
        self._default_agent = default_agent
        self.handlers = AgentHandlers(self._principals, self.card, answer_timeout=answer_timeout)
        self.router = AgentRouter(self.handlers, default_agent=default_agent)
        paths = PathAgentContextBuilder()
        self._app = Starlette(
            routes=[
                *create_jsonrpc_routes(self.router, "/", context_builder=paths),
                # Mounted, so that the binding's tenant-prefixed paths sit under it
                # too (/rest/<tenant>/message:send), as a2a-sdk's client sends them.
                Mount(REST_SUFFIX, routes=create_rest_routes(self.router, context_builder=paths)),
            ],
            exception_handlers={HTTPException: route_error},
        )

    def card(self, agent: agent_service_pb2.Agent) -> AgentCard:
        """`agent`'s card, with this gateway's addresses."""
        return build_card(agent, self._base_url, self.grpc_address, require_auth=self._require_auth)

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

    async def _card(self, agent_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        agent = await self.handlers.agent(agent_id)
        if agent is None:
            await _not_found(f"no agent {agent_id!r} is registered")(scope, receive, send)
            return
        await card_response(self.card(agent), Request(scope, receive))(scope, receive, send)

    async def _a2a(
        self, agent_id: str, encoded: str, rest: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        refused = credential_problem(
            Request(scope).headers.get("authorization"),
            forwards=self._principals.forwards,
            require_auth=self._require_auth,
        )
        if refused is not None:
            await refused_response(401, refused)(scope, receive, send)
            return
        if await self.handlers.get(agent_id) is None:
            await _not_found(f"no agent {agent_id!r} is registered")(scope, receive, send)
            return
        # ASGI's convention: path includes root_path; routes match what follows it.
        root = scope.get("root_path", "") + AGENTS_PREFIX + encoded
        inner = dict(scope)
        inner["root_path"] = root
        inner["path"] = root + unquote(rest)
        inner["raw_path"] = (root + rest).encode("latin-1")
        inner[SCOPE_AGENT] = agent_id
        replay = await guard(scope, receive, send, jsonrpc=rest == "/")
        if replay is None:
            return
        # Refusals met while serving this call (a2a-sdk's tasks copy the variable).
        kept = Refusals()
        reset = refusals.set(kept)
        try:
            await self._app(inner, replay, Replacing(send, kept))
        finally:
            refusals.reset(reset)

    async def aclose(self) -> None:
        """Drain every agent's handler (its running tasks end)."""
        await self.handlers.aclose()

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
