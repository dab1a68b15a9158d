"""DispatchStream: Dispatch's batches over one long-lived stream (issue 16).

A unary call costs the server about twice the CPU of a message on an open
stream (bench/README.md, "Latency at low load"), and at low load every packet
of `Client.dispatch()` is a call of its own. On a stream each batch is served
by the unary Dispatch's own code (`PacketService.dispatch`): validation,
authorization of each packet, governance, custody and the idempotent write are
one code path. The only difference is how a batch that fails as a whole is
told: the unary call ends with its status; here `_BatchContext.abort` raises
`BatchRefused` with that same status (code, message, details), which answers
that batch alone, and the stream goes on.

At most `max_in_flight` batches are served or wait for their answer to be
written at once: the stream is not read further until an answer has gone out,
so gRPC's flow control holds the client back and one stream holds at most that
many requests and answers in memory, a client that reads no answers included. Answers go out as the
batches finish, each with its batch id. On drain (_streams.Streams.finishing)
the requests end early: the batches taken are answered, then the stream ends
with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, cast

import grpc
from google.rpc import code_pb2, status_pb2

from packetbus.rich_status import STATUS_DETAILS_KEY
from packetbus.v1 import packet_service_pb2

log = logging.getLogger(__name__)

ServeBatch = Callable[
    [packet_service_pb2.DispatchStreamRequest, grpc.aio.ServicerContext],
    Awaitable[packet_service_pb2.DispatchResponse],
]


class BatchRefused(Exception):
    """One batch failed as a whole; `status` is how the unary Dispatch would have ended."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def _status_of(
    code: grpc.StatusCode, details: str, trailing_metadata: Sequence[tuple[str, Any]]
) -> status_pb2.Status:
    """The google.rpc.Status a unary call aborted so would carry: the rich status of
    its status-details trailer when it has one (BadRequest, ErrorInfo), else the
    code and message alone."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=code.value[0], message=details)


class _BatchContext:
    """The stream's context as one batch sees it: the same in everything (caller,
    metadata, deadline, peer) but `abort`, which fails only this batch."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, Any]] = (),
    ) -> NoReturn:
        raise BatchRefused(_status_of(code, details, trailing_metadata))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Tags of DispatchStreamResponse's fields: batch_id (1, varint), dispatched (2,
# length-delimited).
_BATCH_ID_TAG = b"\x08"
_DISPATCHED_TAG = b"\x12"


def answered(batch_id: int, response: packet_service_pb2.DispatchResponse) -> bytes:
    """DispatchStreamResponse{batch_id, dispatched: response}, serialized: a message's
    wire form is its fields' encodings one after another, so the response's own
    bytes go in as they are (copying it into the field costs per packet)."""
    body = response.SerializeToString()
    head = _BATCH_ID_TAG + _varint(batch_id) if batch_id else b""
    return head + _DISPATCHED_TAG + _varint(len(body)) + body


def refused(batch_id: int, status: status_pb2.Status) -> packet_service_pb2.DispatchStreamResponse:
    return packet_service_pb2.DispatchStreamResponse(batch_id=batch_id, error=status)


async def _answer(
    request: packet_service_pb2.DispatchStreamRequest,
    context: _BatchContext,
    serve: ServeBatch,
) -> bytes | packet_service_pb2.DispatchStreamResponse:
    try:
        # The request itself: dispatch reads only its packets, which it has as a
        # DispatchRequest has them (copying them into one costs per packet).
        response = await serve(request, cast(grpc.aio.ServicerContext, context))
    except BatchRefused as exc:
        return refused(request.batch_id, exc.status)
    except Exception:
        # A bug: the unary call would end UNKNOWN; here the batch is answered INTERNAL
        # (the client treats it as possibly applied) and the stream goes on.
        log.exception("dispatch stream: batch %d failed", request.batch_id)
        status = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
        return refused(request.batch_id, status)
    return answered(request.batch_id, response)


async def answer_batches(
    requests: AsyncIterator[packet_service_pb2.DispatchStreamRequest],
    context: grpc.aio.ServicerContext,
    serve: ServeBatch,
    max_in_flight: int,
) -> AsyncIterator[bytes | packet_service_pb2.DispatchStreamResponse]:
    """Serve each request of `requests` with `serve` (at most `max_in_flight` at
    once), yielding each answer as it is ready; ends when the requests have ended
    and every batch taken is answered. A failure to read the requests (a malformed
    message's INVALID_ARGUMENT, the caller gone) ends the stream with it, after
    the batches already taken are answered."""
    batch_context = _BatchContext(context)
    # Each answer as it is ready; last, the end of the stream (None, or why it ends).
    answers: asyncio.Queue[bytes | packet_service_pb2.DispatchStreamResponse | _End] = (
        asyncio.Queue()
    )
    slots = asyncio.Semaphore(max_in_flight)
    serving: set[asyncio.Task[None]] = set()

    async def serve_one(request: packet_service_pb2.DispatchStreamRequest) -> None:
        try:
            answer = await _answer(request, batch_context, serve)
        except BaseException:
            slots.release()
            raise
        # Its slot is released once the answer is written (below), not now: a client
        # that reads no answers would otherwise have the server take batch after
        # batch, their answers queued here without bound.
        answers.put_nowait(answer)

    async def read() -> None:
        error: Exception | None = None
        try:
            while True:
                # The slot first: at the limit the stream is not read (flow control).
                await slots.acquire()
                try:
                    request = await anext(requests)
                except StopAsyncIteration:
                    break
                task = asyncio.create_task(serve_one(request))
                serving.add(task)
                task.add_done_callback(serving.discard)
        except Exception as exc:  # a malformed message's abort, a broken stream
            error = exc
        if serving:
            await asyncio.wait(set(serving))
        answers.put_nowait(_End(error))

    reader = asyncio.create_task(read())
    try:
        while True:
            answer = await answers.get()
            if isinstance(answer, _End):
                if answer.error is not None:
                    raise answer.error
                return
            yield answer  # resumed when gRPC has taken it (flow control permitting)
            slots.release()
    finally:
        reader.cancel()
        for task in serving:
            task.cancel()


class _End:
    __slots__ = ("error",)

    def __init__(self, error: Exception | None) -> None:
        self.error = error
