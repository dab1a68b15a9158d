"""Run the console: a packetbus client and the ASGI app under uvicorn.

Once it listens it prints one line (what a supervisor or a test waits for):
``packetbus console serving on <URL>`` (https when given a certificate). SIGTERM
drains it: uvicorn stops accepting, finishes the requests under way (an open
event stream ends), and the exit status is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import uvicorn

from packetbus import AgentIdentity, Client, ClientConfig
from packetbus.asgi_serving import ReadyServer, url_host

from .app import Console, build_app
from .overview import INTERVAL, Overview

DRAIN_SECONDS = 5  # how long requests under way (event streams) may take on a drain


async def serve(
    *,
    target: str,
    host: str,
    port: int,
    config: ClientConfig | None = None,
    approver: AgentIdentity | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    metrics_urls: Sequence[str] = (),
    metrics_interval: float = INTERVAL,
) -> None:
    """Serve the console on `host`:`port` (HTTPS with `tls_cert` and `tls_key`, PEM
    files) for the packetbus server at `target`, until SIGINT/SIGTERM. `approver`
    signs approvals and denials. One connection serves every caller: opened
    without a token, each session's token is sent per call (`Client.with_token`);
    `config`'s own token (if any) on calls without a session. `metrics_urls`: the
    server's /metrics, one per replica, scraped every `metrics_interval` seconds for
    the Overview (`overview`; none: no Overview).

    Raises PacketbusError when `target` is unreachable (within 10 s), OSError when
    the port cannot be bound."""
    config = config or ClientConfig()
    own_token = config.token
    async with await Client.connect(
        target, config=replace(config, token=None), timeout=10
    ) as client:
        secure = tls_cert is not None
        overview = (
            Overview(metrics_urls, interval=metrics_interval, tls=config.tls)
            if metrics_urls
            else None
        )
        console = Console(
            client,
            client.with_token(own_token) if own_token else None,
            approver=approver,
            secure=secure,
            overview=overview,
        )
        scheme = "https" if secure else "http"
        base = f"{scheme}://{url_host(host)}"
        server = ReadyServer(
            uvicorn.Config(
                build_app(console),
                host=host,
                port=port,
                log_level="warning",
                access_log=False,  # a URL may carry nothing secret, but keep logs quiet
                lifespan="off",
                ssl_certfile=str(tls_cert) if tls_cert else None,
                ssl_keyfile=str(tls_key) if tls_key else None,
                timeout_graceful_shutdown=DRAIN_SECONDS,
            ),
            lambda port: f"packetbus console serving on {base}:{port}",
        )
        # One scraper per console, however many browsers watch (see overview).
        scraper = asyncio.create_task(overview.run()) if overview is not None else None
        try:
            await server.serve()
        finally:
            if scraper is not None:
                scraper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper
        if not server.started:
            raise OSError(f"cannot listen on {host}:{port}")
