"""Server streams that resume after their last cursor when they end UNAVAILABLE.

A lost connection or a draining server ends a stream with UNAVAILABLE (see the
README's drain section); the watch streams (agents, tasks, context) then open
again after the last cursor they delivered, a few times with backoff, so the
caller sees every event once, with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from ._errors import CLOSED, PacketbusError, raise_closed
from ._retry_policy import credential_expired
from .stream_start import start_cursor

R = TypeVar("R")

# Pauses before each reopening in a row; a response in between starts them over.
RESUME_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)


async def resuming(
    open_stream: Callable[[str, float | None], Any],
    cursor_of: Callable[[R], str],
    *,
    after: str,
    may_resume: Callable[[str], bool] = bool,
    timeout: float | None = None,
    ends_at_timeout: bool = False,
    started: Callable[[str], None] | None = None,
) -> AsyncIterator[R]:
    """The responses of `open_stream(cursor, time_left)` (a grpc.aio server-stream
    call opened after `cursor`, "" for the server's own start), opened again after
    the last cursor seen when it ends UNAVAILABLE and `may_resume(cursor)` (by
    default: once a cursor is known). A stream opened "from now" takes the cursor
    the server started it at from its headers (`packetbus.stream_start`), so one
    dropped before its first event resumes there; from a server that sends none,
    reopening "from now" would skip what happened meanwhile, so it raises. `cursor_of(response)`: the cursor after its last item,
    or "" when it has none. `timeout` (seconds, None: none) bounds the whole stream,
    reopenings included; when it runs out the stream just ends if `ends_at_timeout`
    (a watch), else raises DEADLINE_EXCEEDED (a stream that has an end).
    `started`, if given, is called with that start cursor once the server sends it
    (a relay, such as the console's event stream, passes it on as its own cursor).

    Raises PacketbusError with the stream's status when it cannot resume (another
    status, `may_resume` false, len(RESUME_DELAYS) failures in a row, or no time
    left for the next pause), and CANCELLED at once when the client is closed.
    """
    cursor = after
    ends_at = None if timeout is None else time.monotonic() + timeout
    failures = 0
    while True:
        left = None if ends_at is None else max(0.0, ends_at - time.monotonic())
        call = None
        try:
            call = open_stream(cursor, left)
            if not cursor:
                # Opened "from now": the server says after which cursor it began
                # (stream_start), so a drop before any event resumes there.
                cursor = start_cursor(await call.initial_metadata()) or cursor
                if cursor and started is not None:
                    started(cursor)
            async for response in call:
                failures = 0
                cursor = cursor_of(response) or cursor
                yield response
            return
        except CLOSED as exc:
            raise_closed(exc)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and ends_at_timeout:
                return  # a watch with a timeout just ends
            if (
                (exc.code() != grpc.StatusCode.UNAVAILABLE and not credential_expired(exc))
                or not may_resume(cursor)
                or failures >= len(RESUME_DELAYS)
                or (ends_at is not None and time.monotonic() + RESUME_DELAYS[failures] >= ends_at)
            ):
                raise PacketbusError.from_rpc_error(exc, changes=False) from None
            await asyncio.sleep(RESUME_DELAYS[failures])
            failures += 1
        finally:
            if call is not None:
                call.cancel()
