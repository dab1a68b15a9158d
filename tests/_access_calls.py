"""One RPC call of the access table (tests/test_access_table.py): `Call` (a
request ready to send, and what its refusal names), `send` (its outcome under
some credential) and `ROWS` (method path -> builder of its Call), filled by the
row modules (_access_rows_topics, _access_rows_work)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from packetbus.v1 import (
    packet_service_pb2,
)
from tests._access_world import Door, Outcome, Stubs, failed, per_packet

OK = grpc.StatusCode.OK
CALL_SECONDS = 10


# -- calls ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One RPC ready to send: `request` (a list of messages for a client stream);
    `resource`: the resource a refusal names when its rule is checked in the
    service (else the rule reads it from the request)."""

    method: str
    request: Any
    resource: str | None = None
    expect: grpc.StatusCode = OK
    # Refused as NOT_FOUND, as if absent: a tracking id names no topic, so a
    # refusal would confirm a guessed id exists (PacketService.load).
    hidden: bool = False
    # A listing that leaves out what the caller may not see, never refused: the
    # principals without the permission get OK and `resource` left out of the
    # listing (ListTopics, ListTaskQueues).
    filtered: bool = False


def _descriptor(method: str) -> Any:
    service, name = method.split("/")
    return descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)


def _stub_method(stubs: Stubs, method: str) -> Any:
    service, name = method.split("/")
    by_service = {
        "packetbus.v1.AgentService": stubs.agents,
        "packetbus.v1.CarcelService": stubs.carcel,
        "packetbus.v1.ConsumerGroupService": stubs.groups,
        "packetbus.v1.ContextService": stubs.context,
        "packetbus.v1.CustodyService": stubs.custody,
        "packetbus.v1.FindingService": stubs.findings,
        "packetbus.v1.PacketService": stubs.packets,
        "packetbus.v1.PolicyService": stubs.policy,
        "packetbus.v1.RecordService": stubs.records,
        "packetbus.v1.TaskService": stubs.tasks,
        "packetbus.v1.TopicService": stubs.topics,
    }
    return getattr(by_service[service], name)


async def send(stubs: Stubs, call: Call, metadata: tuple[tuple[str, str], ...]) -> Outcome:
    """Send `call` with `metadata`; its outcome. A server stream counts as answered
    at its first message (or its end); Dispatch's (and a DispatchStream batch's) one
    packet's result is its outcome."""
    descriptor = _descriptor(call.method)
    method = _stub_method(stubs, call.method)
    try:
        if descriptor.client_streaming and descriptor.server_streaming:
            stream = method(metadata=metadata, timeout=CALL_SECONDS)
            try:
                for message in call.request:
                    await stream.write(message)
                answer = await stream.read()
                if isinstance(answer, packet_service_pb2.DispatchStreamResponse):
                    # A batch's one packet's result (or the batch's error) is its outcome.
                    if answer.HasField("error"):
                        return per_packet(answer.error)
                    (result,) = answer.dispatched.results
                    if result.HasField("error"):
                        return per_packet(result.error)
            finally:
                stream.cancel()
        elif descriptor.client_streaming:
            await method(iter(call.request), metadata=metadata, timeout=CALL_SECONDS)
        elif descriptor.server_streaming:
            stream = method(call.request, metadata=metadata, timeout=CALL_SECONDS)
            try:
                await stream.read()
            finally:
                stream.cancel()
        else:
            response = await method(call.request, metadata=metadata, timeout=CALL_SECONDS)
            if isinstance(response, packet_service_pb2.DispatchResponse):
                (result,) = response.results
                if result.HasField("error"):
                    return per_packet(result.error)
    except grpc.aio.AioRpcError as error:
        return failed(error)
    return Outcome(OK)


# -- the registry of rows ------------------------------------------------------

Builder = Callable[[Door, str], Awaitable[Call]]
ROWS: dict[str, Builder] = {}
A = "packetbus.v1.AgentService/"
CA = "packetbus.v1.CarcelService/"
G = "packetbus.v1.ConsumerGroupService/"
CX = "packetbus.v1.ContextService/"
CU = "packetbus.v1.CustodyService/"
F = "packetbus.v1.FindingService/"
P = "packetbus.v1.PacketService/"
PO = "packetbus.v1.PolicyService/"
R = "packetbus.v1.RecordService/"
T = "packetbus.v1.TaskService/"
TO = "packetbus.v1.TopicService/"


def row(method: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        ROWS[method] = builder
        return builder

    return register
