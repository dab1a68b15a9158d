"""Durability modes: what a machine crash (power loss) may take of acknowledged writes.

- ``everysec`` (default): the store fsyncs its AOF once a second; a power loss
  loses what was acknowledged in the last ~1 s (up to 2 s when the disk is slow).
- ``always``: nothing is acknowledged before it is fsynced. The embedded store
  runs with ``appendfsync always``, and so may an external one. On an external
  Redis 8.0 or newer that fsyncs less often, the server sends ``WAITAOF 1 0 T``
  after each write command, on the same connection, in the same round trip: the
  reply comes once the store's AOF holds the write on disk. WAITAOF is not
  trusted where it can answer before the fsync under ``everysec`` (Valkey, and
  Redis before 8.0: `_waitaof_flaw`), nor used where it is missing (Redis 7.0,
  7.1) or cannot follow each write on its connection (a Redis Cluster): there
  only the store's own ``appendfsync always`` gives it, and `plan_durability`
  says so (the server logs a warning at start and serves anyway).

A SIGKILL of the store loses nothing in either mode (the OS keeps what was
written); only a crash of the machine (or of its disk) makes the difference.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from . import _keys
from ._key_types import StoreRedis

log = logging.getLogger("packetbus.server")

DURABILITY_ENV = "PACKETBUS_DURABILITY"


class Durability(enum.StrEnum):
    EVERYSEC = "everysec"
    ALWAYS = "always"


# How long one WAITAOF may wait for the fsync, in ms. Below the connections'
# socket timeout (5 s), so a slow disk fails the attempt, not the connection.
WAITAOF_TIMEOUT_MS = 3000

# Commands that never write: no WAITAOF after them. Everything else (scripts
# included: most write) is followed by one; after a command that wrote nothing
# it returns at once, the connection's last write being on disk already.
_READ_ONLY = frozenset(
    {
        b"GET",
        b"MGET",
        b"GETRANGE",
        b"STRLEN",
        b"EXISTS",
        b"TYPE",
        b"TTL",
        b"PTTL",
        b"EXPIRETIME",
        b"PEXPIRETIME",
        b"HGET",
        b"HMGET",
        b"HGETALL",
        b"HLEN",
        b"HEXISTS",
        b"HKEYS",
        b"HVALS",
        b"HSCAN",
        b"HSTRLEN",
        b"XRANGE",
        b"XREVRANGE",
        b"XREAD",
        b"XLEN",
        b"XINFO",
        b"XPENDING",
        b"ZRANGE",
        b"ZRANGEBYSCORE",
        b"ZREVRANGE",
        b"ZREVRANGEBYSCORE",
        b"ZRANGEBYLEX",
        b"ZSCORE",
        b"ZMSCORE",
        b"ZCARD",
        b"ZCOUNT",
        b"ZRANK",
        b"ZREVRANK",
        b"ZSCAN",
        b"SMEMBERS",
        b"SISMEMBER",
        b"SMISMEMBER",
        b"SCARD",
        b"SSCAN",
        b"LRANGE",
        b"LLEN",
        b"LINDEX",
        b"SCAN",
        b"DBSIZE",
        b"INFO",
        b"PING",
        b"ECHO",
        b"TIME",
        b"CONFIG",
        b"COMMAND",
        b"CLIENT",
        b"HELLO",
        b"AUTH",
        b"SELECT",
        b"SCRIPT",
        b"EVALSHA_RO",
        b"EVAL_RO",
        b"FCALL_RO",
        b"WAIT",
        b"WAITAOF",
        b"MEMORY",
        b"OBJECT",
        b"CLUSTER",
        b"READONLY",
        b"READWRITE",
    }
)


class NotDurableError(rx.TimeoutError):
    """The store did not confirm the fsync of a write in time (or cannot fsync).

    The write may be in the store's memory but is not known to be on disk: the
    outcome is unknown and the caller retries (every write is idempotent). A
    subclass of redis-py's TimeoutError, so the store's retry loop treats it so.
    """


def _command_name(args: tuple[Any, ...]) -> bytes:
    first = args[0]
    name = first.encode() if isinstance(first, str) else bytes(first)
    return name.split(b" ", 1)[0].upper()


def _writes(commands: Iterable[tuple[Any, ...]]) -> bool:
    return any(_command_name(args) not in _READ_ONLY for args in commands)


def _check_waitaof(reply: Any, numlocal: int) -> None:
    if isinstance(reply, Exception):
        raise NotDurableError(f"the store cannot confirm an fsync: {reply}")
    if int(reply[0]) < numlocal:
        raise NotDurableError(
            f"the store did not fsync a write within {WAITAOF_TIMEOUT_MS} ms (WAITAOF); "
            "it may or may not be kept: retry"
        )


class Waits:
    """What follows each write on its connection, shared by a client and its pipelines.

    WAITAOF waits for the connection's own last write. A write whose fsync was
    not confirmed may be retried (on any connection) and then found done, so the
    retry writes nothing and its WAITAOF would not wait for the first one. Until
    a wait is confirmed again, each write is therefore followed by a write of the
    server's own (the barrier) before the WAITAOF, which then covers everything
    written before it.
    """

    def __init__(self, timeout_ms: int = WAITAOF_TIMEOUT_MS) -> None:
        self.waitaof: tuple[Any, ...] = ("WAITAOF", 1, 0, timeout_ms)
        self.unconfirmed = False

    def tail(self) -> list[tuple[Any, ...]]:
        if self.unconfirmed:
            return [("SET", _keys.DURABILITY_BARRIER, "1", "PX", 60_000), self.waitaof]
        return [self.waitaof]

    def check(self, replies: list[Any]) -> None:
        """Raise NotDurableError unless the tail's `replies` confirm the fsync."""
        *barrier, waited = replies
        if barrier and isinstance(barrier[0], Exception):
            raise barrier[0]  # e.g. OOM: the store's own refusal, as it is
        try:
            _check_waitaof(waited, 1)
        except NotDurableError:
            self.unconfirmed = True
            raise
        if barrier:
            self.unconfirmed = False


class DurableRedis(StoreRedis):
    """A Redis client that acknowledges a write only once the store's AOF has it on
    disk: each write command is sent with ``WAITAOF 1 0 T`` right behind it, on the
    same connection (WAITAOF waits for that connection's own last write), in the
    same round trip."""

    waits = Waits()  # replaced per client by connect_redis (see with_waits)

    def with_waits(self, waits: Waits) -> DurableRedis:
        self.waits = waits
        return self

    async def _send_command_parse_response(  # type: ignore[no-untyped-def]
        self, conn, command_name, *args, **options
    ):
        if _command_name(args) in _READ_ONLY:
            return await super()._send_command_parse_response(  # type: ignore[no-untyped-call]
                conn, command_name, *args, **options
            )
        tail = self.waits.tail()
        await conn.send_packed_command(conn.pack_commands([args, *tail]))
        try:
            result = await self.parse_response(conn, command_name, **options)
        except rx.ResponseError as exc:
            result = exc  # the wait's reply is still on the wire: read it first
        replies: list[Any] = []
        for command in tail:
            try:
                replies.append(await self.parse_response(conn, command[0]))
            except rx.ResponseError as exc:
                replies.append(exc)
        if isinstance(result, Exception):
            raise result
        self.waits.check(replies)
        return result

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        pipe = DurablePipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.waits = self.waits
        return pipe


class DurablePipeline(Pipeline):
    """DurableRedis's pipeline: the wait after the commands, when any writes."""

    waits = DurableRedis.waits

    async def _execute_pipeline(  # type: ignore[no-untyped-def]
        self, connection, commands, raise_on_error
    ):
        if not _writes(args for args, _ in commands):
            return await super()._execute_pipeline(connection, commands, raise_on_error)
        tail = self.waits.tail()
        waiting: Any = [*commands, *((command, {}) for command in tail)]
        response = await super()._execute_pipeline(connection, waiting, False)
        replies = response[len(commands) :]
        del response[len(commands) :]
        if raise_on_error:
            self.raise_first_error(commands, response)
        self.waits.check(replies)
        return response

    async def _execute_transaction(  # type: ignore[no-untyped-def]
        self, connection, commands, raise_on_error
    ):
        # WAITAOF cannot run inside MULTI: the tail follows EXEC on the same connection.
        response = await super()._execute_transaction(connection, commands, raise_on_error)
        if _writes(args for args, _ in commands):
            tail = self.waits.tail()
            await connection.send_packed_command(connection.pack_commands(tail))
            replies: list[Any] = []
            for command in tail:
                try:
                    replies.append(await self.parse_response(connection, command[0]))
                except rx.ResponseError as exc:
                    replies.append(exc)
            self.waits.check(replies)
        return response


@dataclass(frozen=True)
class StorePersistence:
    """What an external store says of its persistence (None: it would not say)."""

    appendonly: str | None
    appendfsync: str | None
    # WAITAOF 1 0 works on this store (>= 7.2, AOF on, a single node).
    waitaof: bool
    # Why not, in the store's words, when it does not.
    waitaof_problem: str | None = None


async def _config(redis: Redis | RedisCluster, name: str) -> str | None:
    try:
        if isinstance(redis, RedisCluster):
            reply: Any = await redis.config_get(name, target_nodes=RedisCluster.PRIMARIES)
        else:
            reply = await redis.config_get(name)
    except rx.RedisError as exc:  # NOPERM, a renamed CONFIG, a proxy that forbids it
        log.debug("CONFIG GET %s refused: %s", name, exc)
        return None
    if not isinstance(reply, dict):
        return None
    # One node: {name: value}; several: {node: {name: value}}, and the weakest decides.
    nodes = [v for v in reply.values() if isinstance(v, dict)] or [reply]
    values = {str(v[name]) for v in nodes if v.get(name) is not None}
    if not values:
        return None
    order = ("no", "everysec", "always") if name == "appendfsync" else ("no", "yes")
    return min(values, key=lambda v: order.index(v) if v in order else -1)


async def inspect_store(redis: Redis | RedisCluster, *, waitaof: bool = True) -> StorePersistence:
    """Ask the store how it persists, and (`waitaof`) whether WAITAOF can be used on it."""
    appendonly = await _config(redis, "appendonly")
    appendfsync = await _config(redis, "appendfsync")
    if not waitaof:
        return StorePersistence(appendonly, appendfsync, False, "not asked")
    if isinstance(redis, RedisCluster):
        return StorePersistence(
            appendonly, appendfsync, False, "a Redis Cluster (the wait must follow each write)"
        )
    try:
        reply: Any = await redis.execute_command("WAITAOF", 1, 0, 100)  # type: ignore[no-untyped-call]
    except rx.ResponseError as exc:  # unknown command before 7.2; AOF off; NOPERM
        return StorePersistence(appendonly, appendfsync, False, str(exc))
    if int(reply[0]) < 1:
        return StorePersistence(appendonly, appendfsync, False, "WAITAOF timed out at start")
    problem = _waitaof_flaw(await redis.info("server"))
    return StorePersistence(appendonly, appendfsync, problem is None, problem)


def _version(text: Any) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(".")[:3])
    except ValueError:
        return ()


def _waitaof_flaw(info: dict[str, Any]) -> str | None:
    """Why this server's WAITAOF cannot be trusted, or None. Under appendfsync
    everysec, WAITAOF 1 0 may answer once a write is in the AOF file but before
    its fsync: fixed in Redis 8.0 (redis/redis#13793), not in Valkey (9.1.2 still
    does it; a power-loss test here lost 740 acknowledged packets that way)."""
    if "valkey_version" in info or info.get("server_name") == "valkey":
        version = info.get("valkey_version", "?")
        return f"Valkey {version}'s WAITAOF can answer before the fsync under everysec"
    if _version(info.get("redis_version")) < (8, 0, 0):
        version = info.get("redis_version", "?")
        return f"Redis {version}'s WAITAOF can answer before the fsync under everysec"
    return None


def plan_durability(mode: Durability, found: StorePersistence) -> tuple[bool, list[str]]:
    """Whether to wait for each write's fsync (WAITAOF), and the warnings to log
    about what the store's settings cannot give for `mode`."""
    if found.appendonly == "no":
        return False, [
            "the store runs without an AOF (appendonly no): a crash of the store loses "
            f"every write since its last RDB snapshot, not what --durability {mode} "
            "promises; set appendonly yes"
        ]
    if found.appendfsync == "no":
        # WAITAOF would wait in vain: such a store fsyncs when the OS decides.
        return False, [
            "the store's AOF is fsynced when the OS decides (appendfsync no, typically "
            f"within 30 s): a machine crash may lose that much, not what --durability {mode} "
            "promises; set appendfsync everysec or always"
        ]
    unknown = found.appendonly is None or found.appendfsync is None
    if mode is Durability.EVERYSEC:
        if unknown:
            return False, [
                "cannot read the store's persistence settings (CONFIG GET refused): make "
                "sure it runs appendonly yes with appendfsync everysec or always"
            ]
        return False, []
    if found.appendfsync == "always" and found.appendonly == "yes":
        return False, []  # the store replies after its fsync already
    if found.waitaof:
        return True, []
    settings = (
        "would not say how it persists (CONFIG GET refused)"
        if unknown
        else f"runs appendfsync {found.appendfsync}"
    )
    return False, [
        f"--durability always cannot be guaranteed: this store {settings} and the server "
        f"cannot wait for each write's fsync ({found.waitaof_problem}); set appendfsync "
        "always on the store (on every node of a cluster)"
    ]
