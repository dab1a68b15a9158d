"""Fixtures for the export tests: a server with small replies, so an export takes several."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import packetbus
from packetbus_server import Limits, RunningServer, ServerConfig, start


def exporter_fixtures(reply_budget_bytes: int) -> tuple[Any, Any]:
    """A test module's fixtures `exporter` (a server whose replies hold at most
    `reply_budget_bytes`, module-scoped) and `bus` (a client of it), for the module to
    bind: ``exporter, bus = exporter_fixtures(BUDGET)``."""

    @pytest.fixture(scope="module", name="exporter")
    async def exporter_fixture(redis_url: str) -> AsyncIterator[RunningServer]:
        limits = Limits(reply_budget_bytes=reply_budget_bytes)
        srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits))
        yield srv
        await srv.stop(grace=0)

    @pytest.fixture(name="bus")
    async def bus_fixture(exporter: RunningServer) -> AsyncIterator[packetbus.Client]:
        async with await packetbus.Client.connect(f"127.0.0.1:{exporter.port}") as client:
            yield client

    return exporter_fixture, bus_fixture
