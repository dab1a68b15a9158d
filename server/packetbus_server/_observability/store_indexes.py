"""How a /metrics scrape finds the store's topics and task queues without walking the
keyspace: from the indexes the server keeps (_keys.TOPICS, _keys.QUEUES). The rule
that keeps an index whole, and the parts ListTopics reads it with too, are in
_name_index; this module is the scrape's blocking twin of its reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from .._name_index import (
    QUEUE_KEYS,
    TOPIC_KEYS,
    WRITE_REFUSED,
    backfill_chunks,
    is_complete,
    members,
    of_kind,
    scan_pattern,
    scanned_name,
    tag,
    without_marker,
)

Store = redis.Redis | RedisCluster
log = logging.getLogger(__name__)

__all__ = ["QUEUE_KEYS", "TOPIC_KEYS", "existing", "indexed_names", "tag"]


def indexed_names(
    r: Store, index: str, kinds: Sequence[tuple[str, str]], most: int
) -> tuple[list[str], bool]:
    """Up to `most` names in `index` (TOPICS or QUEUES), oldest noted first, and
    whether more were left unread. When the index is not known whole (no
    INDEX_COMPLETE), it is backfilled first from one SCAN per `kinds` (suffix, type)
    over the keyspace. Raises redis.RedisError when the store cannot be read."""
    found: Any = r.zrange(index, 0, most + 1)
    first = members(found)
    if is_complete(first):
        names = without_marker(first)
        return names[:most], len(names) > most
    scanned = _backfill(r, index, kinds)
    found = r.zrange(index, 0, most + 1)
    names = without_marker(members(found))
    # Those the store would not let the backfill write, after what the index holds.
    names += sorted(scanned.difference(names))
    return names[:most], len(names) > most


def _backfill(r: Store, index: str, kinds: Sequence[tuple[str, str]]) -> set[str]:
    """The names one SCAN per `kinds` finds, written to `index` as _name_index's
    backfill writes them: best effort, a store refusing writes still answers."""
    names: set[str] = set()
    for suffix, kind in kinds:
        for key in r.scan_iter(match=scan_pattern(suffix), count=1000, _type=kind):
            name = scanned_name(key, suffix)
            if name is not None:
                names.add(name)
    try:
        for mapping in backfill_chunks(names):
            r.zadd(index, mapping, nx=True)
    except WRITE_REFUSED as exc:
        log.info("index %s not backfilled (read from the scan alone): %s", index, exc)
    return names


def existing(r: Store, keys: Sequence[str], kind: str) -> list[str]:
    """Those of `keys` that exist as Redis type `kind` ("hash", "zset", "stream"),
    sorted: one pipeline of TYPE (on a cluster, one per node). A key of another type
    is not one this server wrote (a foreign program's, a restore gone wrong): left
    out, so it cannot fail the scrape with WRONGTYPE."""
    if not keys:
        return []
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    return of_kind(keys, pipe.execute(), kind)
