"""Server reflection answers both grpc.reflection.v1 and v1alpha, as a client calls them.

Each version is called as a generic client would (the bytes of its own messages on its
own method path): list_services, then file_containing_symbol for a packetbus service and
for the reflection service itself.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as alpha

from packetbus_server import RunningServer, _reflection_v1

_VERSIONS = {
    "v1": (_reflection_v1.ServerReflectionRequest, _reflection_v1.ServerReflectionResponse),
    "v1alpha": (alpha.ServerReflectionRequest, alpha.ServerReflectionResponse),
}


async def _ask(port: int, version: str, requests: list[Any]) -> list[Any]:
    request_class, response_class = _VERSIONS[version]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )(iter(requests), timeout=10)
        return [response async for response in call]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_services_and_finds_symbols(
    server: RunningServer, version: str
) -> None:
    request_class, _ = _VERSIONS[version]
    listing, packets, itself = await _ask(
        server.port,
        version,
        [
            request_class(list_services=""),
            request_class(file_containing_symbol="packetbus.v1.PacketService"),
            request_class(file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"),
        ],
    )
    names = {s.name for s in listing.list_services_response.service}
    assert {
        "packetbus.v1.PacketService",
        "packetbus.v1.TaskService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert listing.original_request.list_services == ""

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in packets.file_descriptor_response.file_descriptor_proto
    ]
    assert files[0].name == "packetbus/v1/packet_service.proto"
    assert [s.name for s in files[0].service] == ["PacketService"]

    [reflection_file] = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in itself.file_descriptor_response.file_descriptor_proto
    ]
    assert reflection_file.package == f"grpc.reflection.{version}"
    assert [m.name for m in reflection_file.service[0].method] == ["ServerReflectionInfo"]
    assert reflection_file.service[0].method[0].input_type == (
        f".grpc.reflection.{version}.ServerReflectionRequest"
    )


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_of_an_unknown_symbol_is_not_found(
    server: RunningServer, version: str
) -> None:
    request_class, _ = _VERSIONS[version]
    [answer] = await _ask(
        server.port, version, [request_class(file_containing_symbol="no.such.Service")]
    )
    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert answer.original_request.file_containing_symbol == "no.such.Service"
