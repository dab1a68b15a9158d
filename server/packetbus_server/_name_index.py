"""The topic and task queue indexes (_keys.TOPICS, _keys.QUEUES): the rule that keeps
one whole, shared by its two readers, /metrics (_observability/store_indexes, a
blocking client in the scrape's thread) and ListTopics (_topic_listing, the
server's asyncio client). Neither walks the keyspace on each read: a read costs
in proportion to the names indexed, not to the packets stored (one key per packet:
pb:loc:{<tid>}; issue 15).

The rule: an index is trusted only while it holds the member _keys.INDEX_COMPLETE.
The server notes a topic in TOPICS when it dispatches to it or creates a consumer
group on it (and for governance writes), and a queue in QUEUES when it posts a task
to it (PacketStore.note_topics / note_queues: a pipeline after the write's script).
What no note covers - an index that expired (2 x the packet retention after its last
note; the member goes with it), a store an older server version wrote, a store
restored from an older dump - has no such member: the first reader that finds it
missing walks the keyspace once (`backfill_scans`: one SCAN per (suffix, type) of
`TOPIC_KEYS` or `QUEUE_KEYS`; on a Redis Cluster, every primary), adds every name it
found (ZADD NX, score 0: outside every time range the topic export reads) and the
member last, and later reads use the index alone. Left uncovered: a server of a
version before this one that creates a queue or group after the backfill, on a
topic or queue not noted otherwise (until the index expires).

Both readers backfill from the same `TOPIC_KEYS`: the member says the index is whole
for every reader, so the scan covers what each of them lists (a topic's log for
ListTopics, its groups and carcel for /metrics).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from . import _keys
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient

# (key suffix, Redis type) of the keys a name in the index stands for.
TOPIC_KEYS = ((":log", "stream"), (":groups", "hash"), (":carcel", "stream"))
QUEUE_KEYS = ((":tasks", "zset"),)

BACKFILL_CHUNK = 1000  # names per ZADD of a backfill
_SCAN_COUNT = 1000


def scan_pattern(suffix: str) -> str:
    """The SCAN MATCH pattern of the keys pb:{<name>}<suffix>."""
    return f"{_keys.PREFIX}:{{*}}{suffix}"


def tag(key: bytes | str, suffix: str) -> str:
    """The hash tag of a key pb:{<tag>}<suffix> (the topic or queue name)."""
    return text(key)[len(_keys.PREFIX) + 2 : -len(suffix) - 1]


def is_complete(members: Sequence[str]) -> bool:
    """Whether an index's first members (ZRANGE from rank 0) say it is whole:
    INDEX_COMPLETE's score is -inf, so when present it comes first."""
    return members[:1] == [_keys.INDEX_COMPLETE]


def without_marker(members: Iterable[str]) -> list[str]:
    """The names among an index's members (INDEX_COMPLETE left out)."""
    return [m for m in members if m != _keys.INDEX_COMPLETE]


def backfill_chunks(names: Iterable[str]) -> Iterator[dict[str, float]]:
    """The ZADD NX mappings (score 0) that add `names` to an index, in name order,
    at most BACKFILL_CHUNK names each; then the INDEX_COMPLETE member (score -inf)
    alone, last: it says every name found before it is in."""
    ordered = sorted(set(names))
    for start in range(0, len(ordered), BACKFILL_CHUNK):
        yield dict.fromkeys(ordered[start : start + BACKFILL_CHUNK], 0)
    yield {_keys.INDEX_COMPLETE: float("-inf")}


async def indexed_names(
    redis: RedisClient, index: str, kinds: Sequence[tuple[str, str]], *, budget_seconds: float
) -> list[str]:
    """Every name in `index` (TOPICS or QUEUES), in name order; backfilled first
    (from one SCAN per `kinds` (suffix, type)) when it is not known whole. Read with
    ZSCAN, a slice at a time, so a large index does not block the store. Raises
    StoreUnavailableError when the store cannot be read within `budget_seconds`."""

    async def first() -> list[str]:
        found: Any = await redis.zrange(index, 0, 0)
        return [text(m) for m in found]

    if not is_complete(await with_retries(first, budget_seconds=budget_seconds)):
        await with_retries(lambda: _backfill(redis, index, kinds), budget_seconds=budget_seconds)

    async def read() -> list[str]:
        names: set[str] = set()  # ZSCAN may return a member twice
        async for member, _score in redis.zscan_iter(index, count=_SCAN_COUNT):
            names.add(text(member))
        return sorted(without_marker(names))

    names: list[str] = await with_retries(read, budget_seconds=budget_seconds)
    return names


async def _backfill(redis: RedisClient, index: str, kinds: Sequence[tuple[str, str]]) -> None:
    # Idempotent (ZADD NX), so a retry after a lost reply starts it again safely.
    names: set[str] = set()
    for suffix, kind in kinds:
        async for key in redis.scan_iter(match=scan_pattern(suffix), count=_SCAN_COUNT, _type=kind):
            names.add(tag(key, suffix))
    for mapping in backfill_chunks(names):
        await redis.zadd(index, mapping, nx=True)


async def existing(redis: RedisClient, keys: Sequence[str]) -> list[str]:
    """Those of `keys` that exist, sorted: one pipeline (on a cluster, one per node).
    Raises redis.RedisError as the pipeline does (callers retry it)."""
    if not keys:
        return []
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return sorted(k for k, n in zip(keys, await pipe.execute(), strict=True) if n)
