"""Listings the server answers a page at a time: a reply ends at the server's byte
budget (GetServerInfo's limits.max_response_bytes bounds every reply) and says where
the next page starts in `next_page_token`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol, TypeVar


class _Paged(Protocol):
    @property
    def next_page_token(self) -> str: ...


P = TypeVar("P", bound=_Paged)
T = TypeVar("T")


async def collect(
    fetch: Callable[[str], Awaitable[P]],
    take: Callable[[P], Iterable[T]],
    *,
    most: int = 0,
) -> list[T]:
    """Every item of a listing: `fetch(page_token)` each page, from "" until a page
    comes without a next token (or `most` items are in, when not 0), `take`ing its
    items."""
    out: list[T] = []
    token = ""
    while True:
        page = await fetch(token)
        out.extend(take(page))
        token = page.next_page_token
        if not token or (most and len(out) >= most):
            return out[:most] if most else out


async def each(
    fetch: Callable[[str], Awaitable[P]], take: Callable[[P], Iterable[T]]
) -> AsyncIterator[T]:
    """Every item of a listing as it comes: `fetch(page_token)` each page, from "" until
    a page comes without a next token, yielding what `take` finds in it (the next page
    is fetched only once those are consumed)."""
    token = ""
    while True:
        page = await fetch(token)
        for item in take(page):
            yield item
        token = page.next_page_token
        if not token:
            return
