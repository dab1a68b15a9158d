"""Server reflection ``grpc.reflection.v1`` beside the stock ``v1alpha``.

grpcio-reflection ships only ``grpc_reflection.v1alpha`` (upstream asks for v1 in
grpc/grpc#38576), while current clients (grpcurl, Postman, grpc-java, whose
v1alpha is deprecated) ask v1 first. The two protos are the same messages with
the same field numbers under another package (grpc/grpc-proto,
grpc/reflection/v1/reflection.proto), so the v1 file is derived here from the
stock v1alpha descriptor with its package renamed, and the stock servicer
answers v1 calls: each request and response crosses between the two by its
bytes, which are identical.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection, reflection_pb2

# Where grpc/grpc-proto keeps the v1 file; clients resolving it by name find it here.
FILE_NAME = "grpc/reflection/v1/reflection.proto"
PACKAGE = "grpc.reflection.v1"
SERVICE_NAME = f"{PACKAGE}.ServerReflection"
_ALPHA = "." + reflection_pb2.DESCRIPTOR.package + "."


def _derived_file() -> descriptor.FileDescriptor:
    pool = descriptor_pool.Default()
    try:
        # Already there: another module (a later grpcio-reflection) registered it.
        found: descriptor.FileDescriptor = pool.FindFileByName(FILE_NAME)
        return found
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = FILE_NAME
    proto.package = PACKAGE
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(_ALPHA):
                field.type_name = f".{PACKAGE}." + field.type_name[len(_ALPHA) :]
    for method in proto.service[0].method:
        method.input_type = f".{PACKAGE}." + method.input_type[len(_ALPHA) :]
        method.output_type = f".{PACKAGE}." + method.output_type[len(_ALPHA) :]
    # The options of grpc-proto's v1 file (v1alpha's say deprecated).
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    pool.AddSerializedFile(proto.SerializeToString())
    added: descriptor.FileDescriptor = pool.FindFileByName(FILE_NAME)
    return added


DESCRIPTOR = _derived_file()
SERVICE: descriptor.ServiceDescriptor = DESCRIPTOR.services_by_name["ServerReflection"]
ServerReflectionRequest: Any = message_factory.GetMessageClass(
    DESCRIPTOR.message_types_by_name["ServerReflectionRequest"]
)
ServerReflectionResponse: Any = message_factory.GetMessageClass(
    DESCRIPTOR.message_types_by_name["ServerReflectionResponse"]
)


class ReflectionServicer:
    """``grpc.reflection.v1.ServerReflection`` over the services `service_names`
    (full names), answered by the stock v1alpha servicer."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._alpha = reflection.aio.ReflectionServicer(tuple(service_names))

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """One response per request, in order, as v1alpha answers it (same bytes)."""

        async def as_alpha() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            async for request in requests:
                yield reflection_pb2.ServerReflectionRequest.FromString(request.SerializeToString())

        async for response in self._alpha.ServerReflectionInfo(as_alpha(), context):
            yield ServerReflectionResponse.FromString(response.SerializeToString())
