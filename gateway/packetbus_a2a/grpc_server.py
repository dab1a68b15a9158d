"""The gateway's gRPC side: a2a-sdk's `A2AService` servicer on a grpc.aio server.

The servicer is a2a-sdk's `GrpcHandler` (as `RoutingGrpcHandler`) on the gateway's
`AgentRouter`, so it shares the HTTP side's per-agent handlers; the agent of a
call is its ``tenant``, or the default agent when that is empty (see `routing`).
Beside it: the standard gRPC health service, SERVING for ``""`` and
``lf.a2a.v1.A2AService`` while the gateway runs, NOT_SERVING once it drains.
Plaintext only (as the HTTP side): put TLS in front of it, or keep it on loopback.

Credentials as on HTTP (see `auth`): a call's ``authorization: Bearer <JWT>``
metadata makes every packetbus call for it under that token; a call
`auth.credential_problem` refuses is ``UNAUTHENTICATED``; a call that met a
packetbus refusal ends with it (``UNAUTHENTICATED`` / ``PERMISSION_DENIED``, its
message), whether a2a-sdk's servicer reports an error (`RoutingGrpcHandler`) or lets
the exception through (`RefusalInterceptor`).
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from a2a.types import a2a_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from .auth import Refusals, abort_refused, first_refusal, refusal_of, refusals
from .routing import AgentRouter, RoutingGrpcHandler

A2A_SERVICE = "lf.a2a.v1.A2AService"
_SERVING = health_pb2.HealthCheckResponse.SERVING


# A servicer method as grpc.aio calls it: (request, context) -> response / responses.
_Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_Stream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


class RefusalInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Keeps the packetbus refusals each A2A call meets (`auth.refusals`) and ends a
    call that met one with it: a unary call whatever its outcome, a streaming call
    at its error or before its next message (messages already sent stay sent).

    An error a2a-sdk's servicer turns into a status itself (its A2A errors) is
    answered by `RoutingGrpcHandler.abort_context`; this sees the others (a2a-sdk
    lets a PacketbusError through, which gRPC would send as ``UNKNOWN``).
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(f"/{A2A_SERVICE}/"):
            return handler
        # gRPC runs each call (its interceptors, then its handler) in a Context of
        # its own: set here, the variable is this call's, and a2a-sdk's tasks copy it.
        refusals.set(Refusals())
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_stream(handler.unary_stream))
        return handler


def _unary(inner: _Unary) -> _Unary:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response = await inner(request, context)
        except grpc.aio.AbortError:
            raise  # the status is set (by a2a-sdk's servicer)
        except Exception as exc:
            refusal = refusal_of(exc)
            if refusal is None:
                raise
            await abort_refused(context, refusal)
            raise  # not reached: abort raises
        refusal = first_refusal()
        if refusal is not None:
            await abort_refused(context, refusal)
        return response

    return behavior


def _stream(inner: _Stream) -> _Stream:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in inner(request, context):
                refusal = first_refusal()
                if refusal is not None:
                    await abort_refused(context, refusal)
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            refusal = refusal_of(exc)
            if refusal is None:
                raise
            await abort_refused(context, refusal)
            raise

    return behavior


class GrpcGateway:
    """The gateway's gRPC server: bound by `bind` (`port` is the bound port, the
    kernel's pick when 0 was asked), serving once `start`ed."""

    def __init__(self, server: grpc.aio.Server, health: HealthServicer, port: int) -> None:
        self._server = server
        self._health = health
        self.port = port

    @classmethod
    def bind(
        cls,
        router: AgentRouter,
        host: str,
        port: int,
        *,
        forwards: bool = True,
        require_auth: bool = False,
    ) -> GrpcGateway:
        """A server for A2A over gRPC bound to `host`:`port` (port 0: any free one),
        not serving yet: the caller puts the port in the cards first. `forwards`:
        the gateway may forward callers' tokens (`auth.Principals.forwards`);
        `require_auth`: calls without one are refused (see `auth.credential_problem`).
        Raises OSError when the address cannot be bound."""
        # No SO_REUSEPORT: a port another process holds is refused, not shared.
        server = grpc.aio.server(
            interceptors=[RefusalInterceptor()], options=[("grpc.so_reuseport", 0)]
        )
        servicer = RoutingGrpcHandler(router, forwards=forwards, require_auth=require_auth)
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(  # type: ignore[no-untyped-call]
            servicer, server
        )
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound: int = server.add_insecure_port(address)
        except RuntimeError:  # gRPC says only "Failed to bind"
            bound = 0
        if bound == 0:
            raise OSError(
                errno.EADDRINUSE, f"cannot listen on {address}: address in use or not available"
            )
        return cls(server, health, bound)

    async def start(self) -> None:
        """Serve; health says SERVING."""
        await self._server.start()
        for service in ("", A2A_SERVICE):
            await self._health.set(service, _SERVING)

    async def stop(self, grace: float) -> None:
        """Drain: health says NOT_SERVING, new calls are refused, calls under way
        get `grace` seconds to finish, then are cancelled."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
