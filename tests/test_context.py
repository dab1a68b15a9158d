"""Shared context: chunked, versioned documents with compare-and-set, TTL, watch;
the global context map, memory logs and traces."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus._context import file_chunks, file_digest
from packetbus.v1 import context_service_pb2 as pb
from packetbus.v1 import context_service_pb2_grpc
from packetbus_server import Limits, ServerConfig, _keys, _scripts, running
from tests.conftest import unique

MiB = 1024 * 1024


async def _body_keys(raw_redis: redis_asyncio.Redis, scope: str) -> list[bytes]:
    return [k async for k in raw_redis.scan_iter(match=_keys.context_prefix(scope) + "body:*")]


async def test_a_10_mib_document_round_trips_byte_exact_in_chunks(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    scope, data = unique("scope"), os.urandom(10 * MiB)
    document = await client.put_context(scope, "big", data, author="writer-1", timeout=60)
    assert (document.version, document.size) == (1, len(data))
    assert document.sha256 == hashlib.sha256(data).digest()
    assert document.author == "writer-1"

    value = await client.get_context(scope, "big", timeout=60)
    assert value.data == data
    assert value.document.sha256 == hashlib.sha256(data).digest()
    # Through the raw stub: the header, then ten chunks of 1 MiB, none above
    # gRPC's default 4 MiB message limit.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = context_service_pb2_grpc.ContextServiceStub(channel)
        messages = [m async for m in stub.GetContext(pb.GetContextRequest(scope=scope, name="big"))]
    assert [m.WhichOneof("part") for m in messages] == ["document"] + ["chunk"] * 10
    assert {len(m.chunk) for m in messages[1:]} == {MiB}
    # The upload went up in chunks too (the default channel limit is 4 MiB) and
    # only the committed body is left: no staged copy.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = context_service_pb2_grpc.ContextServiceStub(channel)
        sent = 0

        async def requests() -> AsyncIterator[pb.PutContextRequest]:
            nonlocal sent
            yield pb.PutContextRequest(
                header=pb.PutContextHeader(
                    scope=scope,
                    name="big",
                    size=len(data),
                    sha256=hashlib.sha256(data).digest(),
                    author="writer-1",
                )
            )
            for i in range(0, len(data), MiB):
                sent += 1
                yield pb.PutContextRequest(chunk=data[i : i + MiB])

        response = await stub.PutContext(requests())
    assert sent == 10
    assert response.document.version == 2
    assert [await raw_redis.strlen(k) for k in await _body_keys(raw_redis, scope)] == [
        len(data),
        len(data),
    ]  # version 2's body, and version 1's within its grace


async def test_a_64_mib_document_streams_from_a_file_and_back_byte_exact(
    client: packetbus.Client, tmp_path: Path
) -> None:
    """The size the issue names as the floor, file to file: neither side holds it whole."""
    source, copy = tmp_path / "big.bin", tmp_path / "copy.bin"
    with source.open("wb") as out:
        for _ in range(64):
            out.write(os.urandom(MiB))
    size, digest = file_digest(source)
    scope = unique("scope")
    document = await client.put_context(
        scope, "huge", file_chunks(source), size=size, sha256=digest, author="w", timeout=120
    )
    assert (document.size, document.sha256) == (64 * MiB, digest)
    with copy.open("wb") as sink:
        fetched = await client.get_context_to(scope, "huge", sink, timeout=120)
    assert fetched.version == document.version
    assert file_digest(copy) == (size, digest)
    assert (await client.delete_context(scope, "huge")).existed


async def test_a_put_with_a_stale_version_is_aborted_and_changes_nothing(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    scope = unique("scope")
    first = await client.put_context(scope, "doc", b"one", expected_version=0, author="a-1")
    assert first.version == 1
    second = await client.put_context(scope, "doc", b"two", expected_version=1, author="a-2")
    assert second.version == 2
    events = await raw_redis.xlen(_keys.context_events(scope))
    for stale in (0, 1, 3):
        with pytest.raises(packetbus.PacketbusError) as exc:
            await client.put_context(scope, "doc", b"three", expected_version=stale, author="a-3")
        assert exc.value.code == grpc.StatusCode.ABORTED
    value = await client.get_context(scope, "doc")
    assert (value.data, value.document.version, value.document.author) == (b"two", 2, "a-2")
    assert await raw_redis.xlen(_keys.context_events(scope)) == events
    assert len(await _body_keys(raw_redis, scope)) == 2  # no staged upload left behind
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.delete_context(scope, "doc", expected_version=1)
    assert exc.value.code == grpc.StatusCode.ABORTED
    assert (await client.get_context(scope, "doc")).data == b"two"
    # Unconditional writes take whatever version is current.
    assert (await client.put_context(scope, "doc", b"four", author="a-4")).version == 3


async def test_a_watcher_sees_each_committed_version_exactly_once(
    client: packetbus.Client,
) -> None:
    scope, versions = unique("scope"), 12
    seen: list[pb.ContextChange] = []
    watching = asyncio.Event()

    async def watch() -> None:
        async for response in client.watch_context(scope, name_prefix="doc"):
            watching.set()
            seen.extend(c for c in response.changes if c.name == "doc")
            if len(seen) >= versions + 1:
                return

    watcher = asyncio.create_task(watch())
    # The watch sees changes from when it opened, which no sleep can be sure of on a
    # busy machine: a probe document is written until it shows one.
    async with asyncio.timeout(20):
        while not watching.is_set():
            await client.put_context(scope, "doc-probe", b"p", author="w-0")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watching.wait(), 0.1)

    async def writer(n: int) -> None:
        await client.put_context(scope, "doc", f"v{n}".encode(), author="w-1")

    for n in range(versions):
        await writer(n)
    await client.put_context(scope, "other", b"x", author="w-1")  # filtered by prefix
    await client.delete_context(scope, "doc", author="w-2")
    await asyncio.wait_for(watcher, 10)
    puts = [c for c in seen if c.kind == pb.CONTEXT_CHANGE_KIND_PUT]
    assert [c.version for c in puts] == list(range(1, versions + 1))
    assert [c.sha256 for c in puts] == [
        hashlib.sha256(f"v{n}".encode()).digest() for n in range(versions)
    ]
    assert seen[-1].kind == pb.CONTEXT_CHANGE_KIND_DELETE
    assert (seen[-1].version, seen[-1].author) == (versions, "w-2")
    assert len({c.cursor for c in seen}) == len(seen) == versions + 1
    assert {c.name for c in seen} == {"doc"}

    # Resuming after the 5th event replays exactly the rest, once.
    resumed: list[pb.ContextChange] = []
    async for response in client.watch_context(
        scope, name_prefix="doc", after_cursor=seen[4].cursor, timeout=2
    ):
        resumed.extend(response.changes)
    assert [c.cursor for c in resumed] == [c.cursor for c in seen[5:]]


async def test_a_bad_upload_is_invalid_and_commits_nothing(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    scope, data = unique("scope"), os.urandom(3 * MiB)
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.put_context(
            scope,
            "doc",
            _pieces(data),
            size=len(data),
            sha256=hashlib.sha256(b"other").digest(),
            author="w-1",
        )
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in exc.value.field_violations] == ["header.sha256"]
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.put_context(
            scope,
            "doc",
            _pieces(data),
            size=len(data) + 1,
            sha256=hashlib.sha256(data).digest(),
            author="w-1",
        )
    assert [v.field for v in exc.value.field_violations] == ["header.size"]
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.put_context(
            "a scope", "", b"x", ttl=-1, author="", expected_version=-2, chunk_bytes=1
        )
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in exc.value.field_violations} == {
        "header.scope",
        "header.name",
        "header.ttl_seconds",
        "header.author",
        "header.expected_version",
    }
    # A chunk above the limit (the message itself is still under gRPC's).
    big = b"y" * (MiB + 1)
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.put_context(scope, "doc", big, author="w-1", chunk_bytes=MiB + 1)
    assert [v.field for v in exc.value.field_violations] == ["chunk"]

    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.get_context(scope, "doc")
    assert exc.value.code == grpc.StatusCode.NOT_FOUND
    assert await _body_keys(raw_redis, scope) == []
    assert await raw_redis.exists(_keys.context_events(scope)) == 0


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 700_000):
        yield data[i : i + 700_000]


async def test_documents_expire_by_ttl_and_deletes_list_and_pages(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    scope = unique("scope")
    await client.put_context(scope, "short", b"gone soon", ttl=1, author="w-1")
    pttl = await raw_redis.pttl(_keys.context_doc(scope, "short"))
    assert 0 < pttl <= 1000
    for i in range(7):
        await client.put_context(
            scope, f"n/{i}", b"%d" % i, author="w-1", content_type="text/plain"
        )
    await client.put_context(scope, "other", b"o", author="w-1")
    day = await raw_redis.pttl(_keys.context_doc(scope, "other"))
    assert 86_000_000 < day <= 86_400_000

    names: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await client.list_contexts(scope, name_prefix="n/", page_size=3, page_token=token)
        names += [d.name for d in page.documents]
        pages += 1
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert names == [f"n/{i}" for i in range(7)]
    assert pages == 3

    deleted = await client.delete_context(scope, "n/3", expected_version=1, author="w-2")
    assert (deleted.existed, deleted.version) == (True, 1)
    again = await client.delete_context(scope, "n/3")
    assert (again.existed, again.version) == (False, 0)
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.get_context(scope, "n/3")
    assert exc.value.code == grpc.StatusCode.NOT_FOUND

    await asyncio.sleep(1.2)
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.get_context(scope, "short")
    assert exc.value.code == grpc.StatusCode.NOT_FOUND
    listed = await client.list_contexts(scope, page_size=100)
    assert [d.name for d in listed.documents] == [
        "n/0",
        "n/1",
        "n/2",
        "n/4",
        "n/5",
        "n/6",
        "other",
    ]
    # The expired name left the index too.
    assert await raw_redis.zscore(_keys.context_names(scope), "short") is None
    assert (await client.put_context(scope, "short", b"back", author="w-1")).version == 1


async def test_an_upload_retried_with_its_upload_id_commits_once(
    client: packetbus.Client,
) -> None:
    scope, upload = unique("scope"), "5f0e7f51-3f0a-4a52-9d0b-1f3c1d9a0a11"
    first = await client.put_context(scope, "doc", b"data", upload_id=upload, author="w-1")
    again = await client.put_context(scope, "doc", b"data", upload_id=upload, author="w-1")
    assert first.version == again.version == 1
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.put_context(scope, "doc", b"else", upload_id=upload, author="w-1")
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
    # The same bytes meant otherwise (another media type, another author) are another put.
    for content_type, author in (("text/markdown", "w-1"), ("", "w-2")):
        with pytest.raises(packetbus.PacketbusError) as exc:
            await client.put_context(
                scope, "doc", b"data", upload_id=upload, content_type=content_type, author=author
            )
        assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert (await client.get_context(scope, "doc")).document.version == 1


async def test_the_global_context_map_with_compare_and_set(client: packetbus.Client) -> None:
    key = unique("key")
    await client.set_global_context(key, "v1", expected_value="")
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.set_global_context(key, "v2", expected_value="")
    assert exc.value.code == grpc.StatusCode.ABORTED
    await client.set_global_context(key, "v2", expected_value="v1")
    await client.set_global_context(key, "v2", expected_value="v1")  # a retry: no change
    assert await client.get_global_context(key) == "v2"
    assert (await client.list_global_context())[key] == "v2"
    assert await client.delete_global_context(key) is True
    assert await client.delete_global_context(key) is False
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.get_global_context(key)
    assert exc.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.set_global_context("bad key", "x" * (64 * 1024 + 1))
    assert {v.field for v in exc.value.field_violations} == {"key", "value"}


async def test_memory_logs_are_newest_first_and_traces_oldest_first_each_entry_once(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    agent, task = unique("agent"), unique("task")
    entries = [packetbus.new_entry(f"thought {i}", kind="thought") for i in range(3)]
    for e in entries:
        await client.append_memory(agent, e, ttl=60)
    assert await client.append_memory(agent, entries[1], ttl=60) == 3  # a retry
    memory = await client.list_memory(agent)
    assert [e.text for e in memory] == ["thought 2", "thought 1", "thought 0"]
    assert [e.text for e in await client.list_memory(agent, limit=1)] == ["thought 2"]
    assert 0 < await raw_redis.pttl(_keys.memory_log(agent)) <= 60_000

    for e in entries:
        await client.append_trace(task, agent, e)
    traces = await client.list_traces(task, agent)
    assert [e.entry_id for e in traces] == [e.entry_id for e in entries]
    assert await raw_redis.llen(_keys.trace_log(task, agent)) == 3
    week = await raw_redis.pttl(_keys.trace_log(task, agent))
    assert 7 * 86_400_000 - 10_000 < week <= 7 * 86_400_000

    with pytest.raises(packetbus.PacketbusError) as exc:
        await client.append_memory("", pb.LogEntry(entry_id="nope"))
    assert {v.field for v in exc.value.field_violations} == {"agent", "entry.entry_id"}


async def test_the_cli_puts_gets_lists_and_deletes_a_file(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from packetbus._cli import main

    scope, data = unique("scope"), os.urandom(3 * MiB + 5)
    source, copy = tmp_path / "in.bin", tmp_path / "out.bin"
    source.write_bytes(data)
    base = ["--target", target, "context"]
    put = [*base, "put", scope, "doc", "--file", str(source), "--author", "cli-1"]
    assert await asyncio.to_thread(main, put) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "1"
    assert await asyncio.to_thread(main, [*put, "--expected-version", "0"]) == 1
    assert "ABORTED" in capsys.readouterr().err
    get = [*base, "get", scope, "doc", "--out", str(copy)]
    assert await asyncio.to_thread(main, get) == 0
    assert json.loads(capsys.readouterr().out)["sha256"]
    assert copy.read_bytes() == data
    assert await asyncio.to_thread(main, [*base, "list", scope]) == 0
    assert [json.loads(line)["name"] for line in capsys.readouterr().out.splitlines()] == ["doc"]
    assert await asyncio.to_thread(main, [*base, "delete", scope, "doc"]) == 0
    assert json.loads(capsys.readouterr().out) == {"existed": True, "version": "1"}


async def test_a_watch_resumed_from_a_trimmed_cursor_is_told_of_the_gap(redis_url: str) -> None:
    limits = Limits(max_context_events=10)
    config = ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits)
    async with (
        running(config) as srv,
        await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client,
    ):
        scope = unique("scope")
        first = await client.put_context(scope, "doc", b"0", author="w-1")
        assert first.version == 1
        early: list[pb.WatchContextResponse] = []
        async for response in client.watch_context(scope, after_cursor="0-0", timeout=1):
            early.append(response)
        [only] = early  # nothing trimmed yet: no gap, the one event
        assert (only.gap, [c.version for c in only.changes]) == (False, [1])
        for i in range(1, 250):  # the log keeps ~10 (trimmed a node at a time)
            await client.put_context(scope, "doc", b"%d" % i, author="w-1")
        late: list[pb.WatchContextResponse] = []
        async for response in client.watch_context(
            scope, after_cursor=only.changes[0].cursor, timeout=1
        ):
            late.append(response)
        assert late[0].gap
        assert not late[0].changes
        versions = [c.version for r in late[1:] for c in r.changes]
        assert versions == list(range(versions[0], 251))
        assert versions[0] > 2


async def test_each_version_carries_a_server_signed_commit_that_verifies_offline(
    client: packetbus.Client,
) -> None:
    scope, data = unique("scope"), b"the notes" * 1000
    put = await client.put_context(scope, "doc", data, author="haiku-1")
    keys = {k.key_id: k for k in await client.signing_keys()}
    got = (await client.get_context(scope, "doc")).document
    assert got.commit == put.commit
    record = packetbus.verify_context_commit(got, keys)
    assert record is not None
    assert (record.version, record.sha256, record.author) == (
        1,
        hashlib.sha256(data).digest(),
        "haiku-1",
    )
    assert record.committed_at == got.updated_at
    forged = pb.ContextDocument()
    forged.CopyFrom(got)
    forged.version = 2  # a claim the signature does not cover
    assert packetbus.verify_context_commit(forged, keys) is None
    forged.CopyFrom(got)
    forged.commit_signature = bytes([got.commit_signature[0] ^ 1]) + got.commit_signature[1:]
    assert packetbus.verify_context_commit(forged, keys) is None
    assert packetbus.verify_context_commit(got, {}) is None


async def test_concurrent_unconditional_puts_each_commit_one_version(
    client: packetbus.Client,
) -> None:
    scope = unique("scope")
    documents = await asyncio.gather(
        *(client.put_context(scope, "doc", b"%d" % i, author=f"w-{i}") for i in range(6))
    )
    assert sorted(d.version for d in documents) == [1, 2, 3, 4, 5, 6]
    keys = {k.key_id: k for k in await client.signing_keys()}
    assert all(packetbus.verify_context_commit(d, keys) is not None for d in documents)
    latest = await client.get_context(scope, "doc")
    assert latest.document.version == 6


@pytest.mark.parametrize("newest_first", [True, False])
async def test_a_capped_log_forgets_the_fingerprints_of_the_entries_it_drops(
    raw_redis: redis_asyncio.Redis, newest_first: bool
) -> None:
    # Bounded memory: the id -> fingerprint hash holds only the entries kept.
    log = _keys.memory_log(unique("agent"))
    for n in range(5):
        await _scripts.CONTEXT_LOG_APPEND.run(
            raw_redis,
            [log, _keys.log_fingerprints(log)],
            [f"id-{n}\nentry {n}", "L" if newest_first else "R", 2, 60_000, f"id-{n}", f"fp-{n}"],
        )
    assert await raw_redis.llen(log) == 2
    fingerprints = await raw_redis.hgetall(_keys.log_fingerprints(log))
    assert fingerprints == {b"id-3": b"fp-3", b"id-4": b"fp-4"}
    assert 0 < await raw_redis.pttl(_keys.log_fingerprints(log)) <= 60_000
