"""Which store replies are refusals (full memory, a disk it cannot write, a replica,
...), as redis-py raises them, and what each answers: retried then UNAVAILABLE, or
RESOURCE_EXHAUSTED at once. The same faults on a real store: test_store_refusals.py."""

from __future__ import annotations

import grpc
import pytest
import redis.asyncio as redis_asyncio
from redis import exceptions as rx
from redis._parsers.base import BaseParser

from packetbus_server._refusals import refusal
from packetbus_server._retry import (
    StoreRefusedError,
    StoreUnavailableError,
    is_retry_safe,
    with_retries,
)

# --- which replies are refusals, and what they answer -------------------------------

REFUSALS = [
    # (the reply as Redis sends it, kind, retried, status when it persists)
    ("OOM command not allowed when used memory > 'maxmemory'.", "OOM", False, "RESOURCE_EXHAUSTED"),
    (
        "OOM command not allowed when used memory > 'maxmemory'. script: 33df5af9, on "
        "@user_script:1.",
        "OOM",
        False,
        "RESOURCE_EXHAUSTED",
    ),
    (
        "MISCONF Errors writing to the AOF file: No space left on device",
        "MISCONF",
        False,
        "RESOURCE_EXHAUSTED",
    ),
    (
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
        "persist to disk. Commands that may modify the data set are disabled.",
        "MISCONF",
        False,
        "RESOURCE_EXHAUSTED",
    ),
    ("READONLY You can't write against a read only replica.", "READONLY", True, "UNAVAILABLE"),
    ("NOREPLICAS Not enough good replicas to write.", "NOREPLICAS", True, "UNAVAILABLE"),
    (
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "BUSY",
        True,
        "UNAVAILABLE",
    ),
    ("LOADING Redis is loading the dataset in memory", "LOADING", True, "UNAVAILABLE"),
    (
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "MASTERDOWN",
        True,
        "UNAVAILABLE",
    ),
]


def _reply(text: str) -> rx.RedisError:
    """The exception redis-py raises for the error reply `text` (a known code cut off)."""
    exc: rx.RedisError = BaseParser.parse_error(text)  # type: ignore[no-untyped-call]
    return exc


def _annotated(exc: rx.RedisError) -> rx.RedisError:
    """`exc` as redis.asyncio raises it from a pipeline (the command named first)."""
    redis_asyncio.Redis().pipeline().annotate_exception(exc, 1, ["SET", "k", "v"])
    return exc


@pytest.mark.parametrize(("reply", "kind", "retried", "status"), REFUSALS)
@pytest.mark.parametrize("pipelined", [False, True])
def test_every_store_refusal_is_classified_as_redis_py_raises_it(
    reply: str, kind: str, retried: bool, status: str, pipelined: bool
) -> None:
    exc = _reply(reply)  # as redis-py builds it: a known code is cut off
    if pipelined:
        exc = _annotated(exc)
    found = refusal(exc)
    assert found is not None, str(exc)
    assert (found.kind, found.retry, found.code.name) == (kind, retried, status)
    assert is_retry_safe(exc) is retried


@pytest.mark.parametrize(
    "reply",
    [
        "BUSYGROUP Consumer Group name already exists",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR syntax error",
        "NOPERM this user has no permissions to run the 'xadd' command",
        "ERR user_script:1: Script attempted to access nonexistent global variable 'x'",
    ],
)
def test_other_errors_are_no_refusals(reply: str) -> None:
    assert refusal(_reply(reply)) is None


async def test_a_refusal_that_passes_is_retried_and_one_that_does_not_is_raised_at_once() -> None:
    calls = 0

    async def replica_then_primary() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise _reply("READONLY You can't write against a read only replica.")
        return "ok"

    assert await with_retries(replica_then_primary, budget_seconds=5) == "ok"
    assert calls == 3

    async def full() -> None:
        nonlocal calls
        calls += 1
        raise _reply("OOM command not allowed when used memory > 'maxmemory'.")

    calls = 0
    with pytest.raises(StoreRefusedError) as refused:
        await with_retries(full, budget_seconds=5)
    assert calls == 1
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    async def replica() -> None:
        raise _reply("READONLY You can't write against a read only replica.")

    with pytest.raises(StoreUnavailableError, match="read-only replica"):
        await with_retries(replica, budget_seconds=0.2)
