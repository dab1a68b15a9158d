"""ListTasks pages over the task store's documents: order, filters, page tokens.

Order: newest change first, i.e. by the task document's ``updated_at`` (the time
of its last write, set by the packetbus server) descending, then by task id
descending, so the order is total and the same on every replica.

A page token is the position of the last task of the previous page: base64url of
JSON ``{"t": <updated_at, ns since the epoch>, "i": <task id>}``. It holds no state
of the gateway (any replica continues it) and stays valid when that task changes
or goes; a task changed while a client pages moves to the front and may be missed
by that listing, as in a2a-sdk's own database store.

Memory per call is bounded: one listing page of document metadata (at most
`LISTING_PAGE`), at most `FETCH_CONCURRENCY` reads in flight, and the best
``page_size + 1`` tasks seen so far (a heap), whatever the number of tasks.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from a2a.types.a2a_pb2 import ListTasksRequest, Task
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE, MAX_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import InvalidParamsError

LISTING_PAGE = 1000  # documents per ListContexts call (the server's maximum)
FETCH_CONCURRENCY = 16  # task reads in flight while filtering


@dataclass(frozen=True, order=True)
class Position:
    """Where a task sorts: its last change (ns) and its id. Larger is newer."""

    changed_ns: int
    task_id: str

    def token(self) -> str:
        raw = json.dumps({"t": self.changed_ns, "i": self.task_id}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str) -> Position | None:
    """The position a page token names; None for "" (the first page).

    Raises InvalidParamsError for a token this gateway did not give.
    """
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position = Position(int(raw["t"]), str(raw["i"]))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidParamsError(message="page_token is not one this server gave") from exc
    return position


def page_size(params: ListTasksRequest) -> int:
    """The request's page size: a2a-sdk's default (50) when unset or 0; at most 100
    (a2a-sdk's handler refuses more before the store is asked)."""
    size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
    return min(size, MAX_LIST_TASKS_PAGE_SIZE)


def needs_contents(params: ListTasksRequest) -> bool:
    """Whether the filters need each task read (context id, state, status time)."""
    return bool(params.context_id or params.status or params.HasField("status_timestamp_after"))


def matches(task: Task, params: ListTasksRequest) -> bool:
    """Whether `task` passes the request's filters."""
    if params.context_id and task.context_id != params.context_id:
        return False
    if params.status and task.status.state != params.status:
        return False
    if params.HasField("status_timestamp_after"):
        after = params.status_timestamp_after.ToNanoseconds()
        if task.status.timestamp.ToNanoseconds() < after:
            return False
    return True


@dataclass
class Best:
    """The `keep` newest (by Position) tasks after `cursor` offered so far, and how
    many matching tasks were offered in all (the response's total_size)."""

    keep: int
    cursor: Position | None
    total: int = 0
    _heap: list[tuple[Position, Task | None]] = field(default_factory=list)

    def offer(self, position: Position, task: Task | None) -> None:
        self.total += 1
        if self.cursor is not None and not position < self.cursor:
            return
        item = (position, task)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, item)
        elif self._heap[0][0] < position:
            heapq.heapreplace(self._heap, item)

    def newest_first(self) -> list[tuple[Position, Task | None]]:
        return sorted(self._heap, key=lambda item: item[0], reverse=True)


# Reads a task by id; None when it is gone.
ReadTask = Callable[[str], Awaitable[Task | None]]
