"""An upload id names one put and its retries, not the bytes in the store: reused for
another document of the scope, sent twice at once, or by a put that fails or is
cancelled midway, it never changes or deletes what another put committed."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import context_service_pb2 as pb
from packetbus.v1 import context_service_pb2_grpc
from packetbus_server import Limits, _keys
from tests.conftest import unique


async def _body_keys(raw_redis: redis_asyncio.Redis, scope: str) -> list[bytes]:
    return [k async for k in raw_redis.scan_iter(match=_keys.context_prefix(scope) + "body:*")]


def _header(
    scope: str, name: str, data: bytes, upload_id: str, sha256: bytes = b""
) -> pb.PutContextRequest:
    return pb.PutContextRequest(
        header=pb.PutContextHeader(
            scope=scope,
            name=name,
            size=len(data),
            sha256=sha256 or hashlib.sha256(data).digest(),
            author="writer-1",
            upload_id=upload_id,
        )
    )


async def _read(client: packetbus.Client, scope: str, name: str) -> tuple[int, bytes]:
    value = await client.get_context(scope, name)
    assert value.document.sha256 == hashlib.sha256(value.data).digest()
    return value.document.version, value.data


async def test_an_upload_id_reused_for_another_document_leaves_the_first_as_committed(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    scope, upload = unique("scope"), str(uuid.uuid4())
    await client.put_context(scope, "a", b"AAAA", upload_id=upload, author="writer-1")
    other = await client.put_context(scope, "b", b"BBBBBB", upload_id=upload, author="writer-1")
    assert (other.version, other.size) == (1, 6)
    assert await _read(client, scope, "a") == (1, b"AAAA")
    assert await _read(client, scope, "b") == (1, b"BBBBBB")
    assert len(await _body_keys(raw_redis, scope)) == 2


@pytest.mark.parametrize("fault", ["digest", "size"])
async def test_a_failed_upload_under_a_committed_upload_id_deletes_nothing(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis, fault: str
) -> None:
    scope, upload = unique("scope"), str(uuid.uuid4())
    await client.put_context(scope, "a", b"AAAA", upload_id=upload, author="writer-1")
    data = b"BBBBBB"
    header = _header(scope, "b", data, upload, sha256=b"\0" * 32 if fault == "digest" else b"")
    if fault == "size":
        header.header.size = len(data) + 1
    async with grpc.aio.insecure_channel(target) as channel:
        stub = context_service_pb2_grpc.ContextServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.PutContext(iter([header, pb.PutContextRequest(chunk=data)]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _read(client, scope, "a") == (1, b"AAAA")
    assert len(await _body_keys(raw_redis, scope)) == 1


async def test_a_retry_cancelled_midway_leaves_the_commit_it_raced_readable(
    client: packetbus.Client, target: str, raw_redis: redis_asyncio.Redis
) -> None:
    """The original put and its retry (same upload id) in flight at once: the retry
    commits, then the original is cancelled after staging a first chunk."""
    scope, upload = unique("scope"), str(uuid.uuid4())
    data = b"x" * 1000
    staged = asyncio.Event()
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[pb.PutContextRequest]:
        yield _header(scope, "doc", data, upload)
        yield pb.PutContextRequest(chunk=data[:10])
        staged.set()
        await never.wait()

    async with grpc.aio.insecure_channel(target) as channel:
        stub = context_service_pb2_grpc.ContextServiceStub(channel)
        original = stub.PutContext(stalled())
        await asyncio.wait_for(staged.wait(), 5)
        async with asyncio.timeout(5):
            while not await _body_keys(raw_redis, scope):  # noqa: ASYNC110 (the store)
                await asyncio.sleep(0.02)
        retry = await client.put_context(scope, "doc", data, upload_id=upload, author="writer-1")
        assert (retry.version, retry.size) == (1, len(data))
        original.cancel()
        with pytest.raises(asyncio.CancelledError):
            await original
    # The server ran the cancelled call's clean-up: only the committed body is left.
    async with asyncio.timeout(5):
        while len(await _body_keys(raw_redis, scope)) != 1:  # noqa: ASYNC110 (the store)
            await asyncio.sleep(0.02)
    assert await _read(client, scope, "doc") == (1, data)


async def test_the_same_upload_sent_10_times_at_once_commits_once_and_stages_nothing_left(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    scope, upload = unique("scope"), str(uuid.uuid4())
    data = bytes(range(256)) * 64
    documents = await asyncio.gather(
        *(
            client.put_context(scope, "doc", data, upload_id=upload, author="writer-1")
            for _ in range(10)
        )
    )
    assert {d.version for d in documents} == {1}
    assert await _read(client, scope, "doc") == (1, data)
    assert len(await _body_keys(raw_redis, scope)) == 1


async def test_a_late_retry_after_another_writers_commit_answers_the_original_commit(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    """PutContextHeader.upload_id: "a put retried with the same key and the same bytes
    after it committed answers the original commit instead of writing again", also
    when another writer committed in between (the Python client retries a put whose
    reply was lost): the retry must not write the old bytes over the newer version."""
    scope, first, second = unique("scope"), str(uuid.uuid4()), str(uuid.uuid4())
    await client.put_context(scope, "doc", b"first", upload_id=first, author="writer-1")
    await client.put_context(scope, "doc", b"second", upload_id=second, author="writer-2")
    again = await client.put_context(scope, "doc", b"first", upload_id=first, author="writer-1")
    assert (again.version, again.sha256) == (1, hashlib.sha256(b"first").digest())
    assert await _read(client, scope, "doc") == (2, b"second")
    assert await raw_redis.xlen(_keys.context_events(scope)) == 2
    # The same id with other bytes (or media type, or author) is another put.
    with pytest.raises(packetbus.PacketbusError) as other:
        await client.put_context(scope, "doc", b"third", upload_id=first, author="writer-1")
    assert other.value.code == grpc.StatusCode.ALREADY_EXISTS
    # A conditional put retried late answers its commit too, not ABORTED.
    conditional = str(uuid.uuid4())
    await client.put_context(
        scope, "doc", b"3", upload_id=conditional, expected_version=2, author="writer-1"
    )
    await client.put_context(scope, "doc", b"4", author="writer-2")
    late = await client.put_context(
        scope, "doc", b"3", upload_id=conditional, expected_version=2, author="writer-1"
    )
    assert late.version == 3
    assert await _read(client, scope, "doc") == (4, b"4")


async def test_a_late_retry_does_not_bring_a_deleted_document_back(
    client: packetbus.Client,
) -> None:
    scope, upload = unique("scope"), str(uuid.uuid4())
    await client.put_context(scope, "doc", b"gone soon", upload_id=upload, author="writer-1")
    await client.delete_context(scope, "doc")
    again = await client.put_context(
        scope, "doc", b"gone soon", upload_id=upload, author="writer-1"
    )
    assert again.version == 1
    with pytest.raises(packetbus.PacketbusError) as missing:
        await client.get_context(scope, "doc")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_a_document_remembers_its_newest_upload_ids_only(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis
) -> None:
    scope, kept = unique("scope"), Limits().context_upload_memos
    uploads = [str(uuid.uuid4()) for _ in range(kept + 3)]
    for i, upload in enumerate(uploads):
        await client.put_context(scope, "doc", b"%d" % i, upload_id=upload, author="writer-1")
    assert await raw_redis.hlen(_keys.context_uploads(scope, "doc")) == kept
    assert await raw_redis.zcard(_keys.context_upload_order(scope, "doc")) == kept
    assert await raw_redis.hexists(_keys.context_uploads(scope, "doc"), uploads[2]) == 0
    assert await raw_redis.hexists(_keys.context_uploads(scope, "doc"), uploads[3]) == 1
    remembered = await client.put_context(
        scope, "doc", b"3", upload_id=uploads[3], author="writer-1"
    )
    assert remembered.version == 4
