"""Paging through per-topic streams one topic after another (carcel entries, held
packets): a page token is "<topic> <last entry id returned>"."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ._validation import STREAM_ID, Violation

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class Entry(Protocol):
    @property
    def id(self) -> str: ...


E = TypeVar("E", bound=Entry)


@dataclass(frozen=True, slots=True)
class Page:
    size: int
    topic_from: str
    after: str


def page_request(violations: list[Violation], page_size: int, page_token: str) -> Page:
    """The page asked for; what is wrong with it goes to `violations`."""
    size = page_size or DEFAULT_PAGE
    if size > MAX_PAGE:
        violations.append(Violation("page_size", "RANGE", f"must be at most {MAX_PAGE}"))
    topic_from, _, after = page_token.partition(" ")
    if page_token and not STREAM_ID.match(after):
        violations.append(
            Violation("page_token", "PAGE_TOKEN", "is not a token from a previous response")
        )
    return Page(size, topic_from, after)


async def page_across(
    topics: Sequence[str],
    page: Page,
    fetch: Callable[[str, str | None, int], Awaitable[Sequence[E]]],
    keep: Callable[[E], bool],
) -> tuple[list[E], str]:
    """Up to `page.size` entries that `keep` accepts, reading each topic's stream with
    `fetch(topic, after id or None, count)` in topic order; and the next page's token
    ("" when there is none)."""
    if page.topic_from:
        topics = [t for t in topics if t >= page.topic_from]
    out: list[E] = []
    for topic in topics:
        cursor = page.after if topic == page.topic_from and page.after else None
        while len(out) < page.size:
            entries = await fetch(topic, cursor, page.size)
            if not entries:
                break
            for entry in entries:
                cursor = entry.id
                if keep(entry):
                    out.append(entry)
                    if len(out) == page.size:
                        return out, f"{topic} {entry.id}"
    return out, ""
