"""Replies packed by bytes, not by count.

A reply holding N items of up to a packet's size each (about twice a packet's
bytes in a StoredPacket, which carries the packet and its exact signed content)
can pass any gRPC message limit at a count that looks harmless. Every reply
that carries a variable number of items is cut here at a byte budget
(`Limits.reply_budget_bytes`), well under the largest message the server sends
(`Limits.max_response_bytes`): one item larger than the budget still goes, alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from google.protobuf.message import Message

T = TypeVar("T")

# Entries read first from a log whose entries' sizes are not known yet: one, as
# it may be a packet of a megabyte; later reads take about a reply's worth
# (read_count).
FIRST_READ = 1

# What a repeated message field adds around each item: a tag (1 byte for field
# numbers up to 15, 2 up to 2047) and a length varint (up to 5 bytes).
ITEM_OVERHEAD = 7


def fit(sizes: Iterable[int], budget: int) -> int:
    """How many leading items, of these serialized sizes (bytes), fit in `budget` bytes
    with their field overhead; at least 1 when there is any item, so that an item
    larger than the budget is still sent, alone."""
    total = 0
    count = 0
    for size in sizes:
        total += size + ITEM_OVERHEAD
        if count and total > budget:
            break
        count += 1
    return count


def packs(items: Sequence[T], size: Callable[[T], int], budget: int) -> Iterator[list[T]]:
    """`items` in order, in consecutive runs whose `size`s (bytes) sum to at most
    `budget` with their field overhead; an item larger than the budget is a run of
    its own. Nothing when there are no items."""
    start = 0
    while start < len(items):
        count = fit((size(item) for item in items[start:]), budget)
        yield list(items[start : start + count])
        start += count


def read_count(last: Sequence[T], size: Callable[[T], int], budget: int, most: int) -> int:
    """How many items to read next (1..`most`) so that about `budget` bytes come in,
    judged by the items read `last` (none: `most`)."""
    if not last:
        return most
    average = sum(size(item) + ITEM_OVERHEAD for item in last) / len(last)
    return max(1, min(most, int(budget // average)))


def message_size(item: Message) -> int:
    """A message's serialized size (bytes), computed without serializing it."""
    return item.ByteSize()


def stored_size(payload_bytes: int, content_length: int) -> int:
    """About how large a StoredPacket (or Delivery) of a packet is (bytes): the packet
    with its chain, its content again (the exact signed bytes), and room for the
    receipt, ids and custody head."""
    return payload_bytes + content_length + 512
