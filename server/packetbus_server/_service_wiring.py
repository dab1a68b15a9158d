"""The services a server serves: each servicer built on its store and added behind
the gate and the stream caps, then health and reflection (left open: load balancers
probe without credentials)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

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

from ._access import Gate
from ._agent_reaper import AgentReaper
from ._agent_service import AgentService
from ._agent_store import AgentStore
from ._carcel_service import CarcelService
from ._carcel_store import CarcelStore
from ._context_service import ContextService
from ._context_store import ContextStore
from ._custodian import Custodian
from ._custody_service import CustodyService
from ._export_token import FINDINGS, RECORDS, TASKS
from ._finding_service import FindingService
from ._finding_store import FindingStore
from ._group_service import ConsumerGroupService
from ._group_store import GroupStore
from ._handlers import add_servicer
from ._hop_store import HopStore
from ._key_store import KeyStore
from ._packet_service import PacketService
from ._placed_packets import PlacedPackets
from ._policy_service import Governor, PolicyService
from ._policy_store import PolicyStore
from ._policy_watch import PolicyWatch
from ._record_service import RecordService
from ._record_store import RecordStore
from ._running import published_limits
from ._server_config import ServerConfig
from ._stock_services import HealthServicer, add_health_and_reflection
from ._store_connection import StoreConnection
from ._streams import Streams
from ._task_service import TaskService
from ._task_store import TaskStore
from ._topic_listing import TopicLister
from ._topic_service import TopicService
from ._topic_store import TopicStore


@dataclass(frozen=True)
class WiredServices:
    """What the server's lifecycle drives after wiring: health, and the agent reaper
    (started with the server, stopped with it)."""

    health: HealthServicer
    agent_reaper: AgentReaper


def wire_services(
    server: grpc.aio.Server,
    config: ServerConfig,
    connection: StoreConnection,
    *,
    key_store: KeyStore,
    custodian: Custodian,
    policy_watch: PolicyWatch,
    gate: Gate,
    streams: Streams,
    version: str,
    min_client_ping_ms: int,
) -> WiredServices:
    """Add every packetbus service, health and reflection to `server` (not started);
    `version` and `min_client_ping_ms` are published by GetServerInfo."""
    redis, store, reads, clock = (
        connection.redis,
        connection.store,
        connection.reads,
        connection.clock,
    )
    governor = Governor(
        policy_watch,
        PolicyStore(
            redis,
            store,
            retry_budget=config.retry_budget_seconds,
            retention_ms=config.limits.max_ttl_seconds * 1000,
            carcel_retention_ms=config.limits.carcel_retention_seconds * 1000,
            server_id=custodian.server_id,
        ),
        custodian,
    )
    # Task, finding and record packets, found by tracking id (_placed_packets).
    placed = PlacedPackets(redis, retry_budget=config.retry_budget_seconds)
    packets = PacketService(
        store,
        key_store,
        custodian,
        config.limits,
        version=version,
        max_subscribers=config.max_subscribers,
        governor=governor,
        published_limits=published_limits(config, min_client_ping_ms=min_client_ping_ms),
        clock=clock,
        workers=config.worker_ports,
    )
    packets.serve_placed(placed)
    packet_service = packet_service_pb2.DESCRIPTOR.services_by_name["PacketService"]
    custody_service = custody_service_pb2.DESCRIPTOR.services_by_name["CustodyService"]
    group_service = consumer_group_service_pb2.DESCRIPTOR.services_by_name["ConsumerGroupService"]
    carcel_service = carcel_service_pb2.DESCRIPTOR.services_by_name["CarcelService"]
    task_service = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"]
    finding_service = finding_service_pb2.DESCRIPTOR.services_by_name["FindingService"]
    add_servicer(server, packet_service, packets, streams, gate=gate)
    policy_service = policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"]
    add_servicer(
        server,
        policy_service,
        PolicyService(governor, store, packets, key_store, custodian, config.limits, clock=clock),
        streams,
        gate=gate,
    )
    hops = HopStore(redis, retry_budget=config.retry_budget_seconds)
    # One carcel store (it holds no state of its own) for custody and the carcel service.
    carcels = CarcelStore(
        redis, hops, retry_budget=config.retry_budget_seconds, expander=store.expander
    )
    custody = CustodyService(
        store,
        key_store,
        packets,
        config.limits,
        carcel=carcels,
        policy=governor.store,
        clock=clock,
    )
    add_servicer(server, custody_service, custody, streams, gate=gate)
    topics = TopicStore(
        redis,
        retry_budget=config.retry_budget_seconds,
        retention_ms=config.limits.max_ttl_seconds * 1000,
    )
    topic_service = topic_service_pb2.DESCRIPTOR.services_by_name["TopicService"]
    lister = TopicLister(redis, retry_budget=config.retry_budget_seconds)
    add_servicer(
        server, topic_service, TopicService(topics, config.limits, lister), streams, gate=gate
    )
    groups = GroupStore(
        redis,
        retry_budget=config.retry_budget_seconds,
        carcel_retention_ms=config.limits.carcel_retention_seconds * 1000,
        reads=reads,
        retention=topics,
        expander=store.expander,
        note_topics=store.note_topics,
    )
    add_servicer(
        server,
        group_service,
        ConsumerGroupService(
            groups,
            hops,
            custodian,
            config.limits,
            asyncio.Semaphore(config.max_subscribers),
            clock=clock,
        ),
        streams,
        gate=gate,
    )
    agent_store = AgentStore(
        redis, config.limits, retry_budget=config.retry_budget_seconds, reads=reads
    )
    tasks = TaskService(
        TaskStore(
            redis,
            hops,
            retry_budget=config.retry_budget_seconds,
            carcel_retention_ms=config.limits.carcel_retention_seconds * 1000,
            reads=reads,
            note_queues=store.note_queues,
        ),
        hops,
        key_store,
        custodian,
        config.limits,
        before_claim=agent_store.note_claim,
        clock=clock,
        governor=governor,
        placed=placed,
    )
    add_servicer(server, task_service, tasks, streams, gate=gate)
    custody.serve_placed(TASKS, tasks.export_pages)
    agent_service = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
    add_servicer(
        server,
        agent_service,
        AgentService(agent_store, key_store, config.limits, clock=clock),
        streams,
        gate=gate,
    )
    agent_reaper = AgentReaper(
        agent_store, tasks.release_held, config.limits.agent_reaper_interval_seconds
    )
    findings = FindingService(
        FindingStore(redis, retry_budget=config.retry_budget_seconds),
        store,
        packets,
        key_store,
        custodian,
        config.limits,
        clock=clock,
        governor=governor,
        placed=placed,
    )
    add_servicer(server, finding_service, findings, streams, gate=gate)
    custody.serve_placed(FINDINGS, findings.export_pages)
    add_servicer(
        server,
        carcel_service,
        CarcelService(
            carcels,
            store,
            custodian,
            config.limits,
            clock=clock,
        ),
        streams,
        gate=gate,
    )
    context_service = context_service_pb2.DESCRIPTOR.services_by_name["ContextService"]
    add_servicer(
        server,
        context_service,
        ContextService(
            ContextStore(redis, retry_budget=config.retry_budget_seconds, reads=reads),
            custodian,
            config.limits,
            clock=clock,
            governor=governor,
        ),
        streams,
        gate=gate,
    )
    record_service = record_service_pb2.DESCRIPTOR.services_by_name["RecordService"]
    records = RecordService(
        RecordStore(redis, retry_budget=config.retry_budget_seconds),
        key_store,
        custodian,
        config.limits,
        clock=clock,
        governor=governor,
        placed=placed,
    )
    add_servicer(
        server,
        record_service,
        records,
        streams,
        gate=gate,
    )
    custody.serve_placed(RECORDS, records.export_pages)
    health_servicer = HealthServicer(streams)
    add_health_and_reflection(
        server,
        health_servicer,
        streams,
        (
            packet_service.full_name,
            custody_service.full_name,
            group_service.full_name,
            carcel_service.full_name,
            task_service.full_name,
            finding_service.full_name,
            agent_service.full_name,
            context_service.full_name,
            record_service.full_name,
            policy_service.full_name,
            topic_service.full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        ),
    )
    return WiredServices(health_servicer, agent_reaper)
