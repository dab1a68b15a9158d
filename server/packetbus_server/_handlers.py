"""Registers servicers so that a request that is not valid protobuf is INVALID_ARGUMENT.

The generated ``add_*Servicer_to_server`` helpers parse requests with
``FromString``; bytes that do not parse then surface as UNKNOWN, which tells a
client nothing about its own mistake. Here parsing failures are caught and the
RPC is refused as INVALID_ARGUMENT before the servicer runs.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message, message_factory

from ._access import Gate
from ._access.binding import INBOX_READS, admit_inbox_read
from ._access.gate import recheck, watch_call
from ._observability import calls
from ._storage_errors import store_state
from ._streams import FINISHES_ON_DRAIN, Streams, kind_of

# Admits one call of a method (see _access.gate): given the request (None for a
# client stream), aborts the call or lets it run with its caller known.
Admit = Callable[[Any, grpc.aio.ServicerContext], Awaitable[object]]


class _Malformed:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(message_class: type[message.Message]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except message.DecodeError as exc:
            return _Malformed(str(exc))

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext, full_name: str, bad: _Malformed) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request is not a valid {full_name}: {bad.error}",
    )


class _MalformedRequest(Exception):
    """A client stream's message that is not valid protobuf, raised where it is read.

    Not an abort there: a servicer may read its requests in a task of its own
    (DispatchStream's reader, Pull's settler), and an abort from that task ends the
    call at once, dropping what the handler still owes (the answers of batches in
    flight) or meeting one of its writes (INTERNAL). The handler's own task turns
    it into the INVALID_ARGUMENT abort once the servicer has ended with it."""

    def __init__(self, bad: _Malformed) -> None:
        super().__init__(bad.error)
        self.bad = bad


# Every wrapper below observes its call (_observability.calls: metrics and the
# request log) from before admission to its end, so refused calls count too.


def _unary(
    method: Callable[..., Any], full_name: str, admit: Admit, where: tuple[str, str]
) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with calls.Observed(*where, calls.UNARY, request, context) as call:
            if isinstance(request, _Malformed):
                await _refuse(context, full_name, request)
            call.received = 1
            await admit(request, context)
            async with store_state(context):
                response = await method(request, context)
            call.sent = 1
            return response

    return behavior


def _server_streaming(
    method: Callable[..., Any], full_name: str, admit: Admit, where: tuple[str, str]
) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with calls.Observed(*where, calls.SERVER_STREAM, request, context) as call:
            if isinstance(request, _Malformed):
                await _refuse(context, full_name, request)
            call.received = 1
            watch_call()
            await admit(request, context)
            # aclosing: a stream ended here (recheck's abort) closes the servicer's
            # generator now, freeing its stream slot and tasks, not when it is
            # collected (the abort's traceback may keep it for the call's life).
            async with (
                store_state(context),
                contextlib.aclosing(method(request, context)) as responses,
            ):
                async for response in responses:
                    # A stream outlives its admission: a revoked grant or an expired
                    # credential ends it before it sends more (_access.gate.recheck).
                    await recheck(context)
                    call.sent += 1
                    yield response

    return behavior


def _server_streaming_writer(
    method: Callable[..., Any], full_name: str, admit: Admit, where: tuple[str, str]
) -> Callable[..., Any]:
    # For a servicer that streams with context.write (grpc's stock health Watch):
    # grpc refuses a generator that mixes the two styles.
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> None:
        with calls.Observed(*where, calls.SERVER_STREAM, request, context) as call:
            if isinstance(request, _Malformed):
                await _refuse(context, full_name, request)
            call.received = 1
            await admit(request, context)
            async with store_state(context):
                await method(request, context)

    return behavior


def _checked(requests: AsyncIterator[Any], call: calls.Call) -> AsyncIterator[Any]:
    async def checked() -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Malformed):
                raise _MalformedRequest(request)
            call.received += 1
            yield request

    return checked()


def _stream_stream(
    method: Callable[..., Any], full_name: str, admit: Admit, where: tuple[str, str]
) -> Callable[..., Any]:
    async def behavior(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        with calls.Observed(*where, calls.BIDI_STREAM, None, context) as call:
            watch_call()
            await admit(None, context)
            try:
                async with (
                    store_state(context),
                    contextlib.aclosing(method(_checked(requests, call), context)) as responses,
                ):
                    async for response in responses:
                        await recheck(context)  # as in _server_streaming
                        call.sent += 1
                        yield response
            except _MalformedRequest as exc:
                await _refuse(context, full_name, exc.bad)

    return behavior


def _stream_unary(
    method: Callable[..., Any], full_name: str, admit: Admit, where: tuple[str, str]
) -> Callable[..., Any]:
    async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        with calls.Observed(*where, calls.CLIENT_STREAM, None, context) as call:
            await admit(None, context)
            try:
                async with store_state(context):
                    response = await method(_checked(requests, call), context)
            except _MalformedRequest as exc:
                await _refuse(context, full_name, exc.bad)
            call.sent = 1
            return response

    return behavior


def _serializer(message_class: type[message.Message]) -> Callable[[Any], bytes]:
    serialize = message_class.SerializeToString

    def to_bytes(response: Any) -> bytes:
        # A servicer on a hot path may hand over the response already serialized.
        return response if type(response) is bytes else serialize(response)

    return to_bytes


def _admission(gate: Gate, path: str) -> Admit:
    if path not in INBOX_READS:

        def admit(request: Any, context: grpc.aio.ServicerContext) -> Awaitable[object]:
            return gate.admit(path, request, context)

        return admit

    async def admit_reader(request: Any, context: grpc.aio.ServicerContext) -> object:
        # An inbox is read only by its agent (_access.binding): after the RPC's rule.
        principal = await gate.admit(path, request, context)
        await admit_inbox_read(path, request, context)
        return principal

    return admit_reader


def _admitted(
    implementation: Callable[..., Any], streams: Streams, kind: str, *, yields: bool
) -> Callable[..., Any]:
    """`implementation` run only inside a stream slot of `kind` (see _streams);
    `yields`: it is an async generator of responses, else a coroutine."""
    if kind in FINISHES_ON_DRAIN:

        def finishing(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            return streams.finishing(kind, context, requests, implementation)

        return finishing
    if yields:

        def responses(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            return streams.iterate(kind, context, implementation(request, context))

        return responses

    async def response(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await streams.call(kind, context, implementation(requests, context))

    return response


def add_servicer(
    server: grpc.aio.Server,
    service: descriptor.ServiceDescriptor,
    servicer: object,
    streams: Streams | None = None,
    gate: Gate | None = None,
) -> None:
    """Serve every method of `service` from the same-named methods of `servicer`;
    with `streams`, every streaming method is admitted and drained by it; every
    call passes `gate` first (none: a gate that lets every call in as LOCAL)."""
    gate = gate or Gate()
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        implementation = getattr(servicer, method.name)
        # A server-streaming method either yields its responses or writes them with
        # context.write (grpc's stock health Watch); grpc refuses a mix of the two.
        writes = method.server_streaming and not inspect.isasyncgenfunction(implementation)
        if streams is not None and (method.client_streaming or method.server_streaming):
            implementation = _admitted(
                implementation,
                streams,
                kind_of(method.name),
                yields=method.server_streaming and not writes,
            )
        options: dict[str, Any] = {
            "request_deserializer": _lenient(request_class),
            "response_serializer": _serializer(response_class),
        }
        full_name = method.input_type.full_name
        admit = _admission(gate, f"{service.full_name}/{method.name}")
        where = (service.full_name, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _stream_stream(implementation, full_name, admit, where), **options
            )
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _stream_unary(implementation, full_name, admit, where), **options
            )
        elif method.server_streaming:
            wrap = _server_streaming_writer if writes else _server_streaming
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                wrap(implementation, full_name, admit, where), **options
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(implementation, full_name, admit, where), **options
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
