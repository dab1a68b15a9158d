"""Client side of shared context: chunked documents, the global map, memory logs, traces."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc

from packetbus.v1 import context_service_pb2 as pb
from packetbus.v1 import context_service_pb2_grpc, custody_pb2

from . import _ed25519
from ._calls import Call, Deadline
from ._config import RetrySettings
from ._errors import CLOSED, PacketbusError, raise_closed
from ._resuming import resuming
from ._retry_policy import Retry
from ._retrying import retried

T = TypeVar("T")

# Under gRPC's default 4 MiB message limit with room to spare.
CHUNK_BYTES = 1024 * 1024
# What a server's signature over a committed version covers: this, then the
# serialized ContextCommit (ContextDocument.commit), exactly as stored.
COMMIT_DOMAIN = b"packetbus.context.commit.v1\x00"


@dataclass(frozen=True, slots=True)
class ContextValue:
    """A document's bytes and the version they are."""

    document: pb.ContextDocument
    data: bytes


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class ContextClient:
    """The ContextService calls behind `Client`'s context methods."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        call: Call,
        deadline: Deadline,
        retry: RetrySettings,
    ) -> None:
        self._stub = context_service_pb2_grpc.ContextServiceStub(channel)
        self._call = call
        self._deadline = deadline
        self._retry = retry

    def _remaining(self, timeout: float | None) -> float:
        remaining = self._deadline(timeout) - time.monotonic()
        if remaining <= 0:
            raise PacketbusError(grpc.StatusCode.DEADLINE_EXCEEDED, "timeout spent")
        return remaining

    async def put(
        self,
        scope: str,
        name: str,
        data: bytes | AsyncIterable[bytes],
        *,
        expected_version: int | None,
        ttl: int,
        content_type: str,
        author: str,
        size: int | None,
        sha256: bytes | None,
        upload_id: str,
        chunk_bytes: int,
        timeout: float | None,
    ) -> pb.PutContextResponse:
        if isinstance(data, bytes):
            size, sha256 = len(data), hashlib.sha256(data).digest()
            source: AsyncIterable[bytes] | None = None
        else:
            if size is None or sha256 is None:
                raise ValueError("streaming data needs its size and sha256 up front")
            source = data
        header = pb.PutContextHeader(
            scope=scope,
            name=name,
            ttl_seconds=ttl,
            content_type=content_type,
            size=size,
            sha256=sha256,
            author=author,
            # An id of the client's own when none is given: sent again under it, the
            # upload answers its first commit (the server compares bytes and author).
            upload_id=upload_id or str(uuid.uuid4()),
        )
        if expected_version is not None:
            header.expected_version = expected_version

        async def requests() -> AsyncIterator[pb.PutContextRequest]:
            yield pb.PutContextRequest(header=header)
            if source is None:
                assert isinstance(data, bytes)
                for chunk in _chunks(data, chunk_bytes):
                    yield pb.PutContextRequest(chunk=chunk)
                return
            async for piece in source:
                for chunk in _chunks(piece, chunk_bytes):
                    yield pb.PutContextRequest(chunk=chunk)

        if source is not None:
            # A stream of the caller's is read once: it cannot be sent again.
            try:
                response: pb.PutContextResponse = await self._stub.PutContext(
                    requests(), timeout=self._remaining(timeout)
                )
            except CLOSED as exc:
                raise_closed(exc)
            except grpc.aio.AioRpcError as exc:
                raise PacketbusError.from_rpc_error(exc) from None
            return response
        # Bytes: the whole upload again after a lost connection, as unary writes are.
        response = await retried(
            lambda left: self._stub.PutContext(requests(), timeout=left),
            self._deadline(timeout),
            Retry.IDEMPOTENT,
            self._retry,
        )
        return response

    async def stream(
        self,
        scope: str,
        name: str,
        *,
        version: int | None,
        timeout: float | None,
    ) -> AsyncIterator[pb.GetContextResponse]:
        request = pb.GetContextRequest(scope=scope, name=name)
        if version is not None:
            request.version = version
        call = None
        try:
            call = self._stub.GetContext(request, timeout=self._remaining(timeout))
            async for response in call:
                yield response
        except CLOSED as exc:
            raise_closed(exc)
        except grpc.aio.AioRpcError as exc:
            raise PacketbusError.from_rpc_error(exc, changes=False) from None
        finally:
            if call is not None:  # a caller that stopped early ends the stream now
                call.cancel()

    async def get_to(
        self,
        scope: str,
        name: str,
        sink: BinaryIO,
        *,
        version: int | None,
        timeout: float | None,
    ) -> pb.ContextDocument:
        """Write the document's bytes to `sink`, checked against its SHA-256."""
        document: pb.ContextDocument | None = None
        hasher = hashlib.sha256()
        size = 0
        async for response in self.stream(scope, name, version=version, timeout=timeout):
            if response.WhichOneof("part") == "document":
                document = response.document
            else:
                hasher.update(response.chunk)
                size += len(response.chunk)
                sink.write(response.chunk)
        if document is None:
            raise PacketbusError(grpc.StatusCode.INTERNAL, "the server sent no document header")
        if size != document.size or hasher.digest() != document.sha256:
            raise PacketbusError(
                grpc.StatusCode.DATA_LOSS,
                f"context {scope}/{name} version {document.version} arrived damaged",
            )
        return document

    async def get(
        self, scope: str, name: str, *, version: int | None, timeout: float | None
    ) -> ContextValue:
        parts: list[bytes] = []

        class _Sink:
            def write(self, b: bytes) -> int:
                parts.append(b)
                return len(b)

        document = await self.get_to(
            scope,
            name,
            _Sink(),  # type: ignore[arg-type]
            version=version,
            timeout=timeout,
        )
        return ContextValue(document, b"".join(parts))

    async def watch(
        self,
        scope: str,
        *,
        name_prefix: str,
        after_cursor: str,
        timeout: float | None,
    ) -> AsyncIterator[pb.WatchContextResponse]:
        """Changes as they are committed. A stream that ends UNAVAILABLE (a lost
        connection, a server draining) is opened again after the last change seen,
        a few times with backoff; one that saw no change yet resumes after the
        cursor the server started it at (`packetbus.stream_start`), skipping
        nothing. On a closed client: PacketbusError CANCELLED at once."""

        def open_stream(cursor: str, left: float | None) -> Any:
            request = pb.WatchContextRequest(
                scope=scope, name_prefix=name_prefix, after_cursor=cursor
            )
            return self._stub.WatchContext(request, timeout=left)

        async for response in resuming(
            open_stream,
            _last_change_cursor,
            after=after_cursor,
            timeout=timeout,
            ends_at_timeout=True,
        ):
            yield response

    async def call(self, method: str, request: Any, timeout: float | None) -> Any:
        return await self._call(getattr(self._stub, method), request, timeout)


def new_entry(text: str = "", *, kind: str = "", data: dict[str, Any] | None = None) -> pb.LogEntry:
    """A memory or trace entry with a fresh id and the current time."""
    entry = pb.LogEntry(entry_id=str(uuid.uuid4()), kind=kind, text=text)
    entry.recorded_at.GetCurrentTime()
    if data:
        entry.data.update(data)
    return entry


async def file_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while piece := f.read(chunk_bytes):
            yield piece


def file_digest(path: Path) -> tuple[int, bytes]:
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while piece := f.read(CHUNK_BYTES):
            hasher.update(piece)
            size += len(piece)
    return size, hasher.digest()


def verify_context_commit(
    document: pb.ContextDocument, keys: Mapping[str, custody_pb2.SigningKey]
) -> pb.ContextCommit | None:
    """The server-signed record of `document`'s version, if its signature holds under
    one of `keys` (e.g. ``{k.key_id: k for k in await client.signing_keys()}``) and it
    says what `document` says (scope, name, version, size, SHA-256, author); else None.

    The signature is checked over the exact stored bytes before they are parsed.
    """
    key = keys.get(document.commit_key_id)
    if key is None or not document.commit or key.owner_kind != custody_pb2.KEY_OWNER_KIND_SERVER:
        return None
    if not _ed25519.verify(
        key.public_key, COMMIT_DOMAIN + document.commit, document.commit_signature
    ):
        return None
    record = pb.ContextCommit.FromString(document.commit)
    claimed = (
        document.scope,
        document.name,
        document.version,
        document.size,
        document.sha256,
        document.author,
    )
    signed = (record.scope, record.name, record.version, record.size, record.sha256, record.author)
    return record if claimed == signed else None


def _last_change_cursor(response: pb.WatchContextResponse) -> str:
    return response.changes[-1].cursor if response.changes else ""
