"""The retry loop of the client's unary calls: UNAVAILABLE retried with backoff within
the call's deadline, as the RPC's policy (_retry_policy.POLICY) allows, and the
error raised at the end saying whether the call may have taken effect."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from ._config import RetrySettings
from ._errors import CLOSED, PacketbusError, client_closed, own_cancellation
from ._retry_policy import (
    MAYBE_APPLIED,
    Retry,
    broken_while_writing,
    maybe_applied,
    never_sent,
)

T = TypeVar("T")


class Backoff:
    def __init__(self, settings: RetrySettings) -> None:
        self._settings = settings
        self._next = settings.initial_backoff

    def reset(self) -> None:
        self._next = self._settings.initial_backoff

    def next_delay(self) -> float:
        # Full jitter: spreads reconnecting clients instead of synchronizing them.
        delay = random.uniform(0, self._next)
        self._next = min(self._next * self._settings.multiplier, self._settings.max_backoff)
        return delay


async def retried(
    call: Callable[[float], Awaitable[T]],
    deadline: float,
    policy: Retry,
    settings: RetrySettings,
) -> T:
    """`call(seconds left)` until it answers, retrying UNAVAILABLE with backoff until
    `deadline` (time.monotonic()): every time for READ and IDEMPOTENT calls, and for
    ONCE calls only while the request surely never reached a server.

    Raises PacketbusError: the call's own error, or DEADLINE_EXCEEDED once the time
    is spent, or CANCELLED when the client closed under it; `outcome_unknown` set
    when a call that changes something may have taken effect (this attempt's
    failure or an earlier one's says it may have reached the server).
    """
    backoff = Backoff(settings)
    changes = policy is not Retry.READ
    reached = False  # whether an attempt so far may have taken effect
    # Why the last retried attempt failed, told with a DEADLINE_EXCEEDED that ends
    # the retries (a token callback failing, then one too slow for the time left:
    # the caller learns of the token, not only of the clock).
    before = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PacketbusError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "timeout spent" + (" after an attempt with no answer" if reached else "") + before,
                outcome_unknown=changes and reached,
            )
        try:
            return await call(remaining)
        except CLOSED as exc:
            if own_cancellation(exc):
                raise
            # Closed under the call (CancelledError): it may have been sent; on a
            # closed channel (UsageError) it never was.
            error = client_closed()
            error.outcome_unknown = changes and (reached or isinstance(exc, asyncio.CancelledError))
            raise error from None
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            # A client stream cut while writing reads INTERNAL (grpc.aio's, not a
            # server's): the connection broke, as with UNAVAILABLE.
            lost = code == grpc.StatusCode.UNAVAILABLE or broken_while_writing(exc)
            if lost and (policy is not Retry.ONCE or never_sent(exc)):
                reached = reached or maybe_applied(exc)
                before = f"; the attempt before failed {code.name}: {exc.details()}"
                delay = backoff.next_delay()
                if time.monotonic() + delay < deadline:
                    await asyncio.sleep(delay)
                    continue
            error = PacketbusError.from_rpc_error(exc, changes=changes)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and before:
                error = PacketbusError(
                    code, error.message + before, outcome_unknown=error.outcome_unknown
                )
            if changes and reached and code in MAYBE_APPLIED:
                error.outcome_unknown = True
            raise error from None
