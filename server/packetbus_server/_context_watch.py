"""The WatchContext stream: a scope's change events from a cursor (or from now), as
batches that fit the reply budget, with a gap signal first when the cursor is older
than the oldest event kept.

An idle watcher blocks on a read shared with the other watchers of the same log
(_waits); cancellation and drain end it (_streams).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import grpc

from packetbus.v1 import context_service_pb2 as pb

from . import _status
from ._context_checks import MAX_SCOPE_LENGTH, printable
from ._context_replies import change
from ._context_store import ContextStore
from ._fields import is_stream_id
from ._limits import Limits
from ._packing import message_size, packs
from ._storage_errors import storage_errors
from ._stream_ends import stream_started
from ._validation import Violation

_WATCH_BATCH = 100
# An idle watcher reads again this often (a read shared with the other watchers of
# the same log, see _waits); cancellation and drain end it sooner (_streams).
_WATCH_BLOCK_MS = 5000


def _stream_id(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


async def watch_changes(
    store: ContextStore,
    limits: Limits,
    request: pb.WatchContextRequest,
    context: grpc.aio.ServicerContext,
) -> AsyncGenerator[pb.WatchContextResponse, None]:
    """The replies of one WatchContext call, until the call ends. Fails it
    INVALID_ARGUMENT (scope, after_cursor) or as storage_errors says."""
    violations: list[Violation] = []
    printable(violations, "scope", request.scope, MAX_SCOPE_LENGTH)
    if request.after_cursor and not is_stream_id(request.after_cursor):
        violations.append(Violation("after_cursor", "CURSOR_FORMAT", "must be <ms>-<seq>"))
    if violations:
        await _status.abort_invalid(context, "invalid context watch", violations)
    scope = request.scope
    async with storage_errors(context):
        gap = False
        if request.after_cursor:
            cursor = request.after_cursor
            oldest = await store.oldest_kept(scope)
            gap = oldest is not None and _stream_id(cursor) < _stream_id(oldest)
        else:
            cursor = await store.last_event(scope)
    await stream_started(context, None if request.after_cursor else cursor)
    if gap:
        yield pb.WatchContextResponse(gap=True)
    while True:
        async with storage_errors(context):
            events = await store.events_after(
                scope, cursor, count=_WATCH_BATCH, block_ms=_WATCH_BLOCK_MS
            )
        if not events:
            continue
        cursor = events[-1].cursor
        changes = [change(scope, e) for e in events if e.name.startswith(request.name_prefix)]
        for part in packs(changes, message_size, limits.reply_budget_bytes):
            yield pb.WatchContextResponse(changes=part)
