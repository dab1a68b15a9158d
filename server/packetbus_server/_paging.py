"""Paging through per-topic streams one topic after another (carcel entries, held
packets): a page token is "<topic> <last entry id returned>"; and through
append-only lists, where a page token is the offset of the first item not returned."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ._fields import is_stream_id
from ._packing import FIRST_READ, ITEM_OVERHEAD, read_count
from ._validation import Violation

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class Entry(Protocol):
    @property
    def id(self) -> str: ...


E = TypeVar("E", bound=Entry)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page:
    size: int
    topic_from: str
    after: str


def page_request(
    violations: list[Violation], page_size: int, page_token: str, topic: str = ""
) -> Page:
    """The page asked for, of one `topic`'s entries or ("") every topic's; what is
    wrong with it goes to `violations`."""
    size = page_size or DEFAULT_PAGE
    if size > MAX_PAGE:
        violations.append(Violation("page_size", "RANGE", f"must be at most {MAX_PAGE}"))
    topic_from, _, after = page_token.partition(" ")
    # A token names the topic it stopped in: one of another topic (or none) would
    # quietly restart the listing or end it early.
    if page_token and (
        not is_stream_id(after) or not topic_from or (topic and topic_from != topic)
    ):
        violations.append(
            Violation("page_token", "PAGE_TOKEN", "is not a token from a previous response")
        )
    return Page(size, topic_from, after)


async def page_across(
    topics: Sequence[str],
    page: Page,
    fetch: Callable[[str, str | None, int], Awaitable[Sequence[E]]],
    keep: Callable[[E], bool],
    size: Callable[[E], int],
    budget: int,
) -> tuple[list[E], str]:
    """Up to `page.size` entries that `keep` accepts, and no more than fit in `budget`
    bytes as `size` (bytes) judges each (but at least one), reading each topic's
    stream with `fetch(topic, after id or None, count)` in topic order; and the next
    page's token ("" when there is none)."""
    if page.topic_from:
        topics = [t for t in topics if t >= page.topic_from]
    out: list[E] = []
    total = 0
    last = ""
    count = FIRST_READ
    for topic in topics:
        cursor = page.after if topic == page.topic_from and page.after else None
        while len(out) < page.size:
            entries = await fetch(topic, cursor, count)
            if not entries:
                break
            # Large entries are read a few at a time: about what one page holds.
            count = read_count(entries, size, budget, page.size)
            for entry in entries:
                cursor = entry.id
                if keep(entry):
                    total += size(entry) + ITEM_OVERHEAD
                    if out and total > budget:
                        # The next page starts after the last entry returned.
                        return out, last
                    out.append(entry)
                    last = f"{topic} {entry.id}"
                    if len(out) == page.size:
                        return out, last
    return out, ""


# An offset into an append-only list (findings, task results, conflicts): ASCII digits.
_OFFSET = re.compile(r"[0-9]{1,10}\Z")


def offset_request(violations: list[Violation], page_token: str) -> int:
    """Where a page of an append-only list starts: the token from the previous page
    (its first item not returned), or 0; what is wrong with it goes to `violations`."""
    if not page_token:
        return 0
    if not _OFFSET.match(page_token):
        violations.append(
            Violation("page_token", "PAGE_TOKEN", "is not a token from a previous response")
        )
        return 0
    return int(page_token)


async def page_by_offset(
    read: Callable[[int, int], Awaitable[tuple[Sequence[tuple[int, T]], int]]],
    start: int,
    size: Callable[[T], int],
    budget: int,
    *,
    chunk: int = 100,
) -> tuple[list[T], str]:
    """Items from offset `start` on, as many as fit in `budget` bytes as `size` (bytes)
    judges each (at least one), reading `chunk` offsets at a time with
    `read(offset, count)` -> ((offset, item) for those still there, the offset after
    the last one read); and the next page's token ("" when none are left)."""
    out: list[T] = []
    total = 0
    offset = start
    while True:
        rows, end = await read(offset, chunk)
        if end <= offset:
            return out, ""
        for index, item in rows:
            total += size(item) + ITEM_OVERHEAD
            if out and total > budget:
                return out, str(index)
            out.append(item)
        offset = end
