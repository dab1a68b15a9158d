"""Registers servicers so that a request that is not valid protobuf is INVALID_ARGUMENT.

The generated ``add_*Servicer_to_server`` helpers parse requests with
``FromString``; bytes that do not parse then surface as UNKNOWN, which tells a
client nothing about its own mistake. Here parsing failures are caught and the
RPC is refused as INVALID_ARGUMENT before the servicer runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message, message_factory


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


def _unary(method: Callable[..., Any], full_name: str) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await _refuse(context, full_name, request)
        return await method(request, context)

    return behavior


def _server_streaming(method: Callable[..., Any], full_name: str) -> Callable[..., Any]:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, _Malformed):
            await _refuse(context, full_name, request)
        async for response in method(request, context):
            yield response

    return behavior


def _stream_stream(method: Callable[..., Any], full_name: str) -> Callable[..., Any]:
    async def behavior(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Malformed):
                    await _refuse(context, full_name, request)
                yield request

        async for response in method(checked(), context):
            yield response

    return behavior


def _stream_unary(method: Callable[..., Any], full_name: str) -> Callable[..., Any]:
    async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Malformed):
                    await _refuse(context, full_name, request)
                yield request

        return await method(checked(), context)

    return behavior


def _serializer(message_class: type[message.Message]) -> Callable[[Any], bytes]:
    serialize = message_class.SerializeToString

    def to_bytes(response: Any) -> bytes:
        # A servicer on a hot path may hand over the response already serialized.
        return response if type(response) is bytes else serialize(response)

    return to_bytes


def add_servicer(
    server: grpc.aio.Server, service: descriptor.ServiceDescriptor, servicer: object
) -> None:
    """Serve every method of `service` from the same-named methods of `servicer`."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        implementation = getattr(servicer, method.name)
        options: dict[str, Any] = {
            "request_deserializer": _lenient(request_class),
            "response_serializer": _serializer(response_class),
        }
        full_name = method.input_type.full_name
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _stream_stream(implementation, full_name), **options
            )
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _stream_unary(implementation, full_name), **options
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _server_streaming(implementation, full_name), **options
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(implementation, full_name), **options
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
