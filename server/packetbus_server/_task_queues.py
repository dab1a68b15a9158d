"""TaskService.ListTaskQueues: the task queues, each with its tasks counted by status
and priority, paged in name order.

Queues are found from the queue index (_keys.QUEUES, read as ListTopics reads the
topic index: _name_index): of the names after the page token under the prefix, the
first `MAX_INDEXED` in name order per call (more: `index_truncated`, and the token goes
on after them); a name whose task index is gone (its tasks expired) or is not a sorted
set (not a key this server wrote) is left out. Each queue on a page is counted by one read-only
script in the queue's own hash slot (scripts/queue_counts.lua, shared with /metrics),
classifying at most `MAX_COUNTED` tasks, so a call costs commands in proportion to
the queues on its page and their tasks, not to the packets stored, and runs
unchanged on a Redis Cluster.

Authorization: the rule (permissions.RULES) is checked here, per queue: a queue the
caller holds no tasks.read on is left out, as if absent (a caller with no such grant
gets an empty list, not a refusal). A page token is "the last queue name returned",
sealed with the prefix (_page_tokens), and taken only when it names a queue under
the prefix the caller may read (_name_listing).
"""

from __future__ import annotations

import asyncio

import grpc

from packetbus.v1 import task_service_pb2 as pb

from . import _keys, _scripts, _status
from ._access import Permission, allows
from ._clock import StoreClock
from ._limits import Limits
from ._name_index import QUEUE_KEYS, existing, indexed_names
from ._name_listing import check_prefix, page_after
from ._packing import ITEM_OVERHEAD, message_size
from ._page_tokens import seal
from ._paging import DEFAULT_PAGE, MAX_PAGE
from ._replies import pairs
from ._storage_errors import storage_errors
from ._task_states import STATUSES
from ._task_store import TaskStore
from ._validation import Violation

# Names read from the queue index per call (as /metrics reads per scrape).
MAX_INDEXED = 10_000
# Queue count scripts in flight at once for one page (as ListTopics' summaries).
_CONCURRENT = 16
# Tasks classified per queue (the oldest first); the rest are `unclassified`.
MAX_COUNTED = 10_000
# Names whose task index is checked for existence per pipeline, at least.
_EXISTS_CHUNK = 500

# Counts are listed in this order of status (then priority, highest first).
_ORDER = {name: i for i, name in enumerate(STATUSES)}


def _may_read(queue: str) -> bool:
    """Whether the caller holds tasks.read on `queue` (listed only then)."""
    return allows(Permission.TASKS_READ, queue)


class TaskQueues:
    """ListTaskQueues' body; TaskService delegates here."""

    def __init__(self, store: TaskStore, limits: Limits, *, clock: StoreClock) -> None:
        self._store = store
        self._limits = limits
        self._clock = clock

    async def list_queues(
        self, request: pb.ListTaskQueuesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaskQueuesResponse:
        violations: list[Violation] = []
        size = request.page_size or DEFAULT_PAGE
        if size > MAX_PAGE:
            violations.append(Violation("page_size", "RANGE", f"must be at most {MAX_PAGE}"))
        check_prefix(violations, request.prefix, self._limits.max_topic_length)
        scope = (request.prefix,)
        after = page_after(violations, "task_queues", request.prefix, request.page_token, _may_read)
        if violations:
            await _status.abort_invalid(context, "invalid listing", violations)
        redis = self._store.redis
        async with storage_errors(context):
            indexed = await indexed_names(
                redis, _keys.QUEUES, QUEUE_KEYS, budget_seconds=self._store.retry_budget
            )
            # The prefix, the token and the caller's grant first, then the cut: so
            # the names past the first MAX_INDEXED are reached by the pages after (a
            # cut before would hide them from every page), and the token after a cut
            # names a queue the caller may read (it never carries another's name).
            matching = [
                n for n in indexed if n > after and n.startswith(request.prefix) and _may_read(n)
            ]
            names, truncated = matching[:MAX_INDEXED], len(matching) > MAX_INDEXED
            candidates = names
            response = pb.ListTaskQueuesResponse(index_truncated=truncated)
            budget, total = self._limits.reply_budget_bytes, 0
            # Existence is checked a chunk at a time, at least _EXISTS_CHUNK names,
            # so a page of 1 over thousands of gone names costs a few pipelines.
            chunk_size = max(size, _EXISTS_CHUNK)
            for start in range(0, len(candidates), chunk_size):
                chunk = candidates[start : start + chunk_size]
                keys = [_keys.task_index(q) for q in chunk]
                kept = set(
                    await self._store.retried(lambda keys=keys: existing(redis, keys, "zset"))
                )
                present = [
                    (index, queue)
                    for index, queue in enumerate(chunk, start)
                    if _keys.task_index(queue) in kept
                ]
                # Counted _CONCURRENT queues at a time (each its own script in its own
                # slot), at most the page's room ahead of what is kept.
                at = 0
                while at < len(present):
                    group = present[at : at + min(_CONCURRENT, size - len(response.queues))]
                    at += len(group)
                    summaries = await asyncio.gather(*(self._summary(q) for _, q in group))
                    for (index, _queue), summary in zip(group, summaries, strict=True):
                        if summary is None:
                            continue
                        total += message_size(summary) + ITEM_OVERHEAD
                        if response.queues and total > budget:
                            return self._page(response, scope)
                        response.queues.append(summary)
                        if len(response.queues) == size:
                            # More may remain: those after this one (a last page may
                            # be empty when none of them is still there).
                            more = index + 1 < len(candidates) or truncated
                            return self._page(response, scope) if more else response
            if truncated:
                # Names past this call's share remain: the next page goes on after
                # the last one looked at (this page may be short, even empty).
                response.next_page_token = seal("task_queues", scope, names[-1])
        return response

    @staticmethod
    def _page(response: pb.ListTaskQueuesResponse, scope: tuple[str]) -> pb.ListTaskQueuesResponse:
        response.next_page_token = seal("task_queues", scope, response.queues[-1].queue)
        return response

    async def _summary(self, queue: str) -> pb.TaskQueueSummary | None:
        """The queue's counts; None when its task index is not a sorted set (not a
        key this server wrote), so the queue is left out rather than the call failed."""

        async def attempt() -> list[object]:
            reply: list[object] = await _scripts.QUEUE_COUNTS.run(
                self._store.redis,
                [_keys.task_index(queue)],
                [_keys.queue_prefix(queue), MAX_COUNTED, self._clock.now_ms()],
            )
            return reply

        reply = await self._store.retried(attempt)
        tasks = int(str(reply[0]))
        if tasks < 0:
            return None
        counted: list[tuple[str, int, int]] = []
        for key, n in pairs(reply[1:]).items():
            name, _, priority = key.partition(" ")
            counted.append((name, int(priority or 0), n))
        counted.sort(key=lambda c: (_ORDER.get(c[0], len(_ORDER)), -c[1]))
        summary = pb.TaskQueueSummary(queue=queue, tasks=tasks)
        for name, rank, n in counted:
            summary.counts.add(status=STATUSES.get(name, 0), priority=rank, tasks=n)
        summary.unclassified = max(0, tasks - sum(c.tasks for c in summary.counts))
        return summary
