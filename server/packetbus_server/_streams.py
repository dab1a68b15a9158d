"""Admission and drain for every streaming RPC.

Each streaming method belongs to a kind with a cap per server, and every
connection (``context.peer()``: one client channel's TCP connection, the unit
until callers are authenticated) has a cap over all its streams together. A
stream beyond either cap is refused at once with RESOURCE_EXHAUSTED, before the
servicer runs, so it costs nothing and never queues.

When the server drains, new streams are refused with UNAVAILABLE and, once
`drain()` is called, every open stream of a kind in `ENDS_ON_DRAIN` ends with
UNAVAILABLE (clients resume on another replica) instead of holding the process
for the whole grace period. Context transfers are left to finish within the
grace period like unary calls: they have an end of their own. A dispatch
stream (``FINISHES_ON_DRAIN``) carries work that must not be cut off: on drain
it reads no more requests, answers the batches it took, then ends with
UNAVAILABLE (`finishing`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc

from ._observability import metrics
from ._status import abort_with_reason
from ._waits import retrieve_outcome

T = TypeVar("T")
R = TypeVar("R")

SUBSCRIBE = "subscribe"
PULL = "pull"
WATCH = "watch"
EXPORT = "export"
TRANSFER = "transfer"
HEALTH_WATCH = "health watch"
DISPATCH = "dispatch"
ENDS_ON_DRAIN = frozenset({SUBSCRIBE, PULL, WATCH, EXPORT, HEALTH_WATCH})
FINISHES_ON_DRAIN = frozenset({DISPATCH})
# The kinds a drain waits for (transfers get the grace period instead).
_DRAINED = ENDS_ON_DRAIN | FINISHES_ON_DRAIN

DRAINING = "this server is draining (shutting down); resume on another replica"


async def draining(context: grpc.aio.ServicerContext) -> NoReturn:
    """End the call UNAVAILABLE with DRAINING, and an ErrorInfo of reason DRAINING
    (domain packetbus), so a client in any language tells a drain (go to another
    replica now) from a lost connection without reading the message."""
    await abort_with_reason(context, grpc.StatusCode.UNAVAILABLE, DRAINING, "DRAINING")


def kind_of(method_name: str) -> str:
    """The kind of a packetbus streaming method, by its name in the proto."""
    if method_name == "Subscribe":
        return SUBSCRIBE
    if method_name == "Pull":
        return PULL
    if method_name == "DispatchStream":
        return DISPATCH
    if method_name.startswith("Watch"):
        return WATCH
    if method_name.startswith("Export"):
        return EXPORT
    return TRANSFER


def _gauge(kind: str) -> Any:
    """packetbus_open_streams of `kind` (its label: the kind, "_" for a space)."""
    child = _GAUGES.get(kind)
    if child is None:
        child = _GAUGES[kind] = metrics.open_streams.labels(kind.replace(" ", "_"))
    return child


# kind -> its labelled gauge, made once (labels() costs a lock and a lookup).
_GAUGES: dict[str, Any] = {}


class Streams:
    """Counts open streams by kind and by peer; ends them on drain.

    `caps`: kind -> most open streams of that kind on this server (a kind
    missing from it is not capped per server). `per_peer`: most open streams of
    any kind on one connection.
    """

    def __init__(self, caps: Mapping[str, int], per_peer: int) -> None:
        self._caps = dict(caps)
        self._per_peer = per_peer
        self._open: Counter[str] = Counter()
        self._by_peer: Counter[str] = Counter()
        self._refusing = False
        self._ending = asyncio.Event()
        self._all_ended = asyncio.Event()
        self._all_ended.set()
        for kind in self._caps:
            _gauge(kind)  # each kind shows, at 0, before its first stream

    def open_streams(self, kind: str | None = None) -> int:
        """Streams open now, of `kind` or of every kind."""
        return self._open[kind] if kind is not None else sum(self._open.values())

    @property
    def draining(self) -> bool:
        """Whether `drain()` has begun: open streams are being ended or finished."""
        return self._ending.is_set()

    def refuse_new(self) -> None:
        """From now on, a new stream is refused with UNAVAILABLE."""
        self._refusing = True

    async def drain(self, timeout: float) -> int:
        """Refuse new streams, end the open ones of the kinds in ENDS_ON_DRAIN with
        UNAVAILABLE, have those in FINISHES_ON_DRAIN finish what they took, and
        wait up to `timeout` seconds for both to be gone.
        Returns how many were still open after that (transfers included)."""
        self._refusing = True
        self._ending.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wait_ended(), timeout)
        return self.open_streams()

    async def _wait_ended(self) -> None:
        while any(self._open[k] for k in _DRAINED):
            self._all_ended.clear()
            await self._all_ended.wait()

    async def _enter(self, context: grpc.aio.ServicerContext, kind: str) -> str:
        if self._refusing:
            await draining(context)
        cap = self._caps.get(kind)
        if cap is not None and self._open[kind] >= cap:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server has {cap} open {kind} streams, its limit; "
                "try another replica or later",
            )
        peer = context.peer() or "unknown"
        if self._by_peer[peer] >= self._per_peer:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this connection has {self._per_peer} open streams, the limit per "
                "connection; close some or open another connection",
            )
        self._open[kind] += 1
        self._by_peer[peer] += 1
        _gauge(kind).inc()
        return peer

    def _leave(self, kind: str, peer: str) -> None:
        self._open[kind] -= 1
        self._by_peer[peer] -= 1
        _gauge(kind).dec()
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]
        if not any(self._open[k] for k in _DRAINED):
            self._all_ended.set()

    async def iterate(
        self, kind: str, context: grpc.aio.ServicerContext, responses: AsyncIterator[T]
    ) -> AsyncIterator[T]:
        """Yield `responses` inside a slot of `kind` (refused if none is free)."""
        peer = await self._enter(context, kind)
        try:
            if kind not in ENDS_ON_DRAIN:
                try:
                    async for response in responses:
                        yield response
                finally:
                    await _close(responses)
                return
            ending = asyncio.ensure_future(self._ending.wait())
            step: asyncio.Future[T] | None = None
            try:
                while not _cancelled(context):
                    # Each response is awaited beside the drain signal, so a stream
                    # idle in a blocking read ends as soon as the drain starts.
                    step = asyncio.ensure_future(anext(responses))
                    # Cancelled between its end and our look, its error is no news.
                    step.add_done_callback(retrieve_outcome)
                    await asyncio.wait((step, ending), return_when=asyncio.FIRST_COMPLETED)
                    if not step.done():
                        await _cancel(step)
                        await _close(responses)
                        await draining(context)
                    try:
                        response = step.result()
                    except StopAsyncIteration:
                        return
                    yield response
            finally:
                ending.cancel()
                if step is not None and not step.done():
                    # This handler was cancelled (the caller went away): so is its step.
                    step.cancel()
                else:
                    # Ended between responses: the servicer's generator cleans up now
                    # (its leases, waits and slots), not whenever it is collected.
                    await _close(responses)
        finally:
            self._leave(kind, peer)

    async def finishing(
        self,
        kind: str,
        context: grpc.aio.ServicerContext,
        requests: AsyncIterator[R],
        serve: Callable[[AsyncIterator[R], grpc.aio.ServicerContext], AsyncIterator[T]],
    ) -> AsyncIterator[T]:
        """Yield the responses of `serve(requests)` inside a slot of `kind`, a kind
        of FINISHES_ON_DRAIN: on drain `serve` sees its requests end (the ones not
        read yet stay unread: the client sends them again), and once it has
        answered what it took the stream ends with UNAVAILABLE, so that the
        client goes on elsewhere."""
        peer = await self._enter(context, kind)
        reading = _UntilDrain(requests)
        ending = asyncio.ensure_future(self._ending.wait())
        # One waiter per stream, not a race per message: messages come often.
        ending.add_done_callback(lambda done: None if done.cancelled() else reading.stop())
        try:
            responses = serve(reading, context)
            try:
                async for response in responses:
                    yield response
            finally:
                await _close(responses)
            if self._ending.is_set():
                await draining(context)
        finally:
            ending.cancel()
            self._leave(kind, peer)

    async def call(self, kind: str, context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
        """Await `call` (a client-streaming or context.write-style handler) inside a
        slot of `kind`; ended with UNAVAILABLE on drain if the kind ends then."""
        try:
            peer = await self._enter(context, kind)
        except BaseException:
            # The call never runs: close it so it is not left un-awaited.
            if asyncio.iscoroutine(call):
                call.close()
            raise
        try:
            if kind not in ENDS_ON_DRAIN:
                return await call
            ending = asyncio.ensure_future(self._ending.wait())
            task = asyncio.ensure_future(call)
            task.add_done_callback(retrieve_outcome)  # as `step` above
            try:
                await asyncio.wait((task, ending), return_when=asyncio.FIRST_COMPLETED)
                if not task.done():
                    await _cancel(task)
                    await draining(context)
                return task.result()
            finally:
                ending.cancel()
                if not task.done():
                    task.cancel()
        finally:
            self._leave(kind, peer)


class _UntilDrain(AsyncIterator[R]):
    """`requests` until they end or `stop()` is called (the drain), whichever comes
    first: a read waiting then is cancelled and ends the iteration instead."""

    def __init__(self, requests: AsyncIterator[R]) -> None:
        self._requests = requests
        self._reader: asyncio.Task[Any] | None = None
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True
        if self._reader is not None:
            self._reader.cancel()

    async def __anext__(self) -> R:
        if self._stopped:
            raise StopAsyncIteration
        reader = self._reader = asyncio.current_task()
        try:
            return await anext(self._requests)
        except asyncio.CancelledError:
            # stop()'s own cancellation (none other pending): the requests end here.
            if self._stopped and reader is not None and reader.uncancel() == 0:
                raise StopAsyncIteration from None
            raise
        finally:
            self._reader = None


def _cancelled(context: grpc.aio.ServicerContext) -> bool:
    """The caller went away: grpc cancels the handler's task, but that can be lost
    while grpc itself awaits a write (see _stream_ends.caller_gone)."""
    task = asyncio.current_task()
    return context.cancelled() or (task is not None and task.cancelling() > 0)


async def _cancel(future: asyncio.Future[T]) -> None:
    future.cancel()
    # Whatever the cancelled step ended with, the stream ends with UNAVAILABLE.
    with contextlib.suppress(BaseException):
        await future


async def _close(responses: AsyncIterator[T]) -> None:
    aclose = getattr(responses, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(BaseException):
            await aclose()
