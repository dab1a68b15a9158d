"""Which Redis failures are safe to retry, and the one retry loop that does it.

The table in DESIGN.md section 2.3 is the contract: retry what provably did not
run (or what is idempotent by construction: every write here is), surface what
is a bug or a configuration error at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import exceptions as rx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

T = TypeVar("T")

# Error replies that mean "the command did not run; try again".
_RETRYABLE_PREFIXES = (
    "MOVED",
    "ASK",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "NOSCRIPT",
    "READONLY",
)


class StoreUnavailableError(Exception):
    """Redis did not answer within the retry budget; the caller may retry."""


class StoreFailedError(Exception):
    """Redis answered with an error that retrying cannot fix (a bug or a misconfiguration)."""


def is_retry_safe(exc: BaseException) -> bool:
    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError):
        return False  # WRONGPASS/NOPERM: a configuration error, never transient
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError | asyncio.TimeoutError):
        # The reply may have been lost after the command ran; retrying is safe
        # only because every write is an idempotent script.
        return True
    if isinstance(exc, rx.ResponseError):
        return str(exc).startswith(_RETRYABLE_PREFIXES)
    return False


async def with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    budget_seconds: float,
    max_backoff: float = 0.5,
) -> T:
    """Run `operation`, retrying retry-safe failures until `budget_seconds` is spent.

    Raises StoreUnavailableError when the budget runs out on retry-safe failures
    and StoreFailedError at once for anything else Redis reports.
    """
    deadline = time.monotonic() + budget_seconds
    # Fast path: nearly every call succeeds at once, and setting up the retry
    # machinery costs more than a batched write's share of the Redis call.
    try:
        async with asyncio.timeout(budget_seconds):
            return await operation()
    except TimeoutError as exc:
        raise StoreUnavailableError(f"Redis did not answer within {budget_seconds:.1f}s") from exc
    except Exception as exc:
        if not is_retry_safe(exc):
            if isinstance(exc, rx.RedisError):
                raise StoreFailedError(f"Redis error: {exc}") from exc
            raise
    try:
        remaining = max(0.0, deadline - time.monotonic())
        async with asyncio.timeout(remaining):
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(is_retry_safe),
                wait=wait_random_exponential(multiplier=0.01, max=max_backoff),
                stop=stop_before_delay(remaining),
                reraise=True,
            ):
                with attempt:
                    return await operation()
    except TimeoutError as exc:
        raise StoreUnavailableError(f"Redis did not answer within {budget_seconds:.1f}s") from exc
    except rx.RedisError as exc:
        if is_retry_safe(exc):
            raise StoreUnavailableError(f"Redis unavailable: {exc}") from exc
        raise StoreFailedError(f"Redis error: {exc}") from exc
    except OSError as exc:
        raise StoreUnavailableError(f"Redis unavailable: {exc}") from exc
    raise AssertionError("unreachable: tenacity either returns or raises")
