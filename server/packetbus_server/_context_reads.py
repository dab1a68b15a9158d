"""Document reads for ContextService: a document's bytes streamed in chunks
(GetContext) and the documents of a scope listed a page at a time (ListContexts),
each page ending at the reply budget."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import grpc

from packetbus.v1 import context_service_pb2 as pb

from . import _status
from ._context_checks import MAX_NAME_LENGTH, MAX_SCOPE_LENGTH, printable, where
from ._context_replies import document
from ._context_store import ContextStore
from ._fields import utf8_length
from ._limits import Limits
from ._packing import fit, message_size
from ._page_tokens import seal, unseal
from ._storage_errors import storage_errors
from ._validation import Violation

_DEFAULT_PAGE = 100


async def read_document(
    store: ContextStore,
    limits: Limits,
    request: pb.GetContextRequest,
    context: grpc.aio.ServicerContext,
) -> AsyncGenerator[pb.GetContextResponse, None]:
    """The replies of one GetContext call: the document, then its bytes in chunks of
    `request.chunk_bytes` (0: `limits.max_context_chunk_bytes`). Fails the call
    INVALID_ARGUMENT, NOT_FOUND, or ABORTED (another version asked for, or the version
    replaced while being read)."""
    violations: list[Violation] = []
    where(violations, "", request.scope, request.name)
    max_chunk = limits.max_context_chunk_bytes
    if not 0 <= request.chunk_bytes <= max_chunk:
        violations.append(Violation("chunk_bytes", "RANGE", f"must be 0..{max_chunk}"))
    if violations:
        await _status.abort_invalid(context, "invalid context read", violations)
    async with storage_errors(context):
        meta = await store.meta(request.scope, request.name)
    if meta is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no context {request.scope}/{request.name}")
    assert meta is not None
    if request.HasField("version") and request.version != meta.version:
        await context.abort(
            grpc.StatusCode.ABORTED,
            f"context {request.scope}/{request.name} is at version {meta.version}",
        )
    yield pb.GetContextResponse(document=document(request.scope, meta))
    step = request.chunk_bytes or max_chunk
    offset = 0
    while offset < meta.size:
        length = min(step, meta.size - offset)
        async with storage_errors(context):
            data = await store.read(request.scope, meta.body_id, offset, length)
        if data is None or len(data) != length:
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"version {meta.version} was replaced while being read; read again",
            )
        assert data is not None
        yield pb.GetContextResponse(chunk=data)
        offset += length


async def list_documents(
    store: ContextStore,
    limits: Limits,
    request: pb.ListContextsRequest,
    context: grpc.aio.ServicerContext,
) -> pb.ListContextsResponse:
    """One page of a ListContexts call: up to `request.page_size` documents (0: 100),
    fewer when the reply budget is reached; a next page token when there may be more.
    Fails the call INVALID_ARGUMENT (scope, name_prefix, page_size, page_token)."""
    violations: list[Violation] = []
    printable(violations, "scope", request.scope, MAX_SCOPE_LENGTH)
    if utf8_length(request.name_prefix) > MAX_NAME_LENGTH:
        violations.append(Violation("name_prefix", "LENGTH", "longer than any name"))
    if not 0 <= request.page_size <= limits.max_context_page:
        violations.append(Violation("page_size", "RANGE", f"must be 0..{limits.max_context_page}"))
    scope = (request.scope, request.name_prefix)
    token = unseal(violations, "contexts", scope, request.page_token)
    if violations:
        await _status.abort_invalid(context, "invalid context listing", violations)
    count = request.page_size or _DEFAULT_PAGE
    async with storage_errors(context):
        found, last = await store.documents(request.scope, request.name_prefix, token, count)
    documents = [document(request.scope, m) for m in found]
    # Long names and commit records: a full page can pass the reply budget.
    fits = fit(map(message_size, documents), limits.reply_budget_bytes)
    # More to list: the store had a full page, or the budget cut this one short.
    more = len(found) == count or fits < len(documents)
    if fits < len(documents):
        documents, last = documents[:fits], documents[fits - 1].name
    return pb.ListContextsResponse(
        documents=documents, next_page_token=seal("contexts", scope, last) if more else ""
    )
