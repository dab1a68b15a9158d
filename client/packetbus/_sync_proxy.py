"""The one mechanism behind `SyncClient`: any object of the asyncio client, made blocking.

A `SyncProxy` forwards every attribute of the object it wraps. A call runs on the
client's event loop (in its own thread) and the caller waits for it; an awaitable
it returns (a coroutine, a `Settling`) is awaited there, and what comes back is
wrapped again unless it is plain data (protobuf messages, numbers, strings, ...).
So `task_queue()`, `consume()`, a `Delivery`, an `Inbox`, a `ClaimedTask` and
every stream become blocking too, without a copy of each method: an async
iterator becomes an iterator, an async context manager a context manager, and an
async generator (`watch_agents`, `export`) is closed by `close()` or ``with``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import enum
import inspect
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence, Set
from functools import cache
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf.message import Message

from ._errors import PacketbusError, client_closed

T = TypeVar("T")

# Returned as they are: data, not objects with calls to make blocking.
_DATA = (Message, str, bytes, int, float, bool, datetime.datetime, enum.Enum)


def run_on(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], wait: float | None = None
) -> T:
    """Run `coro` on `loop` (another thread's) and return its result or raise its error.

    Raises PacketbusError CANCELLED at once when the loop no longer runs (its client
    is closed; within 0.25 s when it stops while the call waits), DEADLINE_EXCEEDED
    after `wait` seconds (None: no bound), and RuntimeError when called on `loop`'s
    own thread (a callback), where waiting would never end. On
    either of those, or a KeyboardInterrupt while waiting, the coroutine is
    cancelled on its loop, so nothing keeps running for a caller who left.
    """
    if _running_loop() is loop:
        coro.close()
        raise RuntimeError(
            "a SyncClient call was made on its own event loop's thread (from a callback "
            "such as on_gap): it would wait forever for that thread; use the asyncio "
            "Client there, or hand the call to another thread"
        )
    if loop.is_closed() or not loop.is_running():
        coro.close()  # never started: no "never awaited" warning
        raise client_closed()
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    deadline = None if wait is None else time.monotonic() + wait
    try:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return future.result(
                    _STOPPED_CHECK_S if left is None else min(left, _STOPPED_CHECK_S)
                )
            except concurrent.futures.TimeoutError:
                if not loop.is_running() and not future.done():
                    # The loop stopped (another thread closed the client) after the
                    # check above: nothing will ever run or resolve this call (and
                    # cancelling it would schedule onto a closed loop).
                    if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                        coro.close()  # never started: no "never awaited" warning
                    raise _Abandoned from None
                if left is not None and left <= _STOPPED_CHECK_S:
                    raise
    except _Abandoned:
        raise client_closed() from None
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise PacketbusError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no answer within timeout={wait} s",
            outcome_unknown=True,
        ) from None
    except BaseException:
        future.cancel()  # KeyboardInterrupt, SystemExit: stop the work on the loop too
        raise


class _Abandoned(Exception):
    """A call left unresolved on a loop that stopped."""


# How often a waiting caller checks that the client's loop still runs: a loop that
# stops between a call's check and its scheduling leaves the call unresolved.
_STOPPED_CHECK_S = 0.25


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _invoke(function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    result = function(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


@cache
def _takes_timeout(function: Callable[..., Any]) -> bool:
    try:
        return "timeout" in inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def wrap(loop: asyncio.AbstractEventLoop, value: Any) -> Any:
    """`value` as the blocking caller should see it: data as is (lists, tuples and
    dicts element by element: a list of deliveries holds objects), any other object
    in a `SyncProxy` on `loop`."""
    if value is None or isinstance(value, _DATA):
        return value
    if isinstance(value, list):
        return [wrap(loop, item) for item in value]
    if isinstance(value, tuple):
        return tuple(wrap(loop, item) for item in value)
    if isinstance(value, dict):
        return {key: wrap(loop, item) for key, item in value.items()}
    # Protobuf's repeated and map fields hold data too.
    if isinstance(value, Sequence | Set | Mapping | BaseException | type):
        return value
    return SyncProxy(loop, value)


def call_blocking(
    loop: asyncio.AbstractEventLoop,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Call `function` on `loop`, await what it returns there, and wrap the result.

    `timeout=` (seconds) is accepted by every call: passed on when `function` takes
    one (the RPC deadline, as in the asyncio client), otherwise a bound on the wait
    here (PacketbusError DEADLINE_EXCEEDED when it passes)."""
    wait: float | None = None
    if "timeout" in kwargs and not _takes_timeout(function):
        wait = kwargs.pop("timeout")
    return wrap(loop, run_on(loop, _invoke(function, args, kwargs), wait))


class SyncProxy:
    """A blocking view of one object of the asyncio client (see the module's doc).

    Attributes are those of the wrapped object: calls block and take `timeout=`;
    other attributes are read as they are. Iterate it if the object is an async
    iterator; use it in ``with`` if it is an async context manager or closable.
    Errors are the wrapped object's own (PacketbusError with the gRPC status).
    """

    __slots__ = ("_loop", "_target")

    def __init__(self, loop: asyncio.AbstractEventLoop, target: Any) -> None:
        self._loop = loop
        self._target = target

    def __repr__(self) -> str:
        return f"<blocking {self._target!r}>"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | set(dir(self._target)))

    def __getattr__(self, name: str) -> Any:
        if name == "close" and not hasattr(self._target, "close"):
            name = "aclose"  # an async generator: closing it runs its finally blocks
        attribute = getattr(self._target, name)
        if not callable(attribute) or isinstance(attribute, type):
            return wrap(self._loop, attribute)

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return call_blocking(self._loop, attribute, args, kwargs)

        blocking.__name__ = name
        blocking.__doc__ = getattr(attribute, "__doc__", None)
        return blocking

    def __iter__(self) -> Self:
        if not hasattr(self._target, "__anext__"):
            if not hasattr(self._target, "__aiter__"):
                raise TypeError(f"{self._target!r} is not an async iterator")
            self._target = run_on(self._loop, _invoke(self._target.__aiter__, (), {}))
        return self

    def __next__(self) -> Any:
        try:
            return wrap(self._loop, run_on(self._loop, self._target.__anext__()))
        except StopAsyncIteration:
            raise StopIteration from None

    def __enter__(self) -> Any:
        if hasattr(self._target, "__aenter__"):
            entered = run_on(self._loop, self._target.__aenter__())
            return self if entered is self._target else wrap(self._loop, entered)
        if hasattr(self._target, "close") or hasattr(self._target, "aclose"):
            return self
        raise TypeError(f"{self._target!r} is not a context manager")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if hasattr(self._target, "__aexit__"):
            return bool(run_on(self._loop, self._target.__aexit__(exc_type, exc, tb)))
        self.close()
        return None
