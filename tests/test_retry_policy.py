"""Which Redis failures are retried (DESIGN.md 2.3), and the retry loop's bounds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis import exceptions as rx
from redis._parsers.base import BaseParser
from redis.asyncio.connection import Connection

from packetbus_server._retry import (
    StoreFailedError,
    StoreUnavailableError,
    is_retry_safe,
    with_retries,
)


@pytest.mark.parametrize(
    "error",
    [
        rx.ResponseError("MOVED 3999 127.0.0.1:6381"),
        rx.ResponseError("ASK 3999 127.0.0.1:6381"),
        rx.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        rx.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rx.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        rx.ResponseError("BUSY Redis is busy running a script."),
        rx.MasterDownError("MASTERDOWN Link with MASTER is down"),
        rx.NoScriptError("NOSCRIPT No matching script."),
        rx.ReadOnlyError("READONLY You can't write against a read only replica."),
        rx.ConnectionError("Connection closed by server."),
        rx.TimeoutError("Timeout reading from socket"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_retry_safe(error: BaseException) -> None:
    assert is_retry_safe(error)


@pytest.mark.parametrize(
    "error",
    [
        rx.ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
        rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rx.ResponseError("ERR syntax error"),
        rx.NoPermissionError("NOPERM this user has no permissions to run the 'xadd' command"),
        rx.AuthenticationError("WRONGPASS invalid username-password pair"),
        rx.ExecAbortError("EXECABORT Transaction discarded because of previous errors."),
        rx.ResponseError("ERR user_script:12: Script attempted to access nonexistent global"),
        ValueError("a bug"),
    ],
)
def test_never_retried(error: BaseException) -> None:
    assert not is_retry_safe(error)


async def test_transient_failures_are_retried_until_success() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise rx.ConnectionError("reset")
        return "ok"

    assert await with_retries(flaky, budget_seconds=5) == "ok"
    assert calls == 4


async def test_permanent_failure_surfaces_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    with pytest.raises(StoreFailedError):
        await with_retries(broken, budget_seconds=5)
    assert calls == 1


async def test_retries_stop_within_the_budget() -> None:
    async def down() -> None:
        raise rx.ConnectionError("refused")

    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        await with_retries(down, budget_seconds=0.5)
    assert time.monotonic() - started < 1.5


# The error replies as they come off the wire: redis-py's parser turns each into
# its exception class and cuts the code off the message ("MOVED 3999 h:p" reads
# "3999 h:p"), so a check of the message's first word alone misses them all.
_TRANSIENT_REPLIES = [
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "LOADING Redis is loading the dataset in memory",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "NOSCRIPT No matching script. Please use EVAL.",
    "READONLY You can't write against a read only replica.",
    # A script's derived key on the other node of a migrating slot (Valkey, then Redis 7 wording).
    "ERR Attempted to access a non local key in a cluster node script: on @user_script:129.",
    "ERR Script attempted to access a non local key in a cluster node script: on @user_script:9.",
    "ERR Can not execute a command 'HSET' while the cluster is down script: on @user_script:3.",
]


def _parsed(reply: str) -> rx.ResponseError:
    """The exception redis-py's parser makes of an error reply."""
    error: rx.ResponseError = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    return error


@pytest.mark.parametrize("reply", _TRANSIENT_REPLIES)
def test_transient_replies_as_parsed_are_retry_safe(reply: str) -> None:
    assert is_retry_safe(_parsed(reply))


@pytest.mark.parametrize("reply", _TRANSIENT_REPLIES)
def test_transient_replies_inside_a_pipeline_are_retry_safe(reply: str) -> None:
    # A cluster pipeline re-words a command's error before raising it (as redis-py does).
    error = _parsed(reply)
    error.args = (f"Command # 1 (HGETALL pb:{{q}}:hops:x) of pipeline caused error: {error.args}",)
    assert is_retry_safe(error)


@pytest.mark.parametrize(
    "error",
    [
        rx.ClusterError("TTL exhausted."),  # redirects outlasted redis-py's budget
        rx.SlotNotCoveredError('Slot "3999" not covered by the cluster.'),
    ],
)
def test_cluster_topology_errors_are_retry_safe(error: BaseException) -> None:
    assert is_retry_safe(error)


@pytest.mark.parametrize(
    "reply",
    [
        "CROSSSLOT Keys in request don't hash to the same slot",
        "ERR Script attempted to access keys that do not hash to the same slot script: on @x:1.",
        "EXECABORT Transaction discarded because of previous errors.",
        "NOPERM this user has no permissions to run the 'xadd' command",
        "WRONGPASS invalid username-password pair or user is disabled.",
        "OOM command not allowed when used memory > 'maxmemory'.",
    ],
)
def test_permanent_replies_as_parsed_are_never_retried(reply: str) -> None:
    assert not is_retry_safe(_parsed(reply))


async def test_a_real_noscript_reply_is_retried(raw_redis: Any) -> None:
    """NOSCRIPT from a real store (a restarted or failed-over Redis lost its cache)."""
    calls = 0

    async def lost_script() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return await raw_redis.evalsha("0" * 40, 0)
        return "ok"

    assert await with_retries(lost_script, budget_seconds=5) == "ok"
    assert calls == 2


def _raised_from(error: Exception, cause: Exception) -> Exception:
    try:
        raise error from cause
    except Exception as raised:
        return raised


@pytest.mark.parametrize(
    "error",
    [
        # The cluster client's reload of its slot map, as it raises it.
        _raised_from(
            rx.RedisClusterException("Redis Cluster cannot be connected. Please provide ..."),
            rx.ConnectionError("Error 111 connecting to 127.0.0.1:7000."),
        ),
        rx.RedisClusterException("All slots are not covered after query all startup_nodes."),
    ],
)
async def test_an_unreachable_cluster_is_unavailable(error: Exception) -> None:
    assert is_retry_safe(error)

    async def down() -> None:
        raise error

    with pytest.raises(StoreUnavailableError):
        await with_retries(down, budget_seconds=0.3)


async def test_a_cluster_client_bug_is_a_store_failure() -> None:
    error = rx.RedisClusterException("No targets were found to execute ('X',) command on")
    assert not is_retry_safe(error)

    async def broken() -> None:
        raise error

    with pytest.raises(StoreFailedError):
        await with_retries(broken, budget_seconds=5)


async def test_a_connection_torn_down_inside_redis_py_is_unavailable_once_the_budget_is_spent() -> (
    None
):
    # redis-py's cluster client closes connections under in-flight commands, which
    # then meet `_writer` None: retried like a cut connection, and when the budget
    # runs out on it the call is told the store did not answer (UNAVAILABLE), not
    # an AttributeError that gRPC answers UNKNOWN.
    torn = Connection()
    attempts = 0

    async def send() -> None:
        nonlocal attempts
        attempts += 1
        await torn._send_packed_command([b"PING\r\n"])

    with pytest.raises(StoreUnavailableError):
        await with_retries(send, budget_seconds=0.2)
    assert attempts >= 2


async def test_an_attribute_error_of_our_own_is_a_bug_raised_at_once() -> None:
    attempts = 0

    async def broken() -> None:
        nonlocal attempts
        attempts += 1
        raise AttributeError("a bug in packetbus, not a connection torn down")

    with pytest.raises(AttributeError):
        await with_retries(broken, budget_seconds=0.2)
    assert attempts == 1


async def test_a_short_budget_is_named_as_it_was_not_rounded_to_zero() -> None:
    # A call whose deadline leaves the store a few milliseconds was told
    # "Redis did not answer within 0.0s" (seen from `packetbus --timeout 0.01`).
    async def slow() -> None:
        await asyncio.sleep(1)

    with pytest.raises(StoreUnavailableError, match=r"within 0\.004s$"):
        await with_retries(slow, budget_seconds=0.004)
    with pytest.raises(StoreUnavailableError, match=r"within 0\.05s$"):
        await with_retries(slow, budget_seconds=0.05)
