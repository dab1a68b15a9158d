"""A2A credentials -> packetbus principals, one rule for HTTP and gRPC.

An A2A request's bearer token (HTTP: the ``Authorization: Bearer <JWT>`` header;
gRPC: the ``authorization`` metadata entry, same value) is the caller's packetbus
credential: every packetbus call made for that request (the REQUEST and CANCEL
packets, the task store's reads and writes, ListTasks, following the answers) is
made under that token, through `Client.with_token` (one shared connection, the
token as per-call metadata). The packetbus server verifies it and applies its
permissions; the gateway verifies nothing itself.

The task's owner is the token's ``sub`` claim (read, not verified: every store call
that reads or writes a task carries the same token, which the server verifies, so
a forged ``sub`` never reaches a task). A request without a credential is made with
the gateway's own connection settings and owner "". `credential_problem` decides
which calls are refused before anything is called (a malformed credential, a token
the gateway may not forward, none under ``--require-auth``): HTTP 401 (`Gateway`),
gRPC ``UNAUTHENTICATED`` (`GrpcContextBuilder` raises `CredentialRefused`).

A packetbus refusal (UNAUTHENTICATED, PERMISSION_DENIED) of a call made for a
request is kept for that request (`refusals`, a context variable set per request:
a2a-sdk's tasks copy it) and answers the request instead of the internal error
a2a-sdk would send: HTTP 401 (with ``WWW-Authenticate: Bearer``) or 403 (`Gateway`,
`Replacing`), gRPC ``UNAUTHENTICATED`` (with trailing metadata ``www-authenticate:
Bearer``) or ``PERMISSION_DENIED`` (`abort_refused`), with packetbus's message.
a2a-sdk 1.3 has no A2A error for either: the spec leaves both to the transport.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass, field

import grpc
import grpc.aio
from a2a.auth.user import UnauthenticatedUser, User
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers.grpc_handler import DefaultGrpcServerCallContextBuilder
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.utils.errors import A2AError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Send

from packetbus import Client, PacketbusError
from packetbus._security import local_kind

# Views kept built (each is a handful of stubs over the shared channel).
_MAX_VIEWS = 1024
_REFUSING = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class BadCredential(ValueError):
    """An Authorization header that is not ``Bearer <JWT>`` (answered 401)."""


def bearer_token(authorization: str | None) -> str | None:
    """The JWT of an ``Authorization`` header value; None without a header.

    Raises BadCredential for another scheme or a value that is not a JWS compact
    token (three base64url parts).
    """
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise BadCredential("the Authorization header is not 'Bearer <token>'")
    if token.count(".") != 2 or any(ch.isspace() for ch in token):
        raise BadCredential("the bearer token is not a JWT")
    return token


def subject(token: str) -> str:
    """The ``sub`` claim of JWT `token`, unverified (see the module docstring).

    Raises BadCredential when the payload is not JSON with a string ``sub``.
    """
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise BadCredential("the bearer token's payload is not JSON") from exc
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str) or not sub:
        raise BadCredential("the bearer token has no 'sub'")
    return sub


class BearerUser(User):
    """The caller of a request with a bearer token: `user_name` is its ``sub``."""

    def __init__(self, token: str, name: str) -> None:
        self.token = token
        self._name = name

    @property
    def is_authenticated(self) -> bool:
        # Authenticated by the packetbus server on the request's first call.
        return True

    @property
    def user_name(self) -> str:
        return self._name


def caller(authorization: str | None) -> BearerUser | None:
    """The caller of a call whose Authorization value is `authorization`: a
    `BearerUser` for a well-formed bearer JWT, None otherwise (no credential, or
    one `credential_problem` refuses before the call is served)."""
    try:
        token = bearer_token(authorization)
        return None if token is None else BearerUser(token, subject(token))
    except BadCredential:
        return None


def credential_problem(
    authorization: str | None, *, forwards: bool, require_auth: bool
) -> str | None:
    """Why a call whose Authorization value (HTTP header, gRPC metadata) is
    `authorization` (None: there is none) is refused before anything is called,
    or None to serve it. The same rule on every transport (HTTP 401, gRPC
    UNAUTHENTICATED): a malformed credential; a token while the gateway may not
    forward one (`forwards`: `Principals.forwards`); none under `require_auth`."""
    try:
        token = bearer_token(authorization)
        if token is not None:
            subject(token)
    except BadCredential as exc:
        return str(exc)
    if token is not None and not forwards:
        return (
            "this gateway cannot forward credentials: its packetbus connection is "
            "neither TLS nor to this machine"
        )
    if token is None and require_auth:
        return "this gateway requires a credential: Authorization: Bearer <JWT>"
    return None


class ContextBuilder(DefaultServerCallContextBuilder):
    """a2a-sdk's HTTP context builder, with a `BearerUser` for a request with a token.

    (Gateway has already answered 401 for a malformed header: none reaches here.)
    """

    def build_user(self, request: Request) -> User:
        user = caller(request.headers.get("authorization"))
        return super().build_user(request) if user is None else user


class CredentialRefused(A2AError):
    """A gRPC call refused by `credential_problem` (sent as UNAUTHENTICATED, see
    `abort_unauthenticated`)."""

    message = "the call's credential is refused"


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The call's ``authorization`` metadata value (None without one). Raises
    CredentialRefused when there are several (which one would be meant?)."""
    values = [
        value if isinstance(value, str) else value.decode("utf-8", "replace")
        for key, value in context.invocation_metadata() or ()
        if key.lower() == "authorization"
    ]
    if len(values) > 1:
        raise CredentialRefused(message="the call has more than one authorization metadata entry")
    return values[0] if values else None


class GrpcContextBuilder(DefaultGrpcServerCallContextBuilder):
    """a2a-sdk's gRPC context builder, with a `BearerUser` for a call whose
    ``authorization`` metadata is ``Bearer <JWT>`` (the HTTP side's rule).

    `build` raises CredentialRefused for a call `credential_problem` refuses
    (`forwards`, `require_auth`: as there), before a2a-sdk handles it.
    """

    def __init__(self, *, forwards: bool = True, require_auth: bool = False) -> None:
        self._forwards = forwards
        self._require_auth = require_auth

    def build(self, context: grpc.aio.ServicerContext) -> ServerCallContext:
        """a2a-sdk's call context, the caller in it. Raises CredentialRefused."""
        problem = credential_problem(
            _authorization(context), forwards=self._forwards, require_auth=self._require_auth
        )
        if problem is not None:
            raise CredentialRefused(message=problem)
        return super().build(context)

    def build_user(self, context: grpc.aio.ServicerContext) -> User:
        user = caller(_authorization(context))
        return UnauthenticatedUser() if user is None else user


def owner(context: ServerCallContext) -> str:
    """Whose tasks a call sees: the caller's ``sub``, "" without a credential."""
    user = context.user
    return user.user_name if isinstance(user, BearerUser) else ""


class Principals:
    """The packetbus client for each request: a view carrying the request's token,
    or `default` (the gateway's own settings) for a request without one.

    `base` is the connection the views share (connected without a token: see
    `Client.with_token`, which raises ValueError when it may not forward one).
    """

    def __init__(self, base: Client, default: Client | None = None) -> None:
        self._base = base
        self.default = default or base
        self._views: OrderedDict[str, Client] = OrderedDict()
        # The client's rule: a token travels only over TLS or to this machine.
        self.forwards = base.config.tls is not None or local_kind(base.target) is not None

    def client(self, context: ServerCallContext | None) -> Client:
        """The client to call packetbus with for the request of `context`."""
        user = None if context is None else context.user
        if not isinstance(user, BearerUser):
            return self.default
        view = self._views.get(user.token)
        if view is None:
            view = self._base.with_token(user.token)
            self._views[user.token] = view
            while len(self._views) > _MAX_VIEWS:
                # A dropped view queues nothing: the gateway awaits each send.
                self._views.popitem(last=False)
        else:
            self._views.move_to_end(user.token)
        return view


@dataclass
class Refusals:
    """The packetbus refusals met while serving one A2A request (first one wins)."""

    errors: list[PacketbusError] = field(default_factory=list)

    @property
    def status(self) -> int | None:
        """401 or 403 for the first refusal kept, None when there was none."""
        if not self.errors:
            return None
        return 401 if self.errors[0].code == grpc.StatusCode.UNAUTHENTICATED else 403


refusals: ContextVar[Refusals | None] = ContextVar("packetbus_a2a_refusals", default=None)


def first_refusal() -> PacketbusError | None:
    """The first packetbus refusal met by the running request, if any."""
    kept = refusals.get()
    return kept.errors[0] if kept is not None and kept.errors else None


def note(exc: BaseException) -> None:
    """Keep `exc` for the running request when it is a packetbus refusal."""
    kept = refusals.get()
    if kept is not None and isinstance(exc, PacketbusError) and exc.code in _REFUSING:
        kept.errors.append(exc)


def refusal_of(exc: BaseException) -> PacketbusError | None:
    """The refusal a call that ended with `exc` is answered with: the first one
    the running request kept, else `exc` itself if it is one, else None."""
    kept = first_refusal()
    if kept is not None:
        return kept
    if isinstance(exc, PacketbusError) and exc.code in _REFUSING:
        return exc
    return None


async def abort_unauthenticated(context: grpc.aio.ServicerContext, message: str) -> None:
    """End gRPC call `context` with UNAUTHENTICATED and `message`, trailing metadata
    ``www-authenticate: Bearer`` (RFC 6750's challenge, as on HTTP). Raises
    grpc.aio.AbortError (gRPC's way of ending the call)."""
    context.set_trailing_metadata((("www-authenticate", "Bearer"),))
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)


async def abort_refused(context: grpc.aio.ServicerContext, refusal: PacketbusError) -> None:
    """End gRPC call `context` with packetbus refusal `refusal`: its code
    (UNAUTHENTICATED, see `abort_unauthenticated`, or PERMISSION_DENIED) and
    ``packetbus refused: <its message>``. Raises grpc.aio.AbortError."""
    message = f"packetbus refused: {refusal.message}"
    if refusal.code == grpc.StatusCode.UNAUTHENTICATED:
        await abort_unauthenticated(context, message)
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)


class NotingExecutor(AgentExecutor):
    """`inner`, noting the packetbus refusals it meets (see `note`)."""

    def __init__(self, inner: AgentExecutor) -> None:
        self.inner = inner

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        try:
            await self.inner.execute(context, event_queue)
        except PacketbusError as exc:
            note(exc)
            raise

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        try:
            await self.inner.cancel(context, event_queue)
        except PacketbusError as exc:
            note(exc)
            raise


def refused_response(status: int, message: str) -> JSONResponse:
    """The answer to a request without a good credential (401, with the RFC 6750
    challenge) or refused by the packetbus server (401 or 403)."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Replacing:
    """An ASGI `send` that answers with `refused_response` instead of the inner
    app's response when `kept` holds a refusal by the time the response starts
    (the inner response's messages are then dropped)."""

    def __init__(self, send: Send, kept: Refusals) -> None:
        self._send = send
        self._kept = kept
        self._replaced = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self._kept.status is not None:
            self._replaced = True
            error = self._kept.errors[0]
            response = refused_response(self._kept.status, f"packetbus refused: {error.message}")
            await response({"type": "http"}, _no_receive, self._send)
            return
        if self._replaced and message["type"] == "http.response.body":
            return
        await self._send(message)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
