"""Cursors of a topic's log (Redis stream ids, ``<millis>-<sequence>``): their time,
their order, the newest of several.

Apart from the store because nearly every reader of a log (subscriptions, consumer
groups, carcel, custody export, tasks) compares or dates cursors without touching
the store itself.
"""

from __future__ import annotations


def cursor_millis(cursor: str) -> int:
    return int(cursor.split("-", 1)[0])


def cursor_order(cursor: str) -> tuple[int, int]:
    """A cursor as something to compare: stream ids order by both their parts."""
    millis, _, sequence = cursor.partition("-")
    return int(millis), int(sequence or 0)


def newest_cursor(*cursors: str) -> str:
    """The newest of `cursors`, ignoring empty ones ("" when all are)."""
    present = [c for c in cursors if c]
    return max(present, key=cursor_order) if present else ""
