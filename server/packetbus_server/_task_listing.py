"""TaskService listings: a queue's tasks (ListTasks) and a task's results
(ListTaskResults), paged by the reply budget with sealed page tokens."""

from __future__ import annotations

import re

import grpc

from packetbus.v1 import task_service_pb2 as pb

from . import _status
from ._clock import StoreClock
from ._limits import Limits
from ._packing import ITEM_OVERHEAD, message_size
from ._page_tokens import seal, unseal
from ._paging import offset_request, page_by_offset
from ._storage_errors import storage_errors
from ._task_requests import check_queue, check_task_ref
from ._task_settling import TaskSettler
from ._task_states import task_state
from ._task_store import TaskStore
from ._validation import Violation

_LIST_LIMIT = 10_000
# Tasks read from the store at a time while listing.
_TASK_CHUNK = 100


class TaskListing:
    """The listing RPCs' bodies; TaskService.ListTasks and ListTaskResults delegate here."""

    def __init__(
        self, store: TaskStore, settler: TaskSettler, limits: Limits, *, clock: StoreClock
    ) -> None:
        self._store = store
        self._settler = settler
        self._limits = limits
        self._clock = clock

    async def list_tasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        violations: list[Violation] = []
        check_queue(violations, request.queue, self._limits)
        scope = (request.queue, request.status)
        after = _task_token(violations, unseal(violations, "tasks", scope, request.page_token))
        if violations:
            await _status.abort_invalid(context, "invalid listing", violations)
        # A page ends at the reply budget (each task carries its packet), or after
        # _LIST_LIMIT tasks looked at (a rare status can be far apart).
        states: list[pb.TaskState] = []
        budget, total, looked = self._limits.reply_budget_bytes, 0, 0
        async with storage_errors(context):
            await self._settler.expire_before_read(request.queue)
            while looked < _LIST_LIMIT:
                rows = await self._store.task_page(request.queue, after, _TASK_CHUNK)
                if not rows:
                    return pb.ListTasksResponse(tasks=states)
                looked += len(rows)
                records = await self._store.get_many(request.queue, [i for _, i in rows])
                now = self._clock.now_ms()
                for row, record in zip(rows, records, strict=True):
                    state = task_state(request.queue, record, now) if record else None
                    if state is not None and request.status in (0, state.status):
                        total += message_size(state) + ITEM_OVERHEAD
                        if states and total > budget:
                            return pb.ListTasksResponse(
                                tasks=states,
                                next_page_token=seal("tasks", scope, _task_token_of(after)),
                            )
                        states.append(state)
                    after = row
        return pb.ListTasksResponse(
            tasks=states, next_page_token=seal("tasks", scope, _task_token_of(after))
        )

    async def list_results(
        self, request: pb.ListTaskResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaskResultsResponse:
        violations: list[Violation] = []
        scope = (request.queue, request.task_id)
        start = offset_request(
            violations, unseal(violations, "task_results", scope, request.page_token)
        )
        if violations:
            await _status.abort_invalid(context, "invalid listing", violations)
        await check_task_ref(context, request.queue, request.task_id, self._limits)

        async def read(offset: int, count: int) -> tuple[list[tuple[int, bytes]], int]:
            raw = await self._store.results(request.queue, request.task_id, offset, count)
            return list(enumerate(raw, offset)), offset + len(raw)

        async with storage_errors(context):
            found, token = await page_by_offset(
                read, start, len, self._limits.reply_budget_bytes, chunk=20
            )
        return pb.ListTaskResultsResponse(
            results=[pb.TaskResult.FromString(r) for r in found],
            next_page_token=seal("task_results", scope, token),
        )


# "<index score>:<task id>": scores are exact doubles (below 2^53, 16 digits; see
# lib/order.lua), ASCII digits only.
_TASK_TOKEN = re.compile(r"([0-9]{1,16}):(.+)\Z", re.DOTALL)


def _task_token(violations: list[Violation], token: str) -> tuple[int, str] | None:
    """The last task of the previous page, from its token "<index score>:<task id>"."""
    if not token:
        return None
    match = _TASK_TOKEN.match(token)
    if match is None:
        violations.append(
            Violation("page_token", "PAGE_TOKEN", "is not a token from a previous response")
        )
        return None
    return int(match[1]), match[2]


def _task_token_of(last: tuple[int, str] | None) -> str:
    """The token of a page that ends after task `last` (index score, task id)."""
    return f"{last[0]}:{last[1]}" if last is not None else ""
