"""ListTopics: the topics the server knows, in name order, a page at a time.

Where the names come from: the topic index (_keys.TOPICS, kept whole by the rule in
_name_index, backfilled from the keyspace once when it is not known whole). What
each topic says: one read-only script per topic (scripts/topic_summary.lua: its
log's length and ends, its retention limits, its groups and carcel counted), every
key under the topic's hash tag, so it runs on a Redis Cluster as on one Redis; the
scripts of one page run a few at a time, concurrently.

Who sees what: a topic is listed only when the caller holds topics.subscribe on it
(the same permission that reads its packets and its retention); the others are left
out, the call is not refused. A page token is the last name a page returned, sealed
for the prefix asked (_page_tokens), and taken only when it names a topic under the
prefix the caller may read (_name_listing).

Bounds: a page holds at most `page_size` topics and ends at the reply budget
(Limits.reply_budget_bytes); it runs at most `_SCRIPTS_PER_TOPIC` x page_size
scripts (names whose keys are all gone, left in the index until it expires, are
skipped at one script each), then ends early with a token. Reading the names costs
one ZSCAN pass over the index: a page's cost follows the topics indexed (a few bytes
each), never the packets stored.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packetbus.v1 import topic_service_pb2 as pb

from . import _keys, _scripts
from ._name_index import TOPIC_KEYS, indexed_names
from ._name_listing import check_prefix, page_after
from ._packing import ITEM_OVERHEAD, message_size
from ._page_tokens import seal
from ._paging import DEFAULT_PAGE, MAX_PAGE
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient
from ._topic_store import Retention
from ._validation import Violation

LISTING = "topics"
_CONCURRENT = 16  # summary scripts in flight at once for one page
_SCRIPTS_PER_TOPIC = 4  # scripts one page may run, per topic it may hold
# The characters of a topic name (_validation's rule): a name read from the index
# that is not one (only a foreign key's tag could be) is never listed.
_TOPIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*\Z")


@dataclass(frozen=True, slots=True)
class TopicSummary:
    """One topic as a page lists it: `packets` in its log, the cursors of the log's
    ends ("" when empty), its retention limits, consumer groups and carcel entries."""

    name: str
    packets: int
    first_cursor: str
    last_cursor: str
    retention: Retention
    consumer_groups: int
    carcel_entries: int


@dataclass(frozen=True, slots=True)
class TopicPage:
    """A page asked for: at most `size` topics starting with `prefix`, after `after`."""

    size: int
    prefix: str
    after: str


def page_request(
    violations: list[Violation],
    request: pb.ListTopicsRequest,
    max_topic_length: int,
    may_read: Callable[[str], bool],
) -> TopicPage:
    """The page `request` asks for, for a caller who `may_read` the topics it
    lists; what is wrong with it goes to `violations`."""
    check_prefix(violations, request.prefix, max_topic_length)
    if request.page_size > MAX_PAGE:
        violations.append(Violation("page_size", "RANGE", f"must be at most {MAX_PAGE}"))
    after = page_after(violations, LISTING, request.prefix, request.page_token, may_read)
    return TopicPage(request.page_size or DEFAULT_PAGE, request.prefix, after)


def next_token(prefix: str, last_name: str) -> str:
    """The page token of the page after the one ending with topic `last_name` ("":
    none)."""
    return seal(LISTING, (prefix,), last_name)


class TopicLister:
    """Reads the pages of ListTopics from the store (see the module docstring)."""

    def __init__(self, redis: RedisClient, *, retry_budget: float) -> None:
        self._redis = redis
        self._retry_budget = retry_budget

    async def names(self, page: TopicPage) -> list[str]:
        """Every indexed topic name after `page.after` that starts with `page.prefix`,
        in name order."""
        names = await indexed_names(
            self._redis, _keys.TOPICS, TOPIC_KEYS, budget_seconds=self._retry_budget
        )
        return [
            n
            for n in names
            if n > page.after and n.startswith(page.prefix) and _TOPIC.match(n) is not None
        ]

    async def summary(self, topic: str) -> TopicSummary | None:
        """What `topic` holds now; None when none of its keys is left."""

        async def attempt() -> list[Any]:
            keys = [
                _keys.topic_log(topic),
                _keys.topic_groups(topic),
                _keys.carcel(topic),
                _keys.topic_horizon(topic),
            ]
            reply: list[Any] = await _scripts.TOPIC_SUMMARY.run(self._redis, keys, [])
            return reply

        reply = await with_retries(attempt, budget_seconds=self._retry_budget)
        if not int(reply[0]):
            return None
        values = [text(v) if isinstance(v, bytes | str) else str(v) for v in reply[1:]]
        length, first, last, ma, mp, mb, wq, groups, carcel = values
        return TopicSummary(
            name=topic,
            packets=int(length),
            first_cursor=first,
            last_cursor=last,
            retention=Retention(int(ma or 0), int(mp or 0), int(mb or 0), wq == "1"),
            consumer_groups=int(groups),
            carcel_entries=int(carcel),
        )

    async def page(
        self,
        page: TopicPage,
        allowed: Callable[[str], bool],
        to_message: Callable[[TopicSummary], pb.TopicSummary],
        budget: int,
    ) -> tuple[list[pb.TopicSummary], str]:
        """Up to `page.size` topics the caller is `allowed` to see, as messages, within
        `budget` bytes (at least one), and the next page's token ("" when none)."""
        names = [n for n in await self.names(page) if allowed(n)]
        out: list[pb.TopicSummary] = []
        total = 0
        scripts_left = _SCRIPTS_PER_TOPIC * page.size
        position = 0
        while position < len(names) and scripts_left > 0:
            batch = names[position : position + min(_CONCURRENT, scripts_left)]
            summaries = await asyncio.gather(*(self.summary(n) for n in batch))
            scripts_left -= len(batch)
            for name, summary in zip(batch, summaries, strict=True):
                if summary is not None:
                    message = to_message(summary)
                    total += message_size(message) + ITEM_OVERHEAD
                    if out and total > budget:
                        return out, next_token(page.prefix, out[-1].name)
                    out.append(message)
                position += 1
                if len(out) == page.size:
                    more = position < len(names)
                    return out, next_token(page.prefix, name) if more else ""
        if position < len(names):
            # Out of scripts for this page: the next one goes on after the last name read.
            return out, next_token(page.prefix, names[position - 1])
        return out, ""
