"""Which Redis failures are safe to retry, and the one retry loop that does it.

The table in DESIGN.md section 2.3 is the contract: retry what provably did not
run (or what is idempotent by construction: every write here is), surface what
is a bug or a configuration error at once.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
from redis import exceptions as rx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

from ._key_types import WrongType, is_wrong_type
from ._observability import counting, metrics
from ._refusals import Refusal, refusal, reply_text

T = TypeVar("T")

_REDIS_PY = os.path.dirname(redis.__file__) + os.sep  # where redis-py's own frames live

# Error replies that mean "the command did not run; try again". redis-py cuts
# the code off the message of the replies it has a class for (str(exc) of
# "MOVED 12 host:port" is "12 host:port") and keeps it as `status_code`; a
# pipeline's error message starts "Command # 1 (...) of pipeline caused error".
# So the code is looked for in `status_code`, the class and the message's start.
_RETRYABLE_CODES = frozenset(
    {
        "MOVED",
        "ASK",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "NOSCRIPT",
        "READONLY",
    }
)
_RETRYABLE_CLASSES = (
    rx.AskError,  # and MovedError
    rx.TryAgainError,
    rx.ClusterDownError,  # and MasterDownError
    rx.BusyLoadingError,
    rx.NoScriptError,
    rx.ReadOnlyError,
    # A cluster slot not covered yet, or redirects that outlasted the client's
    # redirect budget ("TTL exhausted."): both are the topology moving under
    # the call, which did not run; the slot map is reloaded before the next try.
    rx.SlotNotCoveredError,
    rx.ClusterError,
)


# A script's own command refused by the cluster: a key the script derives
# (not in its KEYS) is on the other node of a migrating slot, or the cluster is
# down. Keys of one script share a hash tag, so "non local" can only mean the
# slot is moving; a script whose keys really span slots gets "... do not hash
# to the same slot" instead, which is never retried. Redis 7 and Valkey word
# these differently ("Script attempted to access a non local key in a cluster
# node", "Attempted to access a non local key in a cluster node").
_RETRYABLE_SCRIPT_ERRORS = (
    "access a non local key in a cluster node",
    "while the cluster is down",
)


class StoreUnavailableError(Exception):
    """Redis did not answer within the retry budget; the caller may retry."""


class StoreFailedError(Exception):
    """Redis answered with an error that retrying cannot fix (a bug or a misconfiguration)."""


class StoreRefusedError(StoreFailedError):
    """The store refused the write for its own state (full memory, a disk it cannot
    write): nothing of it was written. `code` is the RPC's status (RESOURCE_EXHAUSTED);
    the message says why and what to do."""

    def __init__(self, found: Refusal) -> None:
        super().__init__(found.message)
        self.code = found.code
        self.kind = found.kind


class StoreWrongTypeError(StoreFailedError):
    """The store answered WRONGTYPE: a key holds another Redis type than its family
    has (a key the server did not make). `found` names it, None when the keys
    looked at did not tell (_key_types)."""

    def __init__(self, found: WrongType | None, reply: str) -> None:
        where = (
            f"key {found.key} holds a {found.found}, not the {found.expected} this server keeps there"
            if found is not None
            else "a key it read holds another type than this server keeps there"
        )
        super().__init__(
            f"the store holds a key this server did not make: {where} ({reply}); "
            "remove or rename it (an operator's job: retrying cannot help)"
        )
        self.found = found


def _failed(exc: BaseException) -> StoreFailedError:
    if is_wrong_type(exc):
        return StoreWrongTypeError(getattr(exc, "found", None), reply_text(exc))
    found = refusal(exc)
    return (
        StoreRefusedError(found) if found is not None else StoreFailedError(f"Redis error: {exc}")
    )


def _unavailable(exc: BaseException) -> StoreUnavailableError:
    found = refusal(exc)
    return StoreUnavailableError(
        found.message if found is not None else f"Redis unavailable: {exc}"
    )


def is_retry_safe(exc: BaseException) -> bool:
    found = refusal(exc)  # full memory, a read-only replica, ... (see _refusals)
    if found is not None:
        return found.retry
    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError):
        return False  # WRONGPASS/NOPERM: a configuration error, never transient
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError | asyncio.TimeoutError):
        # The reply may have been lost after the command ran; retrying is safe
        # only because every write is an idempotent script.
        return True
    if isinstance(exc, _RETRYABLE_CLASSES):
        return True
    if isinstance(exc, rx.RedisClusterException):
        # The cluster client's reload of its slot map failed: no node answered
        # (the connection error is its cause), or the answers do not cover every
        # slot yet (a failover or a reshard under way). Anything else it raises
        # ("No targets were found...", cross-slot in a transaction) is a bug.
        cause = exc.__cause__
        # "Redis Cluster cannot be connected": every node it tried refused or cut
        # the connection, so the command was not sent.
        return (cause is not None and is_retry_safe(cause)) or str(exc).startswith(
            ("All slots are not covered", "Redis Cluster cannot be connected")
        )
    if isinstance(exc, rx.ResponseError):
        code = getattr(exc, "status_code", None)
        message = reply_text(exc)
        return (
            code in _RETRYABLE_CODES
            # The first word, not a prefix: BUSYGROUP is not BUSY.
            or message.split(" ", 1)[0] in _RETRYABLE_CODES
            or any(part in message.lower() for part in _RETRYABLE_SCRIPT_ERRORS)
        )
    return isinstance(exc, AttributeError) and _raised_in_redis_py(exc)


def _raised_in_redis_py(exc: BaseException) -> bool:
    """A connection torn down under an in-flight command (redis-py 8's cluster
    client: a failed topology refresh closes every node's connections, those in
    use too, and the command then meets `_writer`/`_reader` set to None and
    raises AttributeError). StoreCluster schedules a reload instead, but redis-py's
    own paths still close; the command's outcome is unknown, like a cut
    connection's, and every write is idempotent, so it is retried like one."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_REDIS_PY)


def _seconds(budget: float) -> str:
    # A budget cut short by the caller's deadline may be milliseconds: ".1f"
    # said "within 0.0s", as if the store had been given no time at all.
    return f"{budget:.3g}s"


# What the store's client raises: redis-py's errors, and its cluster client's
# own exceptions (RedisClusterException is no RedisError).
_STORE_ERRORS = (rx.RedisError, rx.RedisClusterException)


def _count_retry(exc: BaseException) -> None:
    metrics.store_retries.labels(counting.error_class(exc)).inc()


def _counted(state: RetryCallState) -> None:
    # tenacity calls this before each sleep, i.e. once per retry it will make.
    if state.outcome is not None and (exc := state.outcome.exception()) is not None:
        _count_retry(exc)


async def with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    budget_seconds: float,
    max_backoff: float = 0.5,
) -> T:
    """Run `operation`, retrying retry-safe failures until `budget_seconds` is spent.

    Raises StoreUnavailableError when the budget runs out on retry-safe failures,
    StoreRefusedError at once when the store refuses for a state that does not pass
    within a call (full memory, a disk it cannot write: see _refusals), and
    StoreFailedError at once for anything else Redis reports.
    """
    deadline = time.monotonic() + budget_seconds
    # Fast path: nearly every call succeeds at once, and setting up the retry
    # machinery costs more than a batched write's share of the Redis call.
    try:
        async with asyncio.timeout(budget_seconds):
            return await operation()
    except TimeoutError as exc:
        raise StoreUnavailableError(
            f"Redis did not answer within {_seconds(budget_seconds)}"
        ) from exc
    except Exception as exc:
        if not is_retry_safe(exc):
            if isinstance(exc, _STORE_ERRORS):
                raise _failed(exc) from exc
            raise
        _count_retry(exc)
        last: BaseException = exc
    # The budget may run out while waiting between attempts: the store did answer
    # then (with `last`), and the caller is told what it said, not "no answer".
    waiting = True

    def before_sleep(state: RetryCallState) -> None:
        nonlocal last, waiting
        _counted(state)
        waiting = True
        if state.outcome is not None and (failed := state.outcome.exception()) is not None:
            last = failed

    try:
        remaining = max(0.0, deadline - time.monotonic())
        async with asyncio.timeout(remaining):
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(is_retry_safe),
                wait=wait_random_exponential(multiplier=0.01, max=max_backoff),
                stop=stop_before_delay(remaining),
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    waiting = False
                    return await operation()
    except TimeoutError as exc:
        if waiting and isinstance(last, _STORE_ERRORS):
            raise _unavailable(last) from exc
        raise StoreUnavailableError(
            f"Redis did not answer within {_seconds(budget_seconds)}"
        ) from exc
    except _STORE_ERRORS as exc:
        if is_retry_safe(exc):
            raise _unavailable(exc) from exc
        raise _failed(exc) from exc
    except OSError as exc:
        raise StoreUnavailableError(f"Redis unavailable: {exc}") from exc
    except Exception as exc:
        # Retry-safe but neither a RedisError nor an OSError (a connection torn
        # down under the command inside redis-py, see _raised_in_redis_py): when
        # the budget runs out on it, it is the store not answering, not a bug.
        if is_retry_safe(exc):
            raise StoreUnavailableError(f"Redis unavailable: {exc!r}") from exc
        raise
    raise AssertionError("unreachable: tenacity either returns or raises")
