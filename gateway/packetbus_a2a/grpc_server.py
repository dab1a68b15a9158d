"""The gateway's gRPC side: a2a-sdk's `A2AService` servicer on a grpc.aio server.

The servicer is a2a-sdk's `GrpcHandler` (as `RoutingGrpcHandler`) on the gateway's
`AgentRouter`, so it shares the HTTP side's per-agent handlers; the agent of a
call is its ``tenant``, or the default agent when that is empty (see `routing`).
Beside it: the standard gRPC health service, SERVING for ``""`` and
``lf.a2a.v1.A2AService`` while the gateway runs, NOT_SERVING once it drains.
Plaintext only (as the HTTP side): put TLS in front of it, or keep it on loopback.
"""

from __future__ import annotations

import errno

import grpc
import grpc.aio
from a2a.types import a2a_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from .routing import AgentRouter, RoutingGrpcHandler

A2A_SERVICE = "lf.a2a.v1.A2AService"
_SERVING = health_pb2.HealthCheckResponse.SERVING


class GrpcGateway:
    """The gateway's gRPC server: bound by `bind` (`port` is the bound port, the
    kernel's pick when 0 was asked), serving once `start`ed."""

    def __init__(self, server: grpc.aio.Server, health: HealthServicer, port: int) -> None:
        self._server = server
        self._health = health
        self.port = port

    @classmethod
    def bind(cls, router: AgentRouter, host: str, port: int) -> GrpcGateway:
        """A server for A2A over gRPC bound to `host`:`port` (port 0: any free one),
        not serving yet: the caller puts the port in the cards first. Raises
        OSError when the address cannot be bound."""
        # No SO_REUSEPORT: a port another process holds is refused, not shared.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(  # type: ignore[no-untyped-call]
            RoutingGrpcHandler(router), server
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
