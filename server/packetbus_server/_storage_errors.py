"""The store's failures as an RPC's status: unavailable (retry), refused (a full
store, a disk it cannot write: its code and reason), failed (INTERNAL).

Apart from PacketService (_packet_service), where it began, because every
servicer wraps its store calls in it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from . import _status
from ._refusals import ERROR_REASONS
from ._retry import StoreFailedError, StoreRefusedError, StoreUnavailableError


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
    except StoreFailedError as exc:
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))
