"""A page token is accepted only by the listing, and the scope of it (topic, queue,
task, agent, ...), that made it: every other listing, and the same listing for
another scope, refuses it with INVALID_ARGUMENT on `page_token` (rule PAGE_TOKEN),
where a bare offset or key used to give a wrong page silently.

A server with a one-byte reply budget ends every page after one item, so two items
in a listing give a real next_page_token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

import packetbus
from packetbus._context import new_entry
from packetbus.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    carcel_service_pb2,
    carcel_service_pb2_grpc,
    contents_pb2,
    context_service_pb2,
    context_service_pb2_grpc,
    finding_service_pb2,
    finding_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
    record_service_pb2,
    record_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)
from packetbus_server import Limits, RunningServer, ServerConfig, start
from tests.conftest import unique

Call = Callable[[grpc.aio.Channel, str, str], Awaitable[Any]]


@dataclass(frozen=True)
class Listing:
    name: str
    call: Call  # (channel, scope "a" or "b", page token) -> response


@pytest.fixture(scope="module")
async def one_item_pages(redis_url: str) -> AsyncIterator[RunningServer]:
    limits = Limits(reply_budget_bytes=1, min_ack_deadline_seconds=1)
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits))
    yield srv
    await srv.stop(grace=0)


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    """Per run names of each scope, so earlier runs on a kept Redis do not matter."""
    return {k: unique(k) for k in ("q", "task", "agent", "scope", "role", "key")}


def _listings(n: dict[str, str]) -> list[Listing]:
    def scoped(base: str, scope: str) -> str:
        return f"{n[base]}-{scope}"

    async def tasks(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await task_service_pb2_grpc.TaskServiceStub(ch).ListTasks(
            task_service_pb2.ListTasksRequest(queue=scoped("q", s), page_token=token)
        )

    async def task_results(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await task_service_pb2_grpc.TaskServiceStub(ch).ListTaskResults(
            task_service_pb2.ListTaskResultsRequest(
                queue=scoped("q", s), task_id="t0", page_token=token
            )
        )

    async def carcel(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await carcel_service_pb2_grpc.CarcelServiceStub(ch).ListCarcelEntries(
            carcel_service_pb2.ListCarcelEntriesRequest(
                topic=scoped("q", s), page_size=1, page_token=token
            )
        )

    async def held(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await policy_service_pb2_grpc.PolicyServiceStub(ch).ListHeldPackets(
            policy_service_pb2.ListHeldPacketsRequest(
                topic=scoped("q", s), page_size=1, page_token=token
            )
        )

    async def findings(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await finding_service_pb2_grpc.FindingServiceStub(ch).ListFindings(
            finding_service_pb2.ListFindingsRequest(task_id=scoped("task", s), page_token=token)
        )

    async def conflicts(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await finding_service_pb2_grpc.FindingServiceStub(ch).DetectConflicts(
            finding_service_pb2.DetectConflictsRequest(
                task_id=scoped("task", s), threshold=0.1, page_token=token
            )
        )

    async def escalations(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await finding_service_pb2_grpc.FindingServiceStub(ch).ListEscalations(
            finding_service_pb2.ListEscalationsRequest(task_id=scoped("task", s), page_token=token)
        )

    async def records(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        kind = {
            "a": record_service_pb2.RECORD_KIND_SESSION_SUMMARY,
            "b": record_service_pb2.RECORD_KIND_SWARM_REGISTRY,
        }[s]
        return await record_service_pb2_grpc.RecordServiceStub(ch).ListRecords(
            record_service_pb2.ListRecordsRequest(kind=kind, page_size=1, page_token=token)
        )

    async def agents(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await agent_service_pb2_grpc.AgentServiceStub(ch).ListAgents(
            agent_service_pb2.ListAgentsRequest(
                role=scoped("role", s), page_size=1, page_token=token
            )
        )

    def context(ch: grpc.aio.Channel) -> context_service_pb2_grpc.ContextServiceStub:
        return context_service_pb2_grpc.ContextServiceStub(ch)

    async def contexts(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await context(ch).ListContexts(
            context_service_pb2.ListContextsRequest(
                scope=scoped("scope", s), page_size=1, page_token=token
            )
        )

    async def global_context(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await context(ch).ListGlobalContext(
            context_service_pb2.ListGlobalContextRequest(page_token=token)
        )

    async def memory(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await context(ch).ListMemory(
            context_service_pb2.ListMemoryRequest(agent=scoped("agent", s), page_token=token)
        )

    async def traces(ch: grpc.aio.Channel, s: str, token: str) -> Any:
        return await context(ch).ListTraces(
            context_service_pb2.ListTracesRequest(
                task_id=n["task"], agent=scoped("agent", s), page_token=token
            )
        )

    calls = [tasks, task_results, carcel, held, findings, conflicts, escalations, records]
    calls += [agents, contexts, global_context, memory, traces]
    return [Listing(c.__name__, c) for c in calls]


# Listings that have no scope of their own to vary, or (held packets: a policy's
# hold) no entries here: they still refuse every other listing's token.
_UNSCOPED = {"global_context"}
_NO_ENTRIES = {"held"}


async def _fill(client: packetbus.Client, n: dict[str, str]) -> None:
    """Two items in scope "a" and in scope "b" of every listing (but held packets)."""
    for s in ("a", "b"):
        queue = client.task_queue(f"{n['q']}-{s}")
        for i in range(2):
            await queue.post(
                packetbus.Task(id=f"t{i}", description="d"), origin="o", max_attempts=2
            )
            for _ in range(2):  # two results each, and the task into the carcel
                claimed = await queue.claim("w")
                assert claimed is not None
                await claimed.fail("boom")
        task = f"{n['task']}-{s}"
        for i, (claim, refutes) in enumerate(
            [("x is y", False), ("x is y", True), ("x is y", False)]
        ):
            finding = packetbus.Finding(
                task_id=task, id=f"f{i}", claim=claim, confidence=0.9 - i / 10, refutes=refutes
            )
            await client.post_finding(finding, origin="o")
        for i in range(2):
            await client.escalate(task, [f"f{i}"], reason="r", origin="o")
        await client.put_record(
            contents_pb2.SessionSummary(label=unique("l"), date="2026-11-21", summary="s")
            if s == "a"
            else contents_pb2.SwarmRegistry(swarm_id=unique("swarm"), coordinator="c"),
            origin="o",
        )
        await client.put_record(
            contents_pb2.SessionSummary(label=unique("l"), date="2026-11-21", summary="s")
            if s == "a"
            else contents_pb2.SwarmRegistry(swarm_id=unique("swarm"), coordinator="c"),
            origin="o",
        )
        for i in range(2):
            await client.register_agent(f"{n['agent']}-{s}{i}", role=f"{n['role']}-{s}")
            await client.put_context(f"{n['scope']}-{s}", f"doc{i}", b"v", author="o")
            await client.set_global_context(f"{n['key']}-{s}{i}", "v")
            await client.append_memory(f"{n['agent']}-{s}", new_entry(f"m{i}"))
            await client.append_trace(n["task"], f"{n['agent']}-{s}", new_entry(f"t{i}"))


@pytest.fixture(scope="module")
async def tokens(
    one_item_pages: RunningServer, names: dict[str, str]
) -> AsyncIterator[tuple[grpc.aio.Channel, list[Listing], dict[tuple[str, str], str]]]:
    """A channel, the listings, and a real next_page_token of each (listing, scope)."""
    target = f"127.0.0.1:{one_item_pages.port}"
    async with await packetbus.Client.connect(target) as client:
        await _fill(client, names)
    listings = _listings(names)
    async with grpc.aio.insecure_channel(target) as channel:
        made: dict[tuple[str, str], str] = {}
        for listing in listings:
            if listing.name in _NO_ENTRIES:
                continue
            for s in ("a",) if listing.name in _UNSCOPED else ("a", "b"):
                page = await listing.call(channel, s, "")
                assert page.next_page_token, (listing.name, s)
                made[listing.name, s] = page.next_page_token
        yield channel, listings, made


async def _refused(call: Awaitable[Message]) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_pb2.Status.FromString(
        dict(caught.value.trailing_metadata() or ())["grpc-status-details-bin"]
    )
    request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(request)
    return [(v.field, v.reason) for v in request.field_violations]


async def test_each_listing_takes_back_its_own_tokens(
    tokens: tuple[grpc.aio.Channel, list[Listing], dict[tuple[str, str], str]],
) -> None:
    channel, listings, made = tokens
    for (name, s), token in made.items():
        [listing] = [x for x in listings if x.name == name]
        await listing.call(channel, s, token)  # no error
        assert token.isascii(), name


async def test_a_token_of_another_listing_or_scope_is_refused(
    tokens: tuple[grpc.aio.Channel, list[Listing], dict[tuple[str, str], str]],
) -> None:
    channel, listings, made = tokens
    tried = 0
    for listing in listings:
        for (name, s), token in made.items():
            if name == listing.name and s == "a":
                continue  # its own
            # Scope "a" of every listing, given every other token: another
            # listing's (any scope), or its own listing's for scope "b".
            assert await _refused(listing.call(channel, "a", token)) == [
                ("page_token", "PAGE_TOKEN")
            ], (listing.name, name, s)
            tried += 1
    assert tried == len(listings) * len(made) - (len(listings) - len(_NO_ENTRIES))


@pytest.mark.parametrize(
    "token",
    [
        "0",
        "1",
        "x 0-1",
        "0:00000000-0000-0000-0000-000000000000",
        "v1.findings.MQ.000000000000000000000000",
        "v1.findings.MQ.\u0661" + "0" * 23,
        "v1." + "a" * 100_000,
    ],
)
async def test_made_up_tokens_are_refused_everywhere(
    tokens: tuple[grpc.aio.Channel, list[Listing], dict[tuple[str, str], str]], token: str
) -> None:
    channel, listings, _ = tokens
    for listing in listings:
        assert await _refused(listing.call(channel, "a", token)) == [
            ("page_token", "PAGE_TOKEN")
        ], listing.name


async def test_a_last_page_cut_by_the_budget_still_gives_a_token(
    one_item_pages: RunningServer,
) -> None:
    # The store's page is short (its last), but the reply budget cuts it: the rest
    # must come with a token, not be dropped.
    scope = unique("cut")
    async with await packetbus.Client.connect(f"127.0.0.1:{one_item_pages.port}") as client:
        for i in range(3):
            await client.put_context(scope, f"doc{i}", b"v", author="o")
        names: list[str] = []
        token = ""
        while True:
            page = await client.list_contexts(scope, page_size=10, page_token=token)
            names += [d.name for d in page.documents]
            token = page.next_page_token
            if not token:
                break
    assert names == ["doc0", "doc1", "doc2"]
