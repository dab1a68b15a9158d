"""Task queue routes: the queues with their counts, a queue's tasks, one task's claims,
results and failures, and a queue's task events as they happen.

Messages are in protobuf's JSON mapping (`shapes.as_json`: camelCase keys, enums by
name). A queue name may hold ``/`` (as topics do): it is the path between
``/api/queues/`` and the route's last part.

- ``GET /api/queues?prefix=&limit=`` -> ``{"queues": [Queue], "truncated": bool}``
  (ListTaskQueues, name order; at most `limit`, 1-1000).
  A Queue is TaskQueueSummary (``queue``, ``tasks``, ``counts``: [{``status``,
  ``priority``, ``tasks``}], ``unclassified``) plus ``byStatus``: {status name:
  count} over every priority (each of the four statuses present, 0 when none).
  Only the queues the caller holds tasks.read on. ``GET /api/queues/events``: the
  same, live (`live`: an SSE ``snapshot`` event whenever it changes).
- ``GET /api/queues/{queue}/tasks?status=&pageToken=`` -> ``{"tasks": [TaskState
  without its packet], "nextPageToken": str}`` (one ListTasks page, first posted
  first; ``status``: queued, claimed, completed, carceled or empty for all;
  ``nextPageToken`` "" on the last page).
- ``GET /api/queues/{queue}/tasks/{task_id}`` -> ``{"task": TaskState (its packet
  with its chain), "results": [TaskResult] (each completion and failure reported,
  oldest first), "history": [Hop]}``. A Hop is one entry
  of the task packet's chain of custody as its record says (not verified here:
  the custody route verifies): ``{"sequence", "action" (claimed, completed,
  failed, released, carceled, ...), "actor", "counterpart" ("queue:<q>
  worker:<w>"), "reason", "principal", "occurredAt"}``: its claims are the
  ``claimed`` hops.
- ``GET /api/queues/{queue}/events``: the queue's task status changes (WatchTasks)
  as Server-Sent Events, relayed as `events.relay` relays agent events: ``id:
  <cursor>``, ``event: task``, ``data: TaskEvent`` (``taskId``, ``oldStatus``,
  ``newStatus``, ``actor``, ``fencingToken``, ``at``, ``reason``, ``cursor``); it
  resumes after ``Last-Event-ID`` (or ``after``); from now, its first message is
  ``event: start`` with the cursor it starts after. Events no longer kept end it
  with an ``error`` event, code ``DATA_LOSS``.

Bad input (an unknown status, a bad queue name or page token) is 400
``INVALID_ARGUMENT``; a refused call 401/403 as `errors` maps it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import DecodeError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from packetbus import Client
from packetbus.v1 import custody_pb2
from packetbus.v1 import task_service_pb2 as pb

from .errors import ApiError
from .events import relay
from .live import json_route, live_route
from .shapes import as_json, first, limit

STATUSES = ("queued", "claimed", "completed", "carceled")


def _status(request: Request) -> pb.TaskStatus.ValueType:
    raw = request.query_params.get("status", "")
    if raw == "":
        return pb.TASK_STATUS_UNSPECIFIED
    if raw not in STATUSES:
        raise ApiError(
            400, "INVALID_ARGUMENT", f"status must be one of {list(STATUSES)} or empty, not {raw!r}"
        )
    return pb.TaskStatus.Value(f"TASK_STATUS_{raw.upper()}")


def queue_view(summary: pb.TaskQueueSummary) -> dict[str, Any]:
    """A TaskQueueSummary as JSON, with ``byStatus`` (every status: its tasks over
    every priority)."""
    view = as_json(summary)
    by_status = {f"TASK_STATUS_{s.upper()}": 0 for s in STATUSES}
    for count in summary.counts:
        name = pb.TaskStatus.Name(count.status)
        by_status[name] = by_status.get(name, 0) + count.tasks
    view["byStatus"] = by_status
    return view


async def queues(request: Request, client: Client) -> dict[str, Any]:
    most = limit(request)
    prefix = request.query_params.get("prefix", "")
    found, truncated = await first(
        client.list_task_queues(prefix, page_size=min(most + 1, 1000), timeout=10), most
    )
    return {"queues": [queue_view(summary) for summary in found], "truncated": truncated}


async def tasks(request: Request, client: Client) -> Response:
    queue = client.task_queue(request.path_params["queue"])
    page = await queue.tasks_page(
        _status(request), page_token=request.query_params.get("pageToken", ""), timeout=10
    )
    listed = []
    for state in page.tasks:
        # The packet (and its chain) is the task's own view: a page stays small.
        state.ClearField("packet")
        listed.append(as_json(state))
    return JSONResponse({"tasks": listed, "nextPageToken": page.next_page_token})


def _hop(entry: custody_pb2.CustodyEntry) -> dict[str, Any] | None:
    try:
        record = custody_pb2.CustodyRecord.FromString(entry.record)
    except DecodeError:
        return None
    return {
        "sequence": record.sequence,
        "action": record.action,
        "actor": record.actor,
        "counterpart": record.counterpart,
        "reason": record.reason,
        "principal": record.principal,
        "occurredAt": record.occurred_at.ToJsonString() if record.HasField("occurred_at") else "",
    }


async def task(request: Request, client: Client) -> Response:
    queue = client.task_queue(request.path_params["queue"])
    task_id = request.path_params["task_id"]
    state = await queue.get(task_id, timeout=10)
    results = await queue.results(task_id, timeout=10)
    history = [h for h in map(_hop, state.packet.packet.chain_of_custody) if h is not None]
    return JSONResponse(
        {
            "task": as_json(state),
            # At most max_attempts failures and a completion: a short list.
            "results": [as_json(r) for r in results],
            "history": history,
        }
    )


async def task_events(request: Request, client: Client) -> Response:
    queue = client.task_queue(request.path_params["queue"])

    def open_watch(after: str, started: Callable[[str], None]) -> AsyncIterator[pb.TaskEvent]:
        return queue.watch(after_cursor=after, started=None if after else started)

    return await relay(request, open_watch, "task")


ROUTES = (
    ("/api/queues", ("GET",), json_route(queues)),
    ("/api/queues/events", ("GET",), live_route(queues)),
    ("/api/queues/{queue:path}/tasks", ("GET",), tasks),
    ("/api/queues/{queue:path}/tasks/{task_id:path}", ("GET",), task),
    ("/api/queues/{queue:path}/events", ("GET",), task_events),
)
