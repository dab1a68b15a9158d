"""ExportPackets resumes: every response carries a resume_token naming the position
after its last item, and a request with it (and the same other fields) gives exactly
the rest, across topics and sections (packets, carcel entries, decisions). Tokens the
server did not make for that request are INVALID_ARGUMENT on `resume_token`; the
client's export goes on by itself across a server drain onto another replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest

import packetbus
from packetbus.v1 import custody_service_pb2
from packetbus_server import Limits, RunningServer, ServerConfig, start
from packetbus_server._export_token import MAX_TOKEN_LENGTH, fingerprint
from tests._polling import until
from tests._proxy import FaultyProxy
from tests.conftest import new_packet, unique

POLICY = """
[[rules]]
id = "too-uncertain"
decision = "reject"
reason = "entropy too high"
topic = "exres.*"
fields = { entropy = { gt = 0.7 } }
"""
# Small replies: each section of a topic takes several responses.
BUDGET = 400

Item = tuple[str, str, str]


@pytest.fixture(scope="module")
async def exporter(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    path = tmp_path_factory.mktemp("exres") / "policy.toml"
    path.write_text(POLICY)
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            limits=Limits(reply_budget_bytes=BUDGET, policy_reload_seconds=0.05),
            policy_file=path,
        )
    )
    yield srv
    await srv.stop(grace=0)


@pytest.fixture
async def bus(exporter: RunningServer) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(f"127.0.0.1:{exporter.port}") as client:
        yield client


def items(response: custody_service_pb2.ExportPacketsResponse) -> list[Item]:
    return [
        *(("packet", p.receipt.topic, p.receipt.cursor) for p in response.packets),
        *(("carcel", e.topic, e.id) for e in response.carcel_entries),
        *(("decision", d.topic, d.id) for d in response.decisions),
    ]


async def fill(bus: packetbus.Client) -> tuple[list[str], datetime, datetime]:
    """Two topics (by name a < b), each with 5 stored packets, 5 carceled (and so 5
    decisions)."""
    since = datetime.now(UTC) - timedelta(milliseconds=5)
    base = unique("exres")
    topics = [f"{base}.b", f"{base}.a"]  # written in the other order than exported
    for topic in topics:
        batch = []
        for n in range(10):
            p = new_packet(topic)
            p.data.update({"entropy": 0.9 if n % 2 else 0.1})
            batch.append(p)
        await bus.dispatch_batch(batch)
    end = datetime.now(UTC)
    # Later writes (other tests' against a shared Redis too) are past `until`.
    await until(lambda: datetime.now(UTC) > end + timedelta(milliseconds=2))
    return sorted(topics), since, end


async def export(
    bus: packetbus.Client,
    topic: str,
    since: datetime,
    token: str = "",
    upto: datetime | None = None,
) -> list[custody_service_pb2.ExportPacketsResponse]:
    return [
        r
        async for r in bus.export(
            topic,
            since=since,
            until=upto,
            include_carcel_entries=True,
            include_decisions=True,
            resume_token=token,
        )
    ]


@pytest.mark.parametrize("scope", ["topic", "every topic"])
async def test_every_responses_token_resumes_with_exactly_the_rest(
    bus: packetbus.Client, scope: str
) -> None:
    topics, since, end = await fill(bus)
    topic = topics[1] if scope == "topic" else ""
    responses = await export(bus, topic, since, upto=end)
    whole = [item for r in responses for item in items(r)]
    mine = [t for t in topics if not topic or t == topic]
    # Topics by name; within one its packets, then carcel entries, then decisions.
    # (Every topic: others' tests may have written to a shared Redis meanwhile.)
    sections = ("packet", "carcel", "decision")
    assert [(k, t) for k, t, _ in whole if t in mine] == [
        (k, t) for t in mine for k in sections for _ in "12345"
    ]
    # Every section of every topic takes more than one response.
    shapes = [(items(r)[0][:2], len(items(r))) for r in responses]
    for t in mine:
        for kind in sections:
            assert len([n for (k, at), n in shapes if (k, at) == (kind, t)]) >= 2, shapes
    assert all(r.resume_token for r in responses)
    done = 0
    for response in responses:
        done += len(items(response))
        rest = [
            item
            for r in await export(bus, topic, since, response.resume_token, upto=end)
            for item in items(r)
        ]
        assert rest == whole[done:]


async def test_tokens_the_server_did_not_make_for_the_request_are_invalid_argument(
    bus: packetbus.Client,
) -> None:
    topics, since, _ = await fill(bus)
    a, b = topics
    token = (await export(bus, a, since))[0].resume_token
    assert token.isascii()
    assert len(token) <= MAX_TOKEN_LENGTH
    mark = token.split(".")[1]  # this export's fingerprint
    packets_only = custody_service_pb2.ExportPacketsRequest(topic=a)

    async def refused(
        token: str,
        topic: str = a,
        when: datetime | None = since,
        *,
        carcel: bool = True,
        decisions: bool = True,
    ) -> list[tuple[str, str]]:
        """The violations an export with `token` is refused for (as `made`, by default)."""
        with pytest.raises(packetbus.PacketbusError) as caught:
            async for _ in bus.export(
                topic,
                since=when,
                include_carcel_entries=carcel,
                include_decisions=decisions,
                resume_token=token,
            ):
                pass
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        return [(v.field, v.reason) for v in caught.value.field_violations]

    bad = [("resume_token", "RESUME_TOKEN")]
    other = [("resume_token", "RESUME_TOKEN_MISMATCH")]
    for forged in (
        "garbage",
        token + "é",
        token.replace("-", "-\u0660", 1),  # an Arabic-Indic digit zero
        token[:3] + "x" * MAX_TOKEN_LENGTH,
        token.replace(".p.", ".q.", 1),
        f"e1.{mark}.p.18446744073709551616-0.{a}",  # past a stream id's range
        f"e1.{mark}.p.0-18446744073709551616.{a}",
        f"e1.{mark}.p.1-0.not a topic",
        f"e1.{mark}.p.1-0.",
        f"e1.{mark}.p.1.{a}",
        f"e1.{mark}.p.01-0-0.{a}",
        token + "\n",
    ):
        assert await refused(forged) == bad, forged
    # Made for another export: another topic, another range, other sections.
    assert await refused(token, topic=b) == other
    assert await refused(token, when=since - timedelta(seconds=1)) == other
    assert await refused(token, decisions=False) == other
    assert await refused(token, carcel=False, decisions=False) == other
    assert await refused(f"e1.{mark}.p.1-0.{b}") == other
    # Right fingerprint, but a section this export does not have.
    forged = f"e1.{fingerprint(packets_only)}.c.1-0.{a}"
    assert await refused(forged, when=None, carcel=False, decisions=False) == other


async def fill_big(client: packetbus.Client, topic: str) -> list[str]:
    """10 big packets (about 1.4 MB each as exported, 2 a response): an export of them
    cannot sit whole in the connection's buffers while the first response is read."""
    sent = []
    for _ in range(10):
        p = new_packet(topic)
        p.data.update({"pad": "x" * 700_000})
        sent.append(p.tracking_id)
        await client.dispatch_batch([p])
    return sent


class CountingStub:
    """A CustodyService stub that notes each ExportPackets call's resume_token."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.tokens: list[str] = []

    def ExportPackets(
        self, request: custody_service_pb2.ExportPacketsRequest, **kwargs: Any
    ) -> Any:
        self.tokens.append(request.resume_token)
        return self._stub.ExportPackets(request, **kwargs)


async def test_an_export_goes_on_on_another_replica_when_its_server_drains(
    redis_url: str,
) -> None:
    replicas = [await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url))]
    replicas.append(await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url)))
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    topic = unique("exdrain")
    stopping: asyncio.Task[None] | None = None
    try:
        async with await packetbus.Client.connect(target, timeout=10) as client:
            sent = await fill_big(client, topic)
            counting = CountingStub(client._custody)
            client._custody = cast(Any, counting)
            got: list[str] = []
            tokens: list[str] = []
            async for response in client.export(topic, timeout=60):
                got += [s.packet.tracking_id for s in response.packets]
                tokens.append(response.resume_token)
                if stopping is None:
                    # The client's connection is to the first replica (pick_first),
                    # whose export is running; the drain goes on while the client
                    # reads on, as it would.
                    streams = replicas[0].streams
                    assert streams is not None
                    assert streams.open_streams() == 1
                    stopping = asyncio.create_task(replicas[0].stop(grace=5, notice=0))
            assert stopping is not None
            async with asyncio.timeout(10):
                await stopping
    finally:
        for i, replica in enumerate(replicas):
            if i or stopping is None:
                await replica.stop(grace=0, notice=0)
    # Resumed once, after the last response the first replica sent: no loss, no
    # duplicate.
    assert len(counting.tokens) == 2, counting.tokens
    assert counting.tokens[0] == ""
    assert counting.tokens[1] in tokens[:-1]
    assert got == sent


async def test_an_export_goes_on_after_its_connection_is_cut(server: RunningServer) -> None:
    proxy = FaultyProxy(upstream_port=server.port)
    await proxy.start()
    topic = unique("excut")
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{proxy.port}", timeout=10) as client:
            sent = await fill_big(client, topic)
            counting = CountingStub(client._custody)
            client._custody = cast(Any, counting)
            got: list[str] = []
            tokens: list[str] = []
            async for response in client.export(topic, timeout=60):
                got += [s.packet.tracking_id for s in response.packets]
                tokens.append(response.resume_token)
                if len(tokens) == 1:
                    proxy.cut_all()  # a lost connection: the call ends UNAVAILABLE
    finally:
        await proxy.stop()
    assert len(counting.tokens) == 2, counting.tokens
    assert counting.tokens[0] == ""
    assert counting.tokens[1] in tokens[:-1]
    assert got == sent
