"""Storage for shared context: chunked documents, the global map, memory logs, traces.

A document upload is staged chunk by chunk in a key of its own, named by an id
the server makes for each put, never by the client's upload id (which a retry
racing its original, or a put of another document, may send as well): SETRANGE
at the chunk's offset, so a retried chunk rewrites the same bytes. Then one script
(scripts/context_commit.lua) checks the version, makes the staged key the
document's body and appends the change event. A replaced body stays readable
for a grace period, so a reader streaming it can finish.
"""

from __future__ import annotations

from typing import Any

from . import _keys, _scripts
from ._context_records import META_FIELDS, ChangeEvent, Commit, DocMeta, event_of, meta_of
from ._replies import text
from ._retry import with_retries
from ._scripts import RedisClient
from ._waits import SharedReads


class ContextStore:
    def __init__(
        self, redis: RedisClient, *, retry_budget: float, reads: SharedReads | None = None
    ) -> None:
        self._redis = redis
        self._reads = reads or SharedReads(redis)
        self._retry_budget = retry_budget

    async def _retried(self, operation: Any) -> Any:
        return await with_retries(operation, budget_seconds=self._retry_budget)

    # -- documents ----------------------------------------------------------------

    async def meta(self, scope: str, name: str) -> DocMeta | None:
        async def attempt() -> DocMeta | None:
            values = await self._redis.hmget(_keys.context_doc(scope, name), list(META_FIELDS))
            return meta_of(name, values)

        result: DocMeta | None = await self._retried(attempt)
        return result

    async def stage(self, scope: str, body_id: str, offset: int, chunk: bytes, ttl_ms: int) -> None:
        """Write `chunk` at `offset` of the put's body (the same bytes again on a retry)."""
        key = _keys.context_body(scope, body_id)

        async def attempt() -> None:
            if offset == 0:  # also creates the body of an empty document
                await self._redis.set(key, chunk, px=ttl_ms)
                return
            pipe = self._redis.pipeline(transaction=True)
            pipe.setrange(key, offset, chunk)
            pipe.pexpire(key, ttl_ms)
            await pipe.execute()

        await self._retried(attempt)

    async def discard(self, scope: str, body_id: str) -> None:
        """Drop a put's staged body that will not be committed."""
        await self._retried(lambda: self._redis.delete(_keys.context_body(scope, body_id)))

    async def commit(
        self,
        scope: str,
        name: str,
        upload_id: str,
        *,
        body_id: str,
        upload_memos: int,
        expected_version: int,
        size: int,
        sha256_hex: str,
        content_type: str,
        author: str,
        now_ms: int,
        expires_ms: int,
        grace_ms: int,
        max_events: int,
        events_until_ms: int,
        commit: bytes,
        signature: bytes,
        key_id: str,
    ) -> Commit:
        async def attempt() -> Commit:
            reply = await _scripts.CONTEXT_COMMIT.run(
                self._redis,
                [
                    _keys.context_doc(scope, name),
                    _keys.context_body(scope, body_id),
                    _keys.context_names(scope),
                    _keys.context_events(scope),
                    _keys.context_uploads(scope, name),
                    _keys.context_upload_order(scope, name),
                ],
                [
                    _keys.context_prefix(scope),
                    name,
                    upload_id,
                    expected_version,
                    size,
                    sha256_hex,
                    content_type,
                    author,
                    now_ms,
                    expires_ms,
                    grace_ms,
                    max_events,
                    events_until_ms,
                    commit,
                    signature,
                    key_id,
                    body_id,
                    upload_memos,
                ],
            )
            status = text(reply[0])
            if status == "dup":
                meta = meta_of(name, reply[1:])
                assert meta is not None
                return Commit(status, meta.version, meta)
            return Commit(status, int(reply[1]))

        result: Commit = await self._retried(attempt)
        return result

    async def read(self, scope: str, body_id: str, offset: int, length: int) -> bytes | None:
        """Bytes [offset, offset + length) of a body; None when the body is gone."""
        key = _keys.context_body(scope, body_id)

        async def attempt() -> bytes | None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.exists(key)
            pipe.getrange(key, offset, offset + length - 1)
            exists, data = await pipe.execute()
            return bytes(data) if exists else None

        result: bytes | None = await self._retried(attempt)
        return result

    async def delete(
        self,
        scope: str,
        name: str,
        *,
        expected_version: int | None,
        author: str,
        now_ms: int,
        grace_ms: int,
        max_events: int,
        events_until_ms: int,
    ) -> tuple[str, int]:
        """("deleted" | "missing" | "stale", version)."""

        async def attempt() -> tuple[str, int]:
            reply = await _scripts.CONTEXT_DELETE.run(
                self._redis,
                [
                    _keys.context_doc(scope, name),
                    _keys.context_names(scope),
                    _keys.context_events(scope),
                ],
                [
                    _keys.context_prefix(scope),
                    name,
                    "" if expected_version is None else expected_version,
                    author,
                    now_ms,
                    grace_ms,
                    max_events,
                    events_until_ms,
                ],
            )
            return text(reply[0]), int(reply[1])

        result: tuple[str, int] = await self._retried(attempt)
        return result

    async def documents(
        self, scope: str, prefix: str, after: str, count: int
    ) -> tuple[list[DocMeta], str]:
        """Up to `count` live documents named `prefix`..., after the name `after`, by
        name; and the last name looked at ("" when there are no more)."""
        names_key = _keys.context_names(scope)
        low = f"({after}" if after else f"[{prefix}"
        # Every name with the prefix sorts below prefix + U+10FFFF's UTF-8.
        high = f"[{prefix}\U0010ffff" if prefix else "+"
        found: list[DocMeta] = []
        while len(found) < count:
            want = count - len(found)
            names: list[Any] = await self._retried(
                lambda low=low, want=want: self._redis.zrange(
                    names_key, low, high, bylex=True, offset=0, num=want
                )
            )
            if not names:
                return found, ""
            metas = await self._metas(scope, [text(n) for n in names])
            gone = [m for m, meta in zip(names, metas, strict=True) if meta is None]
            if gone:  # expired documents: their names go too
                await self._retried(lambda gone=gone: self._redis.zrem(names_key, *gone))
            found += [m for m in metas if m is not None]
            low = f"({text(names[-1])}"
        return found, found[-1].name if found else ""

    async def _metas(self, scope: str, names: list[str]) -> list[DocMeta | None]:
        async def attempt() -> list[DocMeta | None]:
            # One slot per scope: a pipeline is one round trip even on a cluster.
            pipe = self._redis.pipeline(transaction=False)
            for n in names:
                pipe.hmget(_keys.context_doc(scope, n), list(META_FIELDS))
            rows = await pipe.execute()
            return [meta_of(n, row) for n, row in zip(names, rows, strict=True)]

        result: list[DocMeta | None] = await self._retried(attempt)
        return result

    async def last_event(self, scope: str) -> str:
        """The cursor of the scope's newest change event ("0-0" when none)."""

        async def attempt() -> str:
            newest: Any = await self._redis.xrevrange(_keys.context_events(scope), count=1)
            return text(newest[0][0]) if newest else "0-0"

        result: str = await self._retried(attempt)
        return result

    async def oldest_kept(self, scope: str) -> str | None:
        """The oldest change event kept, when older ones were trimmed (None: none was).

        A cursor older than it has missed events (or, at the very edge, was the
        last trimmed one): XINFO's entries-added counts every event ever added.
        """
        key = _keys.context_events(scope)

        async def attempt() -> str | None:
            if not await self._redis.exists(key):
                return None
            info: Any = await self._redis.xinfo_stream(key)
            if int(info.get("entries-added", 0)) <= int(info.get("length", 0)):
                return None
            first = info.get("first-entry")
            return text(first[0]) if first else None

        result: str | None = await self._retried(attempt)
        return result

    async def events_after(
        self, scope: str, cursor: str, *, count: int, block_ms: int
    ) -> list[ChangeEvent]:
        """Change events after `cursor`, waiting up to `block_ms` for one."""
        key = _keys.context_events(scope)

        async def attempt() -> list[ChangeEvent]:
            reply: Any = await self._reads.xread({key: cursor}, count=count, block_ms=block_ms)
            if not reply:
                return []
            [[_, entries]] = reply
            return [event_of(i, f) for i, f in entries]

        result: list[ChangeEvent] = await with_retries(
            attempt, budget_seconds=self._retry_budget + block_ms / 1000
        )
        return result

    # -- global map, memory logs, traces --------------------------------------------

    async def map_set(
        self, key: str, value: str, expected: str | None, *, max_entries: int, ttl_ms: int
    ) -> str:
        result: Any = await self._retried(
            lambda: _scripts.CONTEXT_MAP_SET.run(
                self._redis,
                [_keys.GLOBAL_CONTEXT],
                [
                    key,
                    value,
                    "0" if expected is None else "1",
                    expected or "",
                    max_entries,
                    ttl_ms,
                ],
            )
        )
        return text(result)

    async def map_get(self, key: str) -> str | None:
        value: Any = await self._retried(lambda: self._redis.hget(_keys.GLOBAL_CONTEXT, key))
        return None if value is None else text(value)

    async def map_delete(self, key: str) -> bool:
        removed: Any = await self._retried(lambda: self._redis.hdel(_keys.GLOBAL_CONTEXT, key))
        return bool(removed)

    async def map_keys(self) -> list[str]:
        raw: Any = await self._retried(lambda: self._redis.hkeys(_keys.GLOBAL_CONTEXT))
        return [text(k) for k in raw]

    async def map_values(self, keys: list[str]) -> list[str | None]:
        """The values of `keys` (None for those gone)."""
        raw: Any = await self._retried(lambda: self._redis.hmget(_keys.GLOBAL_CONTEXT, keys))
        return [None if v is None else text(v) for v in raw]

    async def log_append(
        self,
        key: str,
        entry_id: str,
        entry: bytes,
        fingerprint: str,
        *,
        newest_first: bool,
        cap: int,
        ttl_ms: int,
    ) -> tuple[bool | None, int]:
        """Append `entry` to the log `key` once per entry id. Returns (True: appended,
        False: already there with this `fingerprint`, None: another entry holds the
        id; the log's length)."""
        reply: Any = await self._retried(
            lambda: _scripts.CONTEXT_LOG_APPEND.run(
                self._redis,
                [key, _keys.log_fingerprints(key)],
                [
                    entry_id.encode() + b"\n" + entry,
                    "L" if newest_first else "R",
                    cap,
                    ttl_ms,
                    entry_id,
                    fingerprint,
                ],
            )
        )
        outcome = int(reply[0])
        return (None if outcome < 0 else outcome == 1), int(reply[1])

    async def log_slice(self, key: str, start: int, stop: int) -> list[tuple[str, bytes]]:
        """A log's entries at offsets `start`..`stop` (inclusive), as (entry id, entry)."""
        raw: Any = await self._retried(lambda: self._redis.lrange(key, start, stop))
        return [(text(i), e) for i, _, e in (bytes(r).partition(b"\n") for r in raw)]
