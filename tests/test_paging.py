"""Paging across per-topic streams (carcel entries, held packets): pure logic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from packetbus_server._paging import page_across, page_request
from packetbus_server._validation import Violation


@dataclass(frozen=True)
class Row:
    id: str
    keep: bool = True
    size: int = 1


def _one(row: Row) -> int:
    return row.size


_ANY = 1 << 30


STREAMS = {
    "a": [Row("1-0"), Row("2-0", keep=False), Row("3-0")],
    "b": [Row("1-0"), Row("2-0")],
    "c": [],
    "d": [Row("5-0", keep=False), Row("6-0")],
}


async def fetch(topic: str, after: str | None, count: int) -> Sequence[Row]:
    rows = [r for r in STREAMS[topic] if after is None or r.id > after]
    return rows[:count]


async def test_pages_walk_every_topic_in_order_skipping_what_is_not_kept() -> None:
    token, seen = "", []
    while True:
        violations: list[Violation] = []
        page = page_request(violations, 2, token)
        assert violations == []
        rows, token = await page_across(sorted(STREAMS), page, fetch, lambda r: r.keep, _one, _ANY)
        seen.append([r.id for r in rows])
        if not token:
            break
    assert seen == [["1-0", "3-0"], ["1-0", "2-0"], ["6-0"]]


async def test_a_page_ends_at_its_size_with_a_token_naming_topic_and_entry() -> None:
    page = page_request([], 3, "")
    rows, token = await page_across(sorted(STREAMS), page, fetch, lambda r: r.keep, _one, _ANY)
    assert ([r.id for r in rows], token) == (["1-0", "3-0", "1-0"], "b 1-0")
    rows, token = await page_across(
        ["a"], page_request([], 5, ""), fetch, lambda r: r.keep, _one, _ANY
    )
    assert ([r.id for r in rows], token) == (["1-0", "3-0"], "")


def test_bad_page_requests_are_violations() -> None:
    violations: list[Violation] = []
    page_request(violations, 1001, "a not-an-id")
    assert [(v.field, v.rule) for v in violations] == [
        ("page_size", "RANGE"),
        ("page_token", "PAGE_TOKEN"),
    ]
    assert page_request([], 0, "").size == 100


async def test_a_page_ends_at_its_byte_budget_and_an_oversized_entry_goes_alone() -> None:
    big = {
        "a": [Row("1-0", size=400), Row("2-0", size=400), Row("3-0", size=400)],
        "b": [Row("1-0", size=5000), Row("2-0", size=10, keep=False), Row("3-0", size=10)],
    }

    async def fetch_big(topic: str, after: str | None, count: int) -> Sequence[Row]:
        return [r for r in big[topic] if after is None or r.id > after][:count]

    token, seen = "", []
    while True:
        page = page_request([], 100, token)
        rows, token = await page_across(sorted(big), page, fetch_big, lambda r: r.keep, _one, 1000)
        seen.append([r.size for r in rows])
        if not token:
            break
    # 400 + 400 fit in 1000 bytes with their field overhead, a third does not; the
    # 5000-byte entry is over the budget, so it goes alone, and the kept 10 follows.
    assert seen == [[400, 400], [400], [5000], [10]]
