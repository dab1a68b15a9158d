"""The batcher's batches over one long-lived DispatchStream per connection (issue 16).

A unary Dispatch call costs the server about twice the CPU of a message on an
open stream, and at low load every packet of `Client.dispatch()` goes alone
(_batcher sends at once when nothing is in flight). So each connection keeps one
DispatchStream open and sends the batcher's batches on it, each with a batch id
its answer comes back with.

When the stream cannot carry a batch, the batch goes by unary Dispatch on the
same connection (retried within the call's deadline as ever, _retrying):

- the server has no DispatchStream (UNIMPLEMENTED: an older server): every
  batch from then on;
- the stream ended before the batch's answer came (a drained server, a lost
  connection, an expired credential): the same packets again. Dispatch is
  idempotent by tracking id and meaning, so a batch the server did store answers
  its original receipts, and nothing is stored twice. The next batch opens a new
  stream; one that ended without answering anything (refused at once: draining,
  no connection, a full server) is tried again only after a backoff;
- the batch's answer is UNAVAILABLE (the store did not answer): retried as the
  unary call retries it.

Any other error of a batch is raised as the unary call would raise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from google.rpc import code_pb2

from packetbus.v1 import packet_pb2, packet_service_pb2, packet_service_pb2_grpc

from ._config import RetrySettings
from ._errors import PacketbusError
from ._retry_policy import MAYBE_APPLIED, never_sent
from ._retrying import Backoff

SendBatch = Callable[
    [Sequence[packet_pb2.Packet], float], Awaitable[Sequence[packet_service_pb2.DispatchResult]]
]
Answer = packet_service_pb2.DispatchStreamResponse

# How long close() lets the server end the stream after the client's half-close.
_CLOSE_SECONDS = 1.0


class _Lost(Exception):
    """The stream ended before the batch's answer came; `written`: the batch was
    handed to the stream, so it may have been stored."""

    def __init__(self, *, written: bool = True) -> None:
        super().__init__()
        self.written = written


class _Open:
    """One open DispatchStream call and the batches waiting for its answers."""

    __slots__ = ("answered", "call", "never_sent", "reader", "waiting", "writing")

    def __init__(
        self, call: grpc.aio.StreamStreamCall[packet_service_pb2.DispatchStreamRequest, Answer]
    ) -> None:
        self.call = call
        self.waiting: dict[int, asyncio.Future[Answer]] = {}
        # One write at a time: grpc.aio takes a stream's messages one by one.
        self.writing = asyncio.Lock()
        self.answered = False
        # Ended before anything left the client (no connection, no bearer token:
        # _retry_policy.never_sent): the batches it took were not sent either.
        self.never_sent = False
        self.reader: asyncio.Task[None] | None = None


class DispatchStream:
    """Sends batches over `stub`'s DispatchStream, or by `unary` (Dispatch on the same
    connection, retried) when the stream cannot carry them; `retry` paces the
    reopening of a stream that was refused."""

    def __init__(
        self,
        stub: packet_service_pb2_grpc.PacketServiceStub,
        unary: SendBatch,
        retry: RetrySettings,
    ) -> None:
        self._stub = stub
        self._unary = unary
        self._open: _Open | None = None
        self._next_id = 0
        self._backoff = Backoff(retry)
        # time.monotonic() before which batches go by unary call (a refused stream).
        self._stream_again_at = 0.0
        self._unsupported = False
        self._closed = False

    @property
    def streaming(self) -> bool:
        """Whether the next batch is sent on the stream (not by unary Dispatch)."""
        return not (self._unsupported or self._closed or time.monotonic() < self._stream_again_at)

    async def send(
        self, packets: Sequence[packet_pb2.Packet], deadline: float
    ) -> Sequence[packet_service_pb2.DispatchResult]:
        """One result per packet, as Dispatch answers; raises PacketbusError as the
        unary call would (DEADLINE_EXCEEDED at `deadline`, time.monotonic())."""
        if not self.streaming:
            return await self._unary(packets, deadline)
        try:
            answer = await self._over_stream(packets, deadline)
        except _Lost as lost:
            return await self._resend(packets, deadline, written=lost.written)
        if answer.WhichOneof("outcome") == "dispatched":
            return answer.dispatched.results
        status = answer.error
        if status.code == code_pb2.UNAVAILABLE:
            return await self._resend(packets, deadline, written=True)
        refused = PacketbusError.from_status(status)
        refused.outcome_unknown = refused.code in MAYBE_APPLIED
        raise refused

    async def _resend(
        self, packets: Sequence[packet_pb2.Packet], deadline: float, *, written: bool
    ) -> Sequence[packet_service_pb2.DispatchResult]:
        """The same packets by unary Dispatch; `written`: the stream took them, so a
        failure of the unary call may leave them stored all the same."""
        try:
            return await self._unary(packets, deadline)
        except PacketbusError as error:
            # The unary call judges only its own attempts.
            if written and error.code in MAYBE_APPLIED:
                error.outcome_unknown = True
            raise

    async def _over_stream(self, packets: Sequence[packet_pb2.Packet], deadline: float) -> Answer:
        stream = self._open or self._start()
        self._next_id += 1
        batch_id = self._next_id
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        stream.waiting[batch_id] = future
        request = packet_service_pb2.DispatchStreamRequest(batch_id=batch_id, packets=packets)
        try:
            # One timer for the write (held back by flow control while the server
            # is at its limit of batches in flight) and the answer.
            async with asyncio.timeout(deadline - time.monotonic()):
                async with stream.writing:
                    try:
                        await stream.call.write(request)
                    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                        # Ended before the write: its reader says why (UNIMPLEMENTED...).
                        raise _Lost(written=False) from None
                return await future
        except TimeoutError:
            raise PacketbusError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "timeout spent waiting for the batch's answer on the dispatch stream "
                "(it may have been stored); dispatching the same packets again is safe",
                outcome_unknown=True,
            ) from None
        finally:
            stream.waiting.pop(batch_id, None)

    def _start(self) -> _Open:
        stream = _Open(self._stub.DispatchStream())
        stream.reader = asyncio.create_task(self._read(stream))
        self._open = stream
        return stream

    async def _read(self, stream: _Open) -> None:
        """Hand each answer to its batch until the stream ends; then fail the batches
        still waiting (they go by unary call) and close the way for a new stream."""
        try:
            while True:
                answer = await stream.call.read()
                if answer is grpc.aio.EOF:
                    return
                stream.answered = True
                future = stream.waiting.pop(answer.batch_id, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._unsupported = True
            stream.never_sent = never_sent(exc)
        finally:
            if self._open is stream:
                self._open = None
            if stream.answered:
                self._backoff.reset()
            else:
                self._stream_again_at = time.monotonic() + self._backoff.next_delay()
            for future in stream.waiting.values():
                if not future.done():
                    future.set_exception(_Lost(written=not stream.never_sent))
                    # Retrieved here: a batch whose write failed first raises _Lost
                    # itself and never awaits its future.
                    future.exception()
            stream.waiting.clear()

    async def close(self) -> None:
        """End the stream (the batcher has no batch in flight by now); later batches
        go by unary call."""
        self._closed = True
        stream, self._open = self._open, None
        if stream is None or stream.reader is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_SECONDS):
                await stream.call.done_writing()
                await asyncio.shield(stream.reader)
        stream.call.cancel()
        stream.reader.cancel()
        with contextlib.suppress(BaseException):
            await stream.reader
