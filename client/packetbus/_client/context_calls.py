"""Client calls on shared context: documents, the global map, agents' memory and traces."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import BinaryIO, cast

from packetbus.v1 import context_service_pb2

from .._context import CHUNK_BYTES, ContextValue
from .._pages import collect
from .core import ClientCore


class ContextCalls(ClientCore):
    """Context documents, the global context map, memory logs and task traces."""

    async def put_context(
        self,
        scope: str,
        name: str,
        data: bytes | AsyncIterable[bytes],
        *,
        expected_version: int | None = None,
        ttl: int = 0,
        content_type: str = "",
        author: str = "",
        size: int | None = None,
        sha256: bytes | None = None,
        upload_id: str = "",
        chunk_bytes: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> context_service_pb2.ContextDocument:
        """Write a context document of any size (sent in chunks). `expected_version`:
        compare-and-set (0: must not exist), ABORTED when stale; None: any. Streaming
        `data` needs `size` and `sha256` up front. Returns the committed version.

        `upload_id` (a lowercase UUID; default: a new one) makes the put safe to send
        again: the same bytes under it answer the first commit. `data` given as bytes
        is sent again after a lost connection within `timeout`; a stream is read once,
        so a failure says `outcome_unknown` and the caller puts again under the same
        `upload_id`."""
        response = await self._context.put(
            scope,
            name,
            data,
            expected_version=expected_version,
            ttl=ttl,
            content_type=content_type,
            author=author or (self._config.identity.agent_id if self._config.identity else ""),
            size=size,
            sha256=sha256,
            upload_id=upload_id,
            chunk_bytes=chunk_bytes,
            timeout=timeout,
        )
        return response.document

    async def get_context(
        self,
        scope: str,
        name: str,
        *,
        version: int | None = None,
        timeout: float | None = None,
    ) -> ContextValue:
        """A document's current version (or exactly `version`), bytes checked."""
        return await self._context.get(scope, name, version=version, timeout=timeout)

    async def get_context_to(
        self,
        scope: str,
        name: str,
        sink: BinaryIO,
        *,
        version: int | None = None,
        timeout: float | None = None,
    ) -> context_service_pb2.ContextDocument:
        """Stream a document to `sink` (a file) without holding it in memory."""
        return await self._context.get_to(scope, name, sink, version=version, timeout=timeout)

    async def delete_context(
        self,
        scope: str,
        name: str,
        *,
        expected_version: int | None = None,
        author: str = "",
        timeout: float | None = None,
    ) -> context_service_pb2.DeleteContextResponse:
        request = context_service_pb2.DeleteContextRequest(scope=scope, name=name, author=author)
        if expected_version is not None:
            request.expected_version = expected_version
        response: context_service_pb2.DeleteContextResponse = await self._context.call(
            "DeleteContext", request, timeout
        )
        return response

    async def list_contexts(
        self,
        scope: str,
        *,
        name_prefix: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> context_service_pb2.ListContextsResponse:
        """One page of a scope's documents by name (follow next_page_token)."""
        request = context_service_pb2.ListContextsRequest(
            scope=scope, name_prefix=name_prefix, page_size=page_size, page_token=page_token
        )
        response: context_service_pb2.ListContextsResponse = await self._context.call(
            "ListContexts", request, timeout
        )
        return response

    def watch_context(
        self,
        scope: str,
        *,
        name_prefix: str = "",
        after_cursor: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[context_service_pb2.WatchContextResponse]:
        """Changes of a scope's documents as they commit (each once), from after
        `after_cursor` (empty: from now); `timeout` None watches until cancelled."""
        return self._context.watch(
            scope, name_prefix=name_prefix, after_cursor=after_cursor, timeout=timeout
        )

    async def set_global_context(
        self,
        key: str,
        value: str,
        *,
        expected_value: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Set a key of the global context map; with `expected_value` only if the
        current value is that ("": unset), else ABORTED."""
        request = context_service_pb2.SetGlobalContextRequest(key=key, value=value)
        if expected_value is not None:
            request.expected_value = expected_value
        await self._context.call("SetGlobalContext", request, timeout)

    async def get_global_context(self, key: str, *, timeout: float | None = None) -> str:
        request = context_service_pb2.GetGlobalContextRequest(key=key)
        response = await self._context.call("GetGlobalContext", request, timeout)
        return cast(str, response.value)

    async def delete_global_context(self, key: str, *, timeout: float | None = None) -> bool:
        request = context_service_pb2.DeleteGlobalContextRequest(key=key)
        response = await self._context.call("DeleteGlobalContext", request, timeout)
        return bool(response.existed)

    async def list_global_context(self, *, timeout: float | None = None) -> dict[str, str]:
        """Every key and value, fetched a page at a time (`timeout` is per page)."""

        async def page(token: str) -> context_service_pb2.ListGlobalContextResponse:
            request = context_service_pb2.ListGlobalContextRequest(page_token=token)
            response: context_service_pb2.ListGlobalContextResponse = await self._context.call(
                "ListGlobalContext", request, timeout
            )
            return response

        return dict(await collect(page, lambda r: r.entries.items()))

    async def append_memory(
        self,
        agent: str,
        entry: context_service_pb2.LogEntry,
        *,
        ttl: int = 0,
        timeout: float | None = None,
    ) -> int:
        """Append to an agent's memory log (once per entry id); its length after."""
        request = context_service_pb2.AppendMemoryRequest(agent=agent, entry=entry, ttl_seconds=ttl)
        response = await self._context.call("AppendMemory", request, timeout)
        return int(response.length)

    async def list_memory(
        self, agent: str, *, limit: int = 0, timeout: float | None = None
    ) -> list[context_service_pb2.LogEntry]:
        """An agent's memory log, newest first (the `limit` newest, when not 0), fetched
        a page at a time (`timeout` is per page)."""

        async def page(token: str) -> context_service_pb2.ListMemoryResponse:
            request = context_service_pb2.ListMemoryRequest(
                agent=agent, limit=limit, page_token=token
            )
            response: context_service_pb2.ListMemoryResponse = await self._context.call(
                "ListMemory", request, timeout
            )
            return response

        return await collect(page, lambda r: r.entries, most=limit)

    async def append_trace(
        self,
        task_id: str,
        agent: str,
        entry: context_service_pb2.LogEntry,
        *,
        ttl: int = 0,
        timeout: float | None = None,
    ) -> int:
        """Append to an agent's trace of a task (once per entry id); its length after."""
        request = context_service_pb2.AppendTraceRequest(
            task_id=task_id, agent=agent, entry=entry, ttl_seconds=ttl
        )
        response = await self._context.call("AppendTrace", request, timeout)
        return int(response.length)

    async def list_traces(
        self, task_id: str, agent: str, *, limit: int = 0, timeout: float | None = None
    ) -> list[context_service_pb2.LogEntry]:
        """An agent's trace of a task, oldest first (the `limit` oldest, when not 0),
        fetched a page at a time (`timeout` is per page)."""

        async def page(token: str) -> context_service_pb2.ListTracesResponse:
            request = context_service_pb2.ListTracesRequest(
                task_id=task_id, agent=agent, limit=limit, page_token=token
            )
            response: context_service_pb2.ListTracesResponse = await self._context.call(
                "ListTraces", request, timeout
            )
            return response

        return await collect(page, lambda r: r.entries, most=limit)
