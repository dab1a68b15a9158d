"""ContextService: chunked, versioned context documents; global map; memory logs; traces."""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from google.protobuf import timestamp_pb2

from packetbus._context import COMMIT_DOMAIN
from packetbus.v1 import context_service_pb2 as pb
from packetbus.v1 import context_service_pb2_grpc

from . import _keys, _status
from ._access import Permission, binding, require
from ._clock import StoreClock
from ._context_pages import log_page, log_token, map_page, map_token
from ._context_store import ChangeEvent, ContextStore, DocMeta
from ._custodian import Custodian
from ._fields import is_stream_id, utf8_length
from ._governance import context_write, judge_context_write
from ._limits import Limits
from ._packet_service import storage_errors, stream_started
from ._packing import fit, message_size, packs
from ._page_tokens import seal, unseal
from ._validation import Violation, validate_agent_id, validate_id, validate_safe_integer

if TYPE_CHECKING:
    from ._policy_service import Governor

MAX_SCOPE_LENGTH = 200
MAX_NAME_LENGTH = 512
MAX_CONTENT_TYPE_LENGTH = 255
_DEFAULT_PAGE = 100
_WATCH_BATCH = 100
# An unconditional put retries its compare-and-set this often under contention.
_UNCONDITIONAL_ATTEMPTS = 8
# An idle watcher reads again this often (a read shared with the other watchers of
# the same log, see _waits); cancellation and drain end it sooner (_streams).
_WATCH_BLOCK_MS = 5000
# Change events outlive the documents they tell of by this much, so a watcher
# that was away a while can still resume.
_EVENTS_RETENTION_MS = 86400 * 1000
_PRINTABLE = re.compile(r"[^\s\x00-\x1f\x7f]+\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_KINDS = {"put": pb.CONTEXT_CHANGE_KIND_PUT, "delete": pb.CONTEXT_CHANGE_KIND_DELETE}


def _printable(out: list[Violation], path: str, value: str, max_length: int) -> None:
    if not value:
        out.append(Violation(path, "REQUIRED", "is required"))
    elif utf8_length(value) > max_length:
        out.append(Violation(path, "LENGTH", f"must be 1..{max_length} bytes (UTF-8)"))
    elif not _PRINTABLE.match(value):
        out.append(Violation(path, "CHARSET", "must not contain whitespace or control characters"))


def _where(out: list[Violation], prefix: str, scope: str, name: str) -> None:
    _printable(out, f"{prefix}scope", scope, MAX_SCOPE_LENGTH)
    _printable(out, f"{prefix}name", name, MAX_NAME_LENGTH)


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def _document(scope: str, meta: DocMeta) -> pb.ContextDocument:
    return pb.ContextDocument(
        scope=scope,
        name=meta.name,
        version=meta.version,
        size=meta.size,
        sha256=bytes.fromhex(meta.sha256_hex),
        content_type=meta.content_type,
        author=meta.author,
        updated_at=_timestamp(meta.updated_ms),
        expires_at=_timestamp(meta.expires_ms),
        commit=meta.commit,
        commit_signature=meta.signature,
        commit_key_id=meta.key_id,
    )


def _change(scope: str, e: ChangeEvent) -> pb.ContextChange:
    return pb.ContextChange(
        cursor=e.cursor,
        kind=_KINDS.get(e.kind, pb.CONTEXT_CHANGE_KIND_UNSPECIFIED),
        scope=scope,
        name=e.name,
        version=e.version,
        size=e.size,
        sha256=bytes.fromhex(e.sha256_hex),
        author=e.author,
        changed_at=_timestamp(e.changed_ms),
    )


def _stream_id(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


def entry_fingerprint(entry: pb.LogEntry) -> str:
    """What a memory or trace entry means, as 64 hex digits: every field but
    recorded_at, which is stamped when the entry is built (a producer that builds
    it again after a crash stamps it again), as a packet's dispatched_at is."""
    meant = pb.LogEntry()
    meant.CopyFrom(entry)
    meant.ClearField("recorded_at")
    return hashlib.sha256(meant.SerializeToString(deterministic=True)).hexdigest()


class ContextService(context_service_pb2_grpc.ContextServiceServicer):
    def __init__(
        self,
        store: ContextStore,
        custodian: Custodian,
        limits: Limits,
        *,
        clock: StoreClock,
        governor: Governor | None = None,
    ) -> None:
        self._store = store
        # The policy in force judges each write by its description (_governance).
        self._governor = governor
        # The store's clock: times are judged and stamped by it, as every replica does.
        self._clock = clock
        self._custodian = custodian
        self._limits = limits

    async def _govern(
        self,
        context: grpc.aio.ServicerContext,
        *,
        origin: str | None,
        topic: str,
        scope: str,
        name: str,
        operation: str,
        content_type: str = "",
    ) -> None:
        """Fail the call (nothing written) when the policy refuses this write, described
        as _governance.context_write says; `origin` None: the caller's agent id."""
        if self._governor is None or self._governor.watch.policy is None:
            return
        described = context_write(
            origin=origin,
            topic=topic,
            scope=scope,
            name=name,
            operation=operation,
            content_type=content_type,
        )
        await judge_context_write(context, self._governor, described)

    def _ttl_ms(self, out: list[Violation], path: str, ttl: int, default: int) -> int:
        if ttl < 0 or ttl > self._limits.max_context_ttl_seconds:
            out.append(
                Violation(path, "RANGE", f"must be 0..{self._limits.max_context_ttl_seconds}")
            )
        return (ttl or default) * 1000

    # -- documents ------------------------------------------------------------------

    def _check_header(self, h: pb.PutContextHeader) -> list[Violation]:
        out: list[Violation] = []
        _where(out, "header.", h.scope, h.name)
        if h.HasField("expected_version"):
            validate_safe_integer(out, "header.expected_version", h.expected_version)
        self._ttl_ms(out, "header.ttl_seconds", h.ttl_seconds, 0)
        if utf8_length(h.content_type) > MAX_CONTENT_TYPE_LENGTH:
            out.append(Violation("header.content_type", "LENGTH", "must be at most 255 bytes"))
        if not 0 <= h.size <= self._limits.max_context_bytes:
            out.append(
                Violation(
                    "header.size", "RANGE", f"must be 0..{self._limits.max_context_bytes} bytes"
                )
            )
        if len(h.sha256) != 32:
            out.append(Violation("header.sha256", "LENGTH", "must be a SHA-256 (32 bytes)"))
        validate_agent_id(out, "header.author", h.author)
        if h.upload_id and not _UUID.match(h.upload_id):
            out.append(Violation("header.upload_id", "UUID_FORMAT", "must be a lowercase UUID"))
        return out

    async def PutContext(
        self,
        request_iterator: AsyncIterator[pb.PutContextRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.PutContextResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            await _status.abort_invalid(
                context,
                "invalid context upload",
                [Violation("header", "REQUIRED", "the first message is the header")],
            )
        h = first.header
        # The rule's in-service part (permissions.RULES): context.write on the
        # header's scope, before anything of the upload is looked at or staged.
        await require(context, Permission.CONTEXT_WRITE, h.scope)
        violations = self._check_header(h)
        if violations:
            await _status.abort_invalid(context, "invalid context upload", violations)
        await binding.require_acting(context, h.author, "header.author")
        await self._govern(
            context,
            origin=h.author,
            topic=f"context/{h.scope}",
            scope=h.scope,
            name=h.name,
            operation="put",
            content_type=h.content_type,
        )
        async with storage_errors(context):
            current = await self._store.meta(h.scope, h.name)
        replay = bool(h.upload_id) and current is not None and current.upload_id == h.upload_id
        upload_id = h.upload_id or str(uuid.uuid4())
        staged = False
        committed = False
        try:
            hasher = hashlib.sha256()
            offset = 0
            upload_ttl_ms = self._limits.context_upload_ttl_seconds * 1000
            async for message in request_iterator:
                chunk = message.chunk
                if message.WhichOneof("part") != "chunk":
                    violations.append(Violation("header", "ONCE", "comes once, first"))
                elif len(chunk) > self._limits.max_context_chunk_bytes:
                    violations.append(
                        Violation(
                            "chunk",
                            "LENGTH",
                            f"at most {self._limits.max_context_chunk_bytes} bytes per chunk",
                        )
                    )
                elif offset + len(chunk) > h.size:
                    violations.append(
                        Violation("header.size", "SIZE_MISMATCH", "more bytes came than declared")
                    )
                if violations:
                    await _status.abort_invalid(context, "invalid context upload", violations)
                if not replay:
                    staged = True
                    async with storage_errors(context):
                        await self._store.stage(h.scope, upload_id, offset, chunk, upload_ttl_ms)
                hasher.update(chunk)
                offset += len(chunk)
            if offset == 0 and not replay:  # an empty document has a body too
                staged = True
                async with storage_errors(context):
                    await self._store.stage(h.scope, upload_id, 0, b"", upload_ttl_ms)
            if offset != h.size:
                violations.append(
                    Violation(
                        "header.size",
                        "SIZE_MISMATCH",
                        f"{h.size} bytes declared, {offset} came",
                    )
                )
            elif hasher.digest() != h.sha256:
                violations.append(
                    Violation("header.sha256", "DIGEST_MISMATCH", "the bytes have another SHA-256")
                )
            if violations:
                await _status.abort_invalid(context, "invalid context upload", violations)
            if replay:
                assert current is not None
                await _same_upload(context, h, current)
                committed = True
                return pb.PutContextResponse(document=_document(h.scope, current), created=False)
            response = await self._commit(context, h, upload_id, current)
            committed = True
            return response
        finally:
            if staged and not committed:
                # Best effort: an abandoned upload also expires on its own.
                with contextlib.suppress(Exception):
                    await self._store.discard(h.scope, upload_id)

    def _sign(
        self, h: pb.PutContextHeader, upload_id: str, version: int, now_ms: int
    ) -> tuple[bytes, bytes, str]:
        """The signed commit record of `version`: (record, signature, key id)."""
        if not self._custodian.signing:
            return b"", b"", ""
        record = pb.ContextCommit(
            scope=h.scope,
            name=h.name,
            version=version,
            size=h.size,
            sha256=h.sha256,
            content_type=h.content_type,
            author=h.author,
            committed_at=_timestamp(now_ms),
            server_id=self._custodian.server_id,
            upload_id=upload_id,
        ).SerializeToString(deterministic=True)
        signer = self._custodian.keyring.active
        return record, signer.sign(COMMIT_DOMAIN, record), signer.key_id

    async def _commit(
        self,
        context: grpc.aio.ServicerContext,
        h: pb.PutContextHeader,
        upload_id: str,
        current: DocMeta | None,
    ) -> pb.PutContextResponse:
        ttl_ms = (h.ttl_seconds or self._limits.default_context_ttl_seconds) * 1000
        conditional = h.HasField("expected_version")
        # The version is signed before the script runs, so the script is always a
        # compare-and-set; an unconditional put re-reads and tries again when
        # another writer got in between.
        expected = h.expected_version if conditional else (current.version if current else 0)
        for _ in range(_UNCONDITIONAL_ATTEMPTS):
            now_ms = self._clock.now_ms()
            record, signature, key_id = self._sign(h, upload_id, expected + 1, now_ms)
            async with storage_errors(context):
                commit = await self._store.commit(
                    h.scope,
                    h.name,
                    upload_id,
                    expected_version=expected,
                    size=h.size,
                    sha256_hex=h.sha256.hex(),
                    content_type=h.content_type,
                    author=h.author,
                    now_ms=now_ms,
                    expires_ms=now_ms + ttl_ms,
                    grace_ms=self._limits.context_replaced_grace_seconds * 1000,
                    max_events=self._limits.max_context_events,
                    events_until_ms=now_ms + ttl_ms + _EVENTS_RETENTION_MS,
                    commit=record,
                    signature=signature,
                    key_id=key_id,
                )
            if commit.status != "stale" or conditional:
                break
            expected = commit.version
        if commit.status == "stale":
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"context {h.scope}/{h.name} is at version {commit.version}, "
                f"not {expected}; read it again and retry",
            )
        if commit.status == "incomplete":
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"the staged upload holds {commit.version} of {h.size} bytes "
                "(it expired midway?); upload again",
            )
        if commit.status == "dup":
            assert commit.meta is not None
            await _same_upload(context, h, commit.meta)
            return pb.PutContextResponse(document=_document(h.scope, commit.meta), created=False)
        meta = DocMeta(
            h.name,
            commit.version,
            h.size,
            h.sha256.hex(),
            h.content_type,
            h.author,
            now_ms,
            now_ms + ttl_ms,
            upload_id,
            record,
            signature,
            key_id,
        )
        return pb.PutContextResponse(document=_document(h.scope, meta), created=True)

    async def GetContext(
        self, request: pb.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetContextResponse]:
        violations: list[Violation] = []
        _where(violations, "", request.scope, request.name)
        max_chunk = self._limits.max_context_chunk_bytes
        if not 0 <= request.chunk_bytes <= max_chunk:
            violations.append(Violation("chunk_bytes", "RANGE", f"must be 0..{max_chunk}"))
        if violations:
            await _status.abort_invalid(context, "invalid context read", violations)
        async with storage_errors(context):
            meta = await self._store.meta(request.scope, request.name)
        if meta is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no context {request.scope}/{request.name}"
            )
        assert meta is not None
        if request.HasField("version") and request.version != meta.version:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"context {request.scope}/{request.name} is at version {meta.version}",
            )
        yield pb.GetContextResponse(document=_document(request.scope, meta))
        step = request.chunk_bytes or max_chunk
        offset = 0
        while offset < meta.size:
            length = min(step, meta.size - offset)
            async with storage_errors(context):
                data = await self._store.read(request.scope, meta.upload_id, offset, length)
            if data is None or len(data) != length:
                await context.abort(
                    grpc.StatusCode.ABORTED,
                    f"version {meta.version} was replaced while being read; read again",
                )
            assert data is not None
            yield pb.GetContextResponse(chunk=data)
            offset += length

    async def DeleteContext(
        self, request: pb.DeleteContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteContextResponse:
        violations: list[Violation] = []
        _where(violations, "", request.scope, request.name)
        if request.author:
            validate_agent_id(violations, "author", request.author)
        if request.HasField("expected_version"):
            validate_safe_integer(violations, "expected_version", request.expected_version)
        if violations:
            await _status.abort_invalid(context, "invalid context delete", violations)
        if request.author:
            await binding.require_acting(context, request.author, "author")
        await self._govern(
            context,
            origin=request.author or None,
            topic=f"context/{request.scope}",
            scope=request.scope,
            name=request.name,
            operation="delete",
        )
        now_ms = self._clock.now_ms()
        expected = request.expected_version if request.HasField("expected_version") else None
        async with storage_errors(context):
            status, version = await self._store.delete(
                request.scope,
                request.name,
                expected_version=expected,
                author=request.author,
                now_ms=now_ms,
                grace_ms=self._limits.context_replaced_grace_seconds * 1000,
                max_events=self._limits.max_context_events,
                events_until_ms=now_ms + _EVENTS_RETENTION_MS,
            )
        if status == "stale":
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"context {request.scope}/{request.name} is at version {version}, "
                f"not {request.expected_version}",
            )
        return pb.DeleteContextResponse(existed=status == "deleted", version=version)

    async def ListContexts(
        self, request: pb.ListContextsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListContextsResponse:
        violations: list[Violation] = []
        _printable(violations, "scope", request.scope, MAX_SCOPE_LENGTH)
        if utf8_length(request.name_prefix) > MAX_NAME_LENGTH:
            violations.append(Violation("name_prefix", "LENGTH", "longer than any name"))
        if not 0 <= request.page_size <= self._limits.max_context_page:
            violations.append(
                Violation("page_size", "RANGE", f"must be 0..{self._limits.max_context_page}")
            )
        scope = (request.scope, request.name_prefix)
        token = unseal(violations, "contexts", scope, request.page_token)
        if violations:
            await _status.abort_invalid(context, "invalid context listing", violations)
        count = request.page_size or _DEFAULT_PAGE
        async with storage_errors(context):
            found, last = await self._store.documents(
                request.scope, request.name_prefix, token, count
            )
        documents = [_document(request.scope, m) for m in found]
        # Long names and commit records: a full page can pass the reply budget.
        fits = fit(map(message_size, documents), self._limits.reply_budget_bytes)
        # More to list: the store had a full page, or the budget cut this one short.
        more = len(found) == count or fits < len(documents)
        if fits < len(documents):
            documents, last = documents[:fits], documents[fits - 1].name
        return pb.ListContextsResponse(
            documents=documents, next_page_token=seal("contexts", scope, last) if more else ""
        )

    async def WatchContext(
        self, request: pb.WatchContextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchContextResponse]:
        violations: list[Violation] = []
        _printable(violations, "scope", request.scope, MAX_SCOPE_LENGTH)
        if request.after_cursor and not is_stream_id(request.after_cursor):
            violations.append(Violation("after_cursor", "CURSOR_FORMAT", "must be <ms>-<seq>"))
        if violations:
            await _status.abort_invalid(context, "invalid context watch", violations)
        scope = request.scope
        async with storage_errors(context):
            gap = False
            if request.after_cursor:
                cursor = request.after_cursor
                oldest = await self._store.oldest_kept(scope)
                gap = oldest is not None and _stream_id(cursor) < _stream_id(oldest)
            else:
                cursor = await self._store.last_event(scope)
        await stream_started(context)
        if gap:
            yield pb.WatchContextResponse(gap=True)
        while True:
            async with storage_errors(context):
                events = await self._store.events_after(
                    scope, cursor, count=_WATCH_BATCH, block_ms=_WATCH_BLOCK_MS
                )
            if not events:
                continue
            cursor = events[-1].cursor
            changes = [_change(scope, e) for e in events if e.name.startswith(request.name_prefix)]
            for part in packs(changes, message_size, self._limits.reply_budget_bytes):
                yield pb.WatchContextResponse(changes=part)

    # -- global map -------------------------------------------------------------------

    def _check_key(self, out: list[Violation], key: str) -> None:
        _printable(out, "key", key, 255)

    async def SetGlobalContext(
        self, request: pb.SetGlobalContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetGlobalContextResponse:
        violations: list[Violation] = []
        self._check_key(violations, request.key)
        if len(request.value.encode()) > self._limits.max_global_value_bytes:
            violations.append(
                Violation("value", "LENGTH", f"at most {self._limits.max_global_value_bytes} bytes")
            )
        if violations:
            await _status.abort_invalid(context, "invalid global context", violations)
        await self._govern(
            context,
            origin=None,
            topic=f"global/{request.key}",
            scope="global",
            name=request.key,
            operation="set",
        )
        expected = request.expected_value if request.HasField("expected_value") else None
        async with storage_errors(context):
            status = await self._store.map_set(
                request.key,
                request.value,
                expected,
                max_entries=self._limits.max_global_entries,
                ttl_ms=self._limits.max_context_ttl_seconds * 1000,
            )
        if status == "stale":
            await context.abort(
                grpc.StatusCode.ABORTED, f"global context {request.key!r} has another value"
            )
        if status == "full":
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the global context holds {self._limits.max_global_entries} keys already",
            )
        return pb.SetGlobalContextResponse()

    async def GetGlobalContext(
        self, request: pb.GetGlobalContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetGlobalContextResponse:
        violations: list[Violation] = []
        self._check_key(violations, request.key)
        if violations:
            await _status.abort_invalid(context, "invalid global context", violations)
        async with storage_errors(context):
            value = await self._store.map_get(request.key)
        if value is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no global context {request.key!r}")
        assert value is not None
        return pb.GetGlobalContextResponse(value=value)

    async def DeleteGlobalContext(
        self, request: pb.DeleteGlobalContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteGlobalContextResponse:
        violations: list[Violation] = []
        self._check_key(violations, request.key)
        if violations:
            await _status.abort_invalid(context, "invalid global context", violations)
        await self._govern(
            context,
            origin=None,
            topic=f"global/{request.key}",
            scope="global",
            name=request.key,
            operation="delete",
        )
        async with storage_errors(context):
            existed = await self._store.map_delete(request.key)
        return pb.DeleteGlobalContextResponse(existed=existed)

    async def ListGlobalContext(
        self, request: pb.ListGlobalContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListGlobalContextResponse:
        violations: list[Violation] = []
        after = map_token(violations, unseal(violations, "global", (), request.page_token))
        if violations:
            await _status.abort_invalid(context, "invalid global context listing", violations)
        async with storage_errors(context):
            entries, token = await map_page(self._store, after, self._limits.reply_budget_bytes)
        return pb.ListGlobalContextResponse(
            entries=entries, next_page_token=seal("global", (), token)
        )

    # -- memory logs and traces -----------------------------------------------------

    def _check_entry(self, out: list[Violation], entry: pb.LogEntry, ttl: int) -> int:
        if not _UUID.match(entry.entry_id):
            out.append(Violation("entry.entry_id", "UUID_FORMAT", "must be a lowercase UUID"))
        if entry.ByteSize() > self._limits.max_log_entry_bytes:
            out.append(
                Violation("entry", "LENGTH", f"at most {self._limits.max_log_entry_bytes} bytes")
            )
        return self._ttl_ms(out, "ttl_seconds", ttl, self._limits.default_log_ttl_seconds)

    def _check_limit(self, out: list[Violation], limit: int) -> None:
        if not 0 <= limit <= self._limits.max_log_entries:
            out.append(Violation("limit", "RANGE", f"must be 0..{self._limits.max_log_entries}"))

    async def _append_entry(
        self,
        context: grpc.aio.ServicerContext,
        log: str,
        entry: pb.LogEntry,
        *,
        newest_first: bool,
        ttl_ms: int,
    ) -> int:
        """Append `entry` to `log` once per entry id: the log's length after. The same
        entry again, or rebuilt (another recorded_at), answers as the first did; other
        contents under its id are ALREADY_EXISTS."""
        async with storage_errors(context):
            appended, length = await self._store.log_append(
                log,
                entry.entry_id,
                entry.SerializeToString(),
                entry_fingerprint(entry),
                newest_first=newest_first,
                cap=self._limits.max_log_entries,
                ttl_ms=ttl_ms,
            )
        if appended is None:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"entry_id {entry.entry_id} is already in the log with other contents; "
                "give a new entry a new id",
            )
        return length

    async def AppendMemory(
        self, request: pb.AppendMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendMemoryResponse:
        violations: list[Violation] = []
        validate_agent_id(violations, "agent", request.agent)
        ttl_ms = self._check_entry(violations, request.entry, request.ttl_seconds)
        if violations:
            await _status.abort_invalid(context, "invalid memory entry", violations)
        # An agent appends to its own memory (or one it may act for), beside the
        # gate's memory.write on it.
        await binding.require_acting(context, request.agent, "agent")
        await self._govern(
            context,
            origin=request.agent,
            topic=f"memory/{request.agent}",
            scope="memory",
            name=request.entry.entry_id,
            operation="append",
        )
        length = await self._append_entry(
            context,
            _keys.memory_log(request.agent),
            request.entry,
            newest_first=True,
            ttl_ms=ttl_ms,
        )
        return pb.AppendMemoryResponse(length=length)

    async def ListMemory(
        self, request: pb.ListMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMemoryResponse:
        violations: list[Violation] = []
        validate_agent_id(violations, "agent", request.agent)
        self._check_limit(violations, request.limit)
        scope: tuple[str, ...] = (request.agent,)
        after = log_token(violations, unseal(violations, "memory", scope, request.page_token))
        if violations:
            await _status.abort_invalid(context, "invalid memory listing", violations)
        async with storage_errors(context):
            raw, token = await log_page(
                self._store,
                _keys.memory_log(request.agent),
                after,
                request.limit,
                newest_first=True,
                budget=self._limits.reply_budget_bytes,
            )
        return pb.ListMemoryResponse(
            entries=[pb.LogEntry.FromString(r) for r in raw],
            next_page_token=seal("memory", scope, token),
        )

    async def AppendTrace(
        self, request: pb.AppendTraceRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendTraceResponse:
        violations: list[Violation] = []
        validate_id(violations, "task_id", request.task_id)
        validate_agent_id(violations, "agent", request.agent)
        ttl_ms = self._check_entry(violations, request.entry, request.ttl_seconds)
        if violations:
            await _status.abort_invalid(context, "invalid trace entry", violations)
        # The agent that worked on the task: the caller, or one it may act for.
        await binding.require_acting(context, request.agent, "agent")
        await self._govern(
            context,
            origin=request.agent,
            topic=f"trace/{request.task_id}",
            scope="trace",
            name=request.entry.entry_id,
            operation="append",
        )
        length = await self._append_entry(
            context,
            _keys.trace_log(request.task_id, request.agent),
            request.entry,
            newest_first=False,
            ttl_ms=ttl_ms,
        )
        return pb.AppendTraceResponse(length=length)

    async def ListTraces(
        self, request: pb.ListTracesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTracesResponse:
        violations: list[Violation] = []
        validate_id(violations, "task_id", request.task_id)
        validate_agent_id(violations, "agent", request.agent)
        self._check_limit(violations, request.limit)
        scope = (request.task_id, request.agent)
        after = log_token(violations, unseal(violations, "traces", scope, request.page_token))
        if violations:
            await _status.abort_invalid(context, "invalid trace listing", violations)
        async with storage_errors(context):
            raw, token = await log_page(
                self._store,
                _keys.trace_log(request.task_id, request.agent),
                after,
                request.limit,
                newest_first=False,
                budget=self._limits.reply_budget_bytes,
            )
        return pb.ListTracesResponse(
            entries=[pb.LogEntry.FromString(r) for r in raw],
            next_page_token=seal("traces", scope, token),
        )


async def _same_upload(
    context: grpc.aio.ServicerContext, h: pb.PutContextHeader, committed: DocMeta
) -> None:
    """A put repeating an upload id must mean what its commit did (the bytes, their
    media type and author; not when it was sent), or it is ALREADY_EXISTS."""
    if (committed.sha256_hex, committed.content_type, committed.author) != (
        h.sha256.hex(),
        h.content_type,
        h.author,
    ):
        await context.abort(
            grpc.StatusCode.ALREADY_EXISTS,
            f"upload {committed.upload_id} committed other bytes, media type or author",
        )
