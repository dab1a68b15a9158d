"""Which Redis failures are retried (DESIGN.md 2.3), and the retry loop's bounds."""

from __future__ import annotations

import time

import pytest
from redis import exceptions as rx

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
