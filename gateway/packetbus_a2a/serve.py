"""Run the gateway: a packetbus client, the ASGI app under uvicorn and, when asked,
the gRPC server (`grpc_server`) in the same process and event loop.

Once every listener is up it prints one line (what a supervisor or a test waits
for): ``packetbus a2a gateway serving on <base URL>``, followed by
`` and gRPC on <host:port>`` when gRPC is on. SIGTERM drains: gRPC health turns
NOT_SERVING and gRPC calls under way get `GRPC_GRACE` seconds, then the HTTP side
stops and the agents' handlers are closed; the exit status is 0.
"""

from __future__ import annotations

import socket
from dataclasses import replace

import uvicorn

from packetbus import Client, ClientConfig
from packetbus.asgi_serving import ReadyServer, url_host

from .app import Gateway
from .auth import Principals
from .grpc_server import GrpcGateway

GRPC_GRACE = 5.0  # seconds gRPC calls under way may take to finish on a drain


async def serve(
    *,
    target: str,
    host: str,
    port: int,
    config: ClientConfig | None = None,
    default_agent: str = "",
    public_url: str = "",
    answer_timeout: float = 300.0,
    grpc_host: str = "",
    grpc_port: int | None = None,
    grpc_public_address: str = "",
    require_auth: bool = False,
) -> None:
    """Serve A2A on `host`:`port` (HTTP) and, when `grpc_port` is given, on
    `grpc_host`:`grpc_port` (gRPC; port 0: any free one) for the agents of the
    packetbus server at `target`, until SIGINT/SIGTERM. `public_url`: the base URL
    put in agent cards (default ``http://host:port``); `grpc_public_address`: the
    ``host:port`` put in them for gRPC (default the bound gRPC address);
    `require_auth`: A2A calls need a bearer token (see `Gateway`).

    One connection serves every caller: it is opened without a token, each A2A
    call's token is sent per call (`Client.with_token`), and `config`'s own token
    (if any) on the gateway's own calls and on calls of requests without one.
    Raises PacketbusError when `target` is unreachable (within 10 s), OSError when
    a port cannot be bound, ValueError for `require_auth` over a connection that
    may not carry tokens (neither TLS nor to this machine)."""
    config = config or ClientConfig()
    own_token = config.token
    async with await Client.connect(
        target, config=replace(config, token=None), timeout=10
    ) as client:
        principals = Principals(client, client.with_token(own_token) if own_token else None)
        if require_auth and not principals.forwards:
            raise ValueError(
                f"--require-auth: bearer tokens are sent only over TLS or to this machine, "
                f"and {client.target} is neither"
            )
        base_url = public_url or f"http://{url_host(host)}:{port}"
        gateway = Gateway(
            principals,
            base_url,
            default_agent=default_agent,
            answer_timeout=answer_timeout,
            require_auth=require_auth,
        )
        ready = f"packetbus a2a gateway serving on {base_url}"
        server = _Server(
            uvicorn.Config(gateway, host=host, port=port, log_level="warning", lifespan="on"),
            lambda _port: ready,
        )
        try:
            if grpc_port is not None:
                server.grpc = GrpcGateway.bind(
                    gateway.router,
                    grpc_host,
                    grpc_port,
                    forwards=principals.forwards,
                    require_auth=require_auth,
                )
                bound = f"{url_host(grpc_host)}:{server.grpc.port}"
                # In the cards before the first call can build a handler (and its card).
                gateway.grpc_address = grpc_public_address or bound
                await server.grpc.start()
                ready += f" and gRPC on {bound}"
            await server.serve()
        finally:
            await server.stop_grpc()
        if not server.started:
            raise OSError(f"cannot listen on {host}:{port}")


class _Server(ReadyServer):
    """The HTTP server (`ReadyServer`), stopping `grpc` (if any) before its own
    shutdown closes the handlers gRPC calls use."""

    grpc: GrpcGateway | None = None

    async def stop_grpc(self) -> None:
        """Drain and stop the gRPC server, once."""
        grpc, self.grpc = self.grpc, None
        if grpc is not None:
            await grpc.stop(GRPC_GRACE)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.stop_grpc()
        await super().shutdown(sockets)
