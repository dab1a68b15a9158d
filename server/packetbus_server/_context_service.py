"""ContextService: chunked, versioned context documents; global map; memory logs; traces.

The servicer authorizes and governs each write, then delegates: request validation
in _context_checks, replies in _context_replies, the upload path (stage, sign,
commit) in _context_upload, document reads and listings in _context_reads, the watch
stream in _context_watch, log appends in _context_logs, map and log pages in
_context_pages; every read and write in _context_store.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from packetbus.v1 import context_service_pb2 as pb
from packetbus.v1 import context_service_pb2_grpc

from . import _keys, _status
from ._access import Permission, binding, require
from ._clock import StoreClock
from ._context_checks import check_entry, check_header, check_key, check_limit, where
from ._context_logs import append_entry
from ._context_pages import log_page, log_token, map_page, map_token
from ._context_reads import list_documents, read_document
from ._context_store import ContextStore
from ._context_upload import EVENTS_RETENTION_MS, ContextUpload
from ._context_watch import watch_changes
from ._custodian import Custodian
from ._field_rules import validate_agent_id, validate_id, validate_safe_integer
from ._governance import context_write, judge_context_write
from ._limits import Limits
from ._page_tokens import seal, unseal
from ._storage_errors import storage_errors
from ._validation import Violation

if TYPE_CHECKING:
    from ._policy_service import Governor


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
        self._limits = limits
        self._upload = ContextUpload(store, custodian, limits, clock=clock)

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

    # -- documents ------------------------------------------------------------------

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
        violations = check_header(self._limits, h)
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
        return await self._upload.receive(context, h, request_iterator)

    async def GetContext(
        self, request: pb.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetContextResponse]:
        async with contextlib.aclosing(
            read_document(self._store, self._limits, request, context)
        ) as replies:
            async for reply in replies:
                yield reply

    async def DeleteContext(
        self, request: pb.DeleteContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteContextResponse:
        violations: list[Violation] = []
        where(violations, "", request.scope, request.name)
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
                events_until_ms=now_ms + EVENTS_RETENTION_MS,
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
        return await list_documents(self._store, self._limits, request, context)

    async def WatchContext(
        self, request: pb.WatchContextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchContextResponse]:
        async with contextlib.aclosing(
            watch_changes(self._store, self._limits, request, context)
        ) as replies:
            async for reply in replies:
                yield reply

    # -- global map -------------------------------------------------------------------

    async def SetGlobalContext(
        self, request: pb.SetGlobalContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetGlobalContextResponse:
        violations: list[Violation] = []
        check_key(violations, request.key)
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
        check_key(violations, request.key)
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
        check_key(violations, request.key)
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

    async def AppendMemory(
        self, request: pb.AppendMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendMemoryResponse:
        violations: list[Violation] = []
        validate_agent_id(violations, "agent", request.agent)
        ttl_ms = check_entry(self._limits, violations, request.entry, request.ttl_seconds)
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
        length = await append_entry(
            self._store,
            self._limits,
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
        check_limit(self._limits, violations, request.limit)
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
        ttl_ms = check_entry(self._limits, violations, request.entry, request.ttl_seconds)
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
        length = await append_entry(
            self._store,
            self._limits,
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
        check_limit(self._limits, violations, request.limit)
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
