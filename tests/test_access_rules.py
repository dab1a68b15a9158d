"""Every RPC of every packetbus service says what it needs (_access.permissions)."""

from __future__ import annotations

from packetbus.v1 import (
    agent_service_pb2,
    carcel_service_pb2,
    consumer_group_service_pb2,
    context_service_pb2,
    custody_service_pb2,
    finding_service_pb2,
    packet_service_pb2,
    policy_service_pb2,
    record_service_pb2,
    task_service_pb2,
    topic_service_pb2,
)
from packetbus_server._access.permissions import RULES
from packetbus_server._access.principal import default_agent_id

_MODULES = (
    agent_service_pb2,
    carcel_service_pb2,
    consumer_group_service_pb2,
    context_service_pb2,
    custody_service_pb2,
    finding_service_pb2,
    packet_service_pb2,
    policy_service_pb2,
    record_service_pb2,
    task_service_pb2,
    topic_service_pb2,
)


def _methods() -> set[str]:
    return {
        f"{service.full_name}/{method.name}"
        for module in _MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_every_rpc_has_exactly_one_rule() -> None:
    assert set(RULES) == _methods()
    assert len(RULES) == 69


def test_a_client_stream_is_checked_in_its_service() -> None:
    streaming_in = {
        f"{service.full_name}/{method.name}"
        for module in _MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.client_streaming
    }
    assert streaming_in == {
        "packetbus.v1.ConsumerGroupService/Pull",
        "packetbus.v1.ContextService/PutContext",
        "packetbus.v1.PacketService/DispatchStream",
    }
    assert all(RULES[path].in_service for path in streaming_in)


def test_resources_are_read_from_fields_the_requests_have() -> None:
    from google.protobuf import message_factory
    from google.protobuf.descriptor_pool import Default

    for path, rule in RULES.items():
        if rule.resource is None:
            continue
        service, method = path.split("/")
        descriptor = Default().FindServiceByName(service).FindMethodByName(method)
        request = message_factory.GetMessageClass(descriptor.input_type)()
        assert rule.resource(request) == "", path


def test_a_spiffe_ids_agent_is_its_last_segment() -> None:
    assert default_agent_id("spiffe://example.org/agent/planner-1") == "planner-1"
    assert default_agent_id("spiffe://example.org/") == "spiffe://example.org/"
    assert default_agent_id("worker-3") == "worker-3"
