"""The store's failures as an RPC's status: unavailable (retry), refused (a full
store, a disk it cannot write: its code and reason), a key of another type
(FAILED_PRECONDITION, STORE_KEY_WRONG_TYPE), failed (INTERNAL).

Apart from PacketService (_packet_service), where it began, because every
servicer wraps its store calls in it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from redis.exceptions import ResponseError

from . import _status
from ._key_types import is_wrong_type
from ._refusals import ERROR_REASONS, reply_text
from ._retry import (
    StoreFailedError,
    StoreRefusedError,
    StoreUnavailableError,
    StoreWrongTypeError,
)

log = logging.getLogger("packetbus.server.store")

STORE_KEY_WRONG_TYPE = "STORE_KEY_WRONG_TYPE"


@contextlib.asynccontextmanager
async def storage_errors(
    context: grpc.aio.ServicerContext, *, retry_hint: str = "retrying is safe"
) -> AsyncIterator[None]:
    """Turn the store's failures into the RPC's status."""
    try:
        yield
    except StoreUnavailableError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; {retry_hint}")
    except StoreRefusedError as exc:  # a full store, a disk it cannot write: not a bug
        message = str(exc)
        trailer = _status.error_info_trailer(
            exc.code, message, ERROR_REASONS.get(exc.kind, exc.kind)
        )
        await context.abort(exc.code, message, trailing_metadata=trailer)
    except StoreWrongTypeError as exc:
        await wrong_type(context, exc)
    except StoreFailedError as exc:
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))


@contextlib.asynccontextmanager
async def store_state(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Around a whole call (_handlers): a WRONGTYPE the servicer met outside
    storage_errors (a raw redis reply, a store call it does not wrap) ends the call
    as storage_errors would, never UNKNOWN with a traceback."""
    try:
        yield
    except StoreWrongTypeError as exc:
        await wrong_type(context, exc)
    except ResponseError as exc:
        if not is_wrong_type(exc):
            raise
        await wrong_type(context, StoreWrongTypeError(getattr(exc, "found", None), reply_text(exc)))


async def wrong_type(context: grpc.aio.ServicerContext, exc: StoreWrongTypeError) -> None:
    """End the call for a key of another Redis type than the server keeps there.

    FAILED_PRECONDITION, not DATA_LOSS: the store is not in the state the call needs
    (a key the server did not make), nothing acknowledged is known lost, and only
    an operator can fix it, so a client must not retry as if it were transient;
    DATA_LOSS already means a subscription's or watch's gap to clients, which they
    resume past. Not INTERNAL: no bug of the server's. Logged here, once per call
    at ERROR, in one line (no traceback): the key and the types, never the URL."""
    found = exc.found
    metadata = (
        {"key": found.key, "expected": found.expected, "found": found.found}
        if found is not None
        else {"key": "", "expected": "", "found": ""}
    )
    log.error("%s: %s", STORE_KEY_WRONG_TYPE, exc)
    await _status.abort_with_reason(
        context, grpc.StatusCode.FAILED_PRECONDITION, str(exc), STORE_KEY_WRONG_TYPE, metadata
    )
