"""The asyncio client agents use to dispatch, fetch and follow packets."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import replace
from datetime import datetime
from typing import BinaryIO, Literal, TypeAlias, TypeVar, cast

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from packetbus import _tracing
from packetbus.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    carcel_service_pb2,
    carcel_service_pb2_grpc,
    consumer_group_service_pb2,
    consumer_group_service_pb2_grpc,
    contents_pb2,
    context_service_pb2,
    custody_pb2,
    custody_service_pb2,
    custody_service_pb2_grpc,
    finding_service_pb2,
    finding_service_pb2_grpc,
    packet_pb2,
    packet_service_pb2,
    packet_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
    record_service_pb2,
    record_service_pb2_grpc,
    speech_act_pb2,
    task_service_pb2_grpc,
    topic_service_pb2,
    topic_service_pb2_grpc,
)

from . import _custody
from ._agents import Agents, LiveAgent, Liveness
from ._approvals import Governance
from ._batcher import Batcher
from ._config import AgentIdentity, ClientConfig, RetrySettings
from ._consumer import Consumer
from ._context import CHUNK_BYTES, ContextClient, ContextValue
from ._errors import (
    CLOSED,
    PacketbusError,
    SubscriptionGapError,
    raise_closed,
)
from ._export import export_request
from ._export_stream import export_stream
from ._inbox import INBOX_GROUP, Inbox, address_to, inbox_topic, reply_to
from ._pages import collect
from ._retry_policy import Retry, credential_expired, policy_of
from ._retrying import Backoff, retried
from ._security import TlsSettings, Token, channel_credentials, check_token
from ._stopping import ClosedOnExit
from ._tasks import TaskQueue
from ._workers import on_workers

T = TypeVar("T")

DEFAULT_SCHEMA_VERSION = "1.0"
# The server's default; a signed packet carries it explicitly.
DEFAULT_TTL_SECONDS = 3600
KEEPALIVE_MS = 30_000

StartPosition: TypeAlias = packet_service_pb2.StartPosition.ValueType
EARLIEST: StartPosition = packet_service_pb2.START_POSITION_EARLIEST
LATEST: StartPosition = packet_service_pb2.START_POSITION_LATEST


def _tracked(packet: packet_pb2.Packet) -> packet_pb2.Packet:
    # A producer span names the packet's tracking id, so it is filled first.
    if not packet.tracking_id:
        packet.tracking_id = str(uuid.uuid4())
    return packet


def fill_defaults(
    packet: packet_pb2.Packet, identity: AgentIdentity | None = None
) -> packet_pb2.Packet:
    """Fill what a sender may leave out, in place: tracking id, schema version, dispatch time.

    With an `identity`, a packet from that agent (or with no origin yet) that
    has no chain of custody is also signed: schema "1.1", with the agent's
    "originated" entry over the complete packet (so its TTL is filled too).
    Done once, before the first attempt, so every retry sends the same packet
    and the server recognizes it as the same.
    """
    if not packet.tracking_id:
        packet.tracking_id = str(uuid.uuid4())
    if not packet.HasField("dispatched_at"):
        packet.dispatched_at.GetCurrentTime()
    signs = (
        identity is not None
        and not packet.chain_of_custody
        and packet.origin in ("", identity.agent_id)
    )
    if signs and identity is not None:
        packet.origin = identity.agent_id
        sign_as(packet, identity)
    elif not packet.schema_version:
        packet.schema_version = DEFAULT_SCHEMA_VERSION
    return packet


def sign_as(packet: packet_pb2.Packet, identity: AgentIdentity) -> packet_pb2.Packet:
    """Sign `packet`'s origin with `identity`, whatever its origin says (a packet that
    claims another agent's origin is the server's to refuse, PERMISSION_DENIED)."""
    if not packet.ttl_seconds:
        packet.ttl_seconds = DEFAULT_TTL_SECONDS
    return _custody.sign_origin(packet, identity.signer)


class Client(ClosedOnExit):
    """A connection to a packetbus server.

    Create it with ``await Client.connect(...)`` or ``async with await Client.connect(...)``.
    Every call takes ``timeout=`` (seconds; default `ClientConfig.default_timeout`)
    and raises `PacketbusError` on failure. UNAVAILABLE is retried with backoff
    within the timeout for every call the server answers the same when repeated
    (dispatch, by tracking id; see _retry_policy.POLICY); the few that it does
    not are retried only when they surely never reached the server. An error
    says, in `outcome_unknown`, whether the call may have taken effect.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        config: ClientConfig,
        *,
        dispatch_channels: Sequence[grpc.aio.Channel] = (),
    ) -> None:
        self._channel = channel
        self._config = config
        self._stub = packet_service_pb2_grpc.PacketServiceStub(channel)
        self._custody = custody_service_pb2_grpc.CustodyServiceStub(channel)
        self._groups = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel)
        self._topics = topic_service_pb2_grpc.TopicServiceStub(channel)
        self._carcel = carcel_service_pb2_grpc.CarcelServiceStub(channel)
        self._tasks = task_service_pb2_grpc.TaskServiceStub(channel)
        self._findings = finding_service_pb2_grpc.FindingServiceStub(channel)
        self._agents = Agents(
            agent_service_pb2_grpc.AgentServiceStub(channel), self._call, self._deadline
        )
        self._context = ContextClient(channel, self._call, self._deadline, self._config.retry)
        self._records = record_service_pb2_grpc.RecordServiceStub(channel)
        self._governance = Governance(
            policy_service_pb2_grpc.PolicyServiceStub(channel), self._call
        )
        # Dispatch batches take turns over these connections, so a server run
        # with several workers (one port, SO_REUSEPORT) gets work on each.
        self._extra_channels = list(dispatch_channels)
        self._dispatchers = [self._stub] + [
            packet_service_pb2_grpc.PacketServiceStub(c) for c in self._extra_channels
        ]
        self._turn = 0
        self._batcher = Batcher(self._send_batch, config.batching)

    @classmethod
    async def connect(
        cls,
        target: str | None = None,
        *,
        config: ClientConfig | None = None,
        tls: TlsSettings | None = None,
        token: Token | None = None,
        timeout: float | None = 10.0,
    ) -> Client:
        """Open a channel to `target` (default: $PACKETBUS_TARGET or 127.0.0.1:50051).

        `tls` and `token` stand for `config`'s fields of those names (see
        `TlsSettings`; a token: a JWT or a callable returning the current one).
        Waits up to `timeout` seconds for the server to be reachable; None
        returns at once and lets the first call wait instead. Raises ValueError
        for a token that would travel in clear text over a network (no TLS, a
        target that is not loopback nor a unix socket) or is empty, OSError for
        a TLS or token file it cannot read, PacketbusError UNAVAILABLE when the
        server is not reached in time (a failed TLS handshake among the causes).
        """
        config = config or ClientConfig()
        if tls is not None or token is not None:
            config = replace(
                config,
                tls=tls if tls is not None else config.tls,
                token=token if token is not None else config.token,
            )
        address = target or config.target
        if config.token is not None:
            check_token(config.token)
        credentials = channel_credentials(address, config.tls, config.token)
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # gRPC's own transparent retries stay on; ours handle UNAVAILABLE.
            # Keeps idle streams' connections open. No shorter than the server's
            # PERMITTED_PING_INTERVAL_MS, or it closes the connection.
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ]
        if config.connections > 1:
            # Otherwise channels to one address share one TCP connection.
            options.append(("grpc.use_local_subchannel_pool", 1))
        if config.tls is not None and config.tls.server_name:
            options.append(("grpc.ssl_target_name_override", config.tls.server_name))
        traced = _tracing.interceptors()

        def open_channel(to: str) -> grpc.aio.Channel:
            if credentials is None:
                return grpc.aio.insecure_channel(to, options=options, interceptors=traced)
            return grpc.aio.secure_channel(to, credentials, options=options, interceptors=traced)

        channels = [open_channel(address) for _ in range(max(1, config.connections))]
        if timeout is not None:
            try:
                # A task group, not gather: cancelled (Ctrl-C) meanwhile, it ends its
                # waits itself, leaving no "exception was never retrieved".
                async with asyncio.timeout(timeout), asyncio.TaskGroup() as waits:
                    for c in channels:
                        waits.create_task(c.channel_ready())
            except BaseException as exc:
                for c in channels:
                    await c.close()
                if isinstance(exc, TimeoutError):
                    # gRPC keeps a failed handshake's reason to itself: name the suspects.
                    hint = (
                        " (over TLS: check the CA, the server name and the client certificate)"
                        if config.tls is not None
                        # The likeliest mistake with a server that serves TLS: the
                        # client spoke plain text, which gRPC reports as no server.
                        else " (in plain text: if the server serves TLS, give its CA: "
                        "TlsSettings(ca_file=...), --tls-ca or PACKETBUS_TLS_CA)"
                    )
                    raise PacketbusError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"could not reach a packetbus server at {address} within {timeout}s" + hint,
                    ) from None
                raise
            if config.spread_over_workers:
                # A server with several workers: to the one it assigns (see _workers).
                channels = await on_workers(channels, address, open_channel, timeout)
        return cls(channels[0], config, dispatch_channels=channels[1:])

    async def close(self) -> None:
        """Send what is still queued for dispatch, then close the channel."""
        try:
            await self._batcher.close()
        finally:
            for channel in [self._channel, *self._extra_channels]:
                await channel.close()

    @property
    def config(self) -> ClientConfig:
        return self._config

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._config.default_timeout if timeout is None else timeout)

    async def _unary(
        self,
        call: Callable[[float], Awaitable[T]],
        deadline: float,
        policy: Retry = Retry.IDEMPOTENT,
    ) -> T:
        """`call(seconds left)`, retried as `policy` says (see _retrying.retried)."""
        return await retried(call, deadline, policy, self._config.retry)

    async def _call(
        self, method: Callable[..., Awaitable[T]], request: Message, timeout: float | None
    ) -> T:
        """`method(request)`, one unary RPC, retried within `timeout` as the policy of
        its RPC says (_retry_policy.POLICY)."""
        return await self._unary(
            lambda remaining: method(request, timeout=remaining),
            self._deadline(timeout),
            policy_of(request),
        )

    # -- dispatch ---------------------------------------------------------------

    async def dispatch(
        self, packet: packet_pb2.Packet, *, timeout: float | None = None
    ) -> packet_service_pb2.Receipt:
        """Store one packet (batched with others behind the scenes) and return its receipt.

        Fills the tracking id, schema version and dispatch time in place when
        they are missing. Raises `PacketbusError` when the packet is rejected
        (INVALID_ARGUMENT with field violations, ALREADY_EXISTS) or the call fails.
        Concurrent dispatches are not ordered relative to each other; await each
        one, or use `dispatch_batch`, when order matters. With OpenTelemetry and a
        span current, a producer span covers the send and the packet carries its
        context (README "Traces").
        """
        with _tracing.producing(_tracked(packet)):
            return await self._dispatch_one(packet, timeout)

    async def _dispatch_one(
        self, packet: packet_pb2.Packet, timeout: float | None
    ) -> packet_service_pb2.Receipt:
        fill_defaults(packet, self._config.identity)
        # The batcher fails the future with DEADLINE_EXCEEDED at the deadline; a
        # caller cancelled meanwhile cancels only its own future.
        future = await self._batcher.submit(packet, self._deadline(timeout))
        result = await future
        if result.WhichOneof("outcome") == "error":
            raise PacketbusError.from_status(result.error)
        return result.receipt

    async def dispatch_batch(
        self, packets: Sequence[packet_pb2.Packet], *, timeout: float | None = None
    ) -> list[packet_service_pb2.DispatchResult]:
        """Store `packets` in one call; one result per packet, in order.

        A rejected packet is reported in its own result (its ``error``), not
        raised; `PacketbusError` is raised only when the call as a whole fails.
        With OpenTelemetry and a span current, a producer span per packet.
        """
        traced = _tracing.current()  # looked up once per call, not per packet
        with contextlib.ExitStack() as spans:
            for packet in packets:
                if traced:
                    spans.enter_context(_tracing.producing(_tracked(packet)))
                fill_defaults(packet, self._config.identity)
            return list(await self._send_batch(packets, self._deadline(timeout)))

    async def _send_batch(
        self, packets: Sequence[packet_pb2.Packet], deadline: float
    ) -> Sequence[packet_service_pb2.DispatchResult]:
        request = packet_service_pb2.DispatchRequest(packets=packets)
        stub = self._dispatchers[self._turn % len(self._dispatchers)]
        self._turn += 1
        response = await self._unary(
            lambda remaining: stub.Dispatch(request, timeout=remaining), deadline
        )
        return cast(Sequence[packet_service_pb2.DispatchResult], response.results)

    async def flush(self) -> None:
        """Wait until every packet handed to `dispatch` so far has its result."""
        await self._batcher.flush()

    # -- reads ------------------------------------------------------------------

    async def get_packet(
        self, tracking_id: str, *, timeout: float | None = None
    ) -> packet_service_pb2.StoredPacket:
        """Fetch a stored packet; NOT_FOUND when it was never stored or has expired."""
        request = packet_service_pb2.GetPacketRequest(tracking_id=tracking_id)
        response = await self._call(self._stub.GetPacket, request, timeout)
        return cast(packet_service_pb2.StoredPacket, response.packet)

    async def server_info(
        self, *, timeout: float | None = None
    ) -> packet_service_pb2.GetServerInfoResponse:
        return await self._call(
            self._stub.GetServerInfo, packet_service_pb2.GetServerInfoRequest(), timeout
        )

    # -- custody ----------------------------------------------------------------

    async def register_identity(
        self, identity: AgentIdentity | None = None, *, timeout: float | None = None
    ) -> custody_pb2.SigningKey:
        """Register an agent's public key (default: this client's identity) for its id.

        The first key of an agent id binds it; registering the same key again
        is harmless. A further key must be endorsed by a registered one: use
        `endorse_identity`.
        """
        identity = identity or self._config.identity
        if identity is None:
            raise ValueError("no identity: pass one, or connect with ClientConfig(identity=...)")
        message = _custody.agent_key_message(identity.agent_id, identity.signer.public_key)
        request = custody_service_pb2.RegisterAgentKeyRequest(
            agent_id=identity.agent_id,
            public_key=identity.signer.public_key,
            proof=identity.signer.sign(b"", message),
        )
        return await self._register(request, timeout)

    async def endorse_identity(
        self, new: AgentIdentity, endorser: AgentIdentity, *, timeout: float | None = None
    ) -> custody_pb2.SigningKey:
        """Register another key for an agent, endorsed by a key it already has (rotation)."""
        message = _custody.agent_key_message(new.agent_id, new.signer.public_key)
        request = custody_service_pb2.RegisterAgentKeyRequest(
            agent_id=new.agent_id,
            public_key=new.signer.public_key,
            proof=new.signer.sign(b"", message),
            endorsing_key_id=endorser.signer.key_id,
            endorsement=endorser.signer.sign(b"", message),
        )
        return await self._register(request, timeout)

    async def _register(
        self, request: custody_service_pb2.RegisterAgentKeyRequest, timeout: float | None
    ) -> custody_pb2.SigningKey:
        response = await self._call(self._custody.RegisterAgentKey, request, timeout)
        return cast(custody_pb2.SigningKey, response.key)

    async def signing_keys(self, *, timeout: float | None = None) -> list[custody_pb2.SigningKey]:
        """Every public key custody entries may be signed with (servers' and agents')."""
        response = await self._call(
            self._custody.GetSigningKeys, custody_service_pb2.GetSigningKeysRequest(), timeout
        )
        return list(response.keys)

    async def verify_custody(
        self, tracking_id: str, *, timeout: float | None = None
    ) -> custody_service_pb2.VerifyCustodyResponse:
        """The server's verdict on a stored packet's chain, entry by entry."""
        request = custody_service_pb2.VerifyCustodyRequest(tracking_id=tracking_id)
        return await self._call(self._custody.VerifyCustody, request, timeout)

    async def export_packets(
        self, topic: str = "", *, timeout: float | None = None
    ) -> AsyncIterator[packet_service_pb2.StoredPacket]:
        """Every stored packet of `topic` (or of all topics, by name), with content bytes and
        a signed head; resumed after the last one on UNAVAILABLE, as `export` is.
        `timeout` bounds the whole export (None: no limit)."""
        request = custody_service_pb2.ExportPacketsRequest(topic=topic)
        async for response in export_stream(self._custody, request, timeout):
            for stored in response.packets:
                yield stored

    async def export(
        self,
        topic: str = "",
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        include_carcel_entries: bool = False,
        include_decisions: bool = False,
        resume_token: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[custody_service_pb2.ExportPacketsResponse]:
        """For audit: the stored packets of `topic` (or all topics) stored between `since`
        and `until` (naive datetimes are UTC), and optionally the carcel entries and
        governance decisions of that time, as the server sends them (in batches; topics
        by name, within one its packets, then carcel entries, then decisions). A stream
        that ends UNAVAILABLE (a drain, a lost connection) resumes after the last
        response, with no item lost or repeated. Each response's `resume_token`, given
        here with the same other arguments, continues after it (e.g. after a
        PacketbusError). `timeout` bounds the whole export (None: no limit)."""
        request = export_request(
            topic,
            since=since,
            until=until,
            include_carcel_entries=include_carcel_entries,
            include_decisions=include_decisions,
        )
        request.resume_token = resume_token
        async for response in export_stream(self._custody, request, timeout):
            yield response

    async def health(self, *, service: str = "", timeout: float | None = None) -> str:
        """The server's grpc.health.v1 status name: "SERVING" only while its store answers."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._call(stub.Check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- consumer groups -----------------------------------------------------------

    async def create_consumer_group(
        self,
        topic: str,
        name: str,
        *,
        start: StartPosition = LATEST,
        after: str | None = None,
        ack_deadline_seconds: int = 0,
        max_delivery_attempts: int = 0,
        timeout: float | None = None,
    ) -> consumer_group_service_pb2.ConsumerGroup:
        """Create a consumer group on `topic` (or return it, if it exists with these
        settings; other settings are ALREADY_EXISTS). It starts at `start` (EARLIEST
        or LATEST) or right after cursor `after`; 0 means the server's default
        ack deadline (30 s) and max delivery attempts (5)."""
        request = consumer_group_service_pb2.CreateConsumerGroupRequest(
            topic=topic,
            name=name,
            ack_deadline_seconds=ack_deadline_seconds,
            max_delivery_attempts=max_delivery_attempts,
        )
        if after is not None:
            request.after_cursor = after
        else:
            request.start_position = start
        response = await self._call(self._groups.CreateConsumerGroup, request, timeout)
        return cast(consumer_group_service_pb2.ConsumerGroup, response.group)

    async def get_consumer_group(
        self, topic: str, name: str, *, timeout: float | None = None
    ) -> consumer_group_service_pb2.ConsumerGroup:
        request = consumer_group_service_pb2.GetConsumerGroupRequest(topic=topic, name=name)
        response = await self._call(self._groups.GetConsumerGroup, request, timeout)
        return cast(consumer_group_service_pb2.ConsumerGroup, response.group)

    async def list_consumer_groups(
        self, topic: str, *, timeout: float | None = None
    ) -> list[consumer_group_service_pb2.ConsumerGroup]:
        request = consumer_group_service_pb2.ListConsumerGroupsRequest(topic=topic)
        response = await self._call(self._groups.ListConsumerGroups, request, timeout)
        return list(response.groups)

    async def delete_consumer_group(
        self, topic: str, name: str, *, timeout: float | None = None
    ) -> bool:
        """Delete a group and its outstanding deliveries; False when there was none."""
        request = consumer_group_service_pb2.DeleteConsumerGroupRequest(topic=topic, name=name)
        response = await self._call(self._groups.DeleteConsumerGroup, request, timeout)
        return bool(response.deleted)

    async def set_topic_retention(
        self,
        topic: str,
        *,
        max_age_seconds: int = 0,
        max_packets: int = 0,
        max_bytes: int = 0,
        work_queue: bool = False,
        timeout: float | None = None,
    ) -> topic_service_pb2.SetTopicRetentionResponse:
        """Replace a topic's retention limits (0 = no limit) and apply them at once.

        work_queue: packets also leave once every consumer group has acked them.
        Idempotent: setting the same values again changes nothing.
        """
        policy = (
            topic_service_pb2.RETENTION_POLICY_WORK_QUEUE
            if work_queue
            else topic_service_pb2.RETENTION_POLICY_LIMITS
        )
        request = topic_service_pb2.SetTopicRetentionRequest(
            topic=topic,
            retention=topic_service_pb2.TopicRetention(
                max_age_seconds=max_age_seconds,
                max_packets=max_packets,
                max_bytes=max_bytes,
                policy=policy,
            ),
        )
        response = await self._call(self._topics.SetTopicRetention, request, timeout)
        return cast(topic_service_pb2.SetTopicRetentionResponse, response)

    async def get_topic_retention(
        self, topic: str, *, timeout: float | None = None
    ) -> topic_service_pb2.GetTopicRetentionResponse:
        """A topic's retention limits, and the packets (and bytes) it holds now."""
        request = topic_service_pb2.GetTopicRetentionRequest(topic=topic)
        response = await self._call(self._topics.GetTopicRetention, request, timeout)
        return cast(topic_service_pb2.GetTopicRetentionResponse, response)

    def consume(
        self,
        topic: str,
        group: str,
        *,
        consumer: str,
        max_outstanding_packets: int = 1000,
        max_outstanding_bytes: int = 64 * 1024 * 1024,
        max_batch_packets: int = 0,
    ) -> Consumer:
        """Consume `topic` as `consumer` in consumer group `group` (create it first):
        an async iterator of leased Delivery objects to ack, nack or extend.

        The server stops delivering while this consumer holds
        `max_outstanding_packets` unsettled deliveries or `max_outstanding_bytes`
        of them. Use it with ``async with``: closing sends the settlements made
        so far.
        """
        subscription = consumer_group_service_pb2.PullSubscription(
            topic=topic,
            group=group,
            consumer=consumer,
            max_outstanding_packets=max_outstanding_packets,
            max_outstanding_bytes=max_outstanding_bytes,
            max_batch_packets=max_batch_packets,
        )
        retry = self._config.retry
        return Consumer(
            self._groups,
            subscription,
            retry=retry,
            backoff=lambda: Backoff(retry).next_delay,
        )

    async def acknowledge(
        self, topic: str, group: str, delivery_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[consumer_group_service_pb2.SettleResult]:
        """Ack deliveries by id, from anywhere (no Pull stream needed); one result each."""
        request = consumer_group_service_pb2.AcknowledgeRequest(
            topic=topic, group=group, delivery_ids=delivery_ids
        )
        response = await self._call(self._groups.Acknowledge, request, timeout)
        return list(response.results)

    async def nack(
        self,
        topic: str,
        group: str,
        delivery_ids: Sequence[str],
        *,
        delay_seconds: int = 0,
        reason: str = "",
        timeout: float | None = None,
    ) -> list[consumer_group_service_pb2.SettleResult]:
        """Nack deliveries by id, from anywhere; one result each."""
        request = consumer_group_service_pb2.NackRequest(
            topic=topic,
            group=group,
            nacks=[
                consumer_group_service_pb2.Nacked(
                    delivery_id=i, delay_seconds=delay_seconds, reason=reason
                )
                for i in delivery_ids
            ],
        )
        response = await self._call(self._groups.Nack, request, timeout)
        return list(response.results)

    async def extend_leases(
        self, topic: str, group: str, delivery_ids: Sequence[str], *, timeout: float | None = None
    ) -> list[consumer_group_service_pb2.SettleResult]:
        """Renew leases by delivery id, from anywhere; one result each."""
        request = consumer_group_service_pb2.ExtendLeasesRequest(
            topic=topic, group=group, delivery_ids=delivery_ids
        )
        response = await self._call(self._groups.ExtendLeases, request, timeout)
        return list(response.results)

    # -- task queues ----------------------------------------------------------------

    def task_queue(self, name: str) -> TaskQueue:
        """The task queue `name` (a topic name): post, claim, get, list, watch."""
        return TaskQueue(
            name,
            self._tasks,
            self._call,
            lambda packet: fill_defaults(packet, self._config.identity),
        )

    # -- agent registry -------------------------------------------------------------

    async def register_agent(
        self,
        agent_id: str,
        *,
        role: str = "",
        capabilities: Sequence[str] = (),
        parent_id: str = "",
        labels: Mapping[str, str] | None = None,
        endpoint: str = "",
        ttl: int = 0,
        state: str = "",
        identity: AgentIdentity | None = None,
        timeout: float | None = None,
    ) -> agent_service_pb2.RegisterAgentResponse:
        """Register an agent (or update its registration); it must then heartbeat within
        `ttl` seconds (0: the server default, 30) or turn stale, its claimed tasks going
        back to their queues. With `identity` (the same agent id), its public key is
        registered as the agent's signing key too. The response says whether it is new."""
        return await self._agents.register(
            agent_id,
            role=role,
            capabilities=capabilities,
            parent_id=parent_id,
            labels=labels,
            endpoint=endpoint,
            ttl=ttl,
            state=state,
            identity=identity,
            timeout=timeout,
        )

    async def heartbeat_agent(
        self, agent_id: str, *, state: str | None = None, timeout: float | None = None
    ) -> agent_service_pb2.Agent:
        """Keep an agent alive for another TTL, optionally setting its state. NOT_FOUND
        when it is not registered (any more): register it again."""
        return await self._agents.heartbeat(agent_id, state=state, timeout=timeout)

    async def deregister_agent(
        self,
        agent_id: str,
        *,
        cascade: bool = False,
        allow_missing: bool = False,
        timeout: float | None = None,
    ) -> list[str]:
        """Remove an agent (with `cascade`, every agent it spawned too); returns the ids
        removed. NOT_FOUND when it is not registered, unless `allow_missing`."""
        return await self._agents.deregister(
            agent_id, cascade=cascade, allow_missing=allow_missing, timeout=timeout
        )

    async def get_agent(
        self, agent_id: str, *, timeout: float | None = None
    ) -> agent_service_pb2.Agent:
        return await self._agents.get(agent_id, timeout=timeout)

    async def list_agents(
        self,
        *,
        role: str = "",
        capability: str = "",
        parent_id: str = "",
        liveness: Liveness = "any",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> list[agent_service_pb2.Agent]:
        """Registered agents matching every filter given, in id order."""
        return await self._agents.list(
            role=role,
            capability=capability,
            parent_id=parent_id,
            liveness=liveness,
            page_size=page_size,
            timeout=timeout,
        )

    def watch_agents(
        self, *, start: Literal["latest", "earliest"] = "latest", after_cursor: str = ""
    ) -> AsyncIterator[agent_service_pb2.MembershipEvent]:
        """Membership events (joined, left, stale, state changed, ...) as they happen."""
        return self._agents.watch(start=start, after_cursor=after_cursor)

    def agent(
        self,
        agent_id: str,
        *,
        role: str = "",
        capabilities: Sequence[str] = (),
        parent_id: str = "",
        labels: Mapping[str, str] | None = None,
        endpoint: str = "",
        ttl: int = 0,
        state: str = "",
        identity: AgentIdentity | None = None,
        cascade_on_exit: bool = False,
        timeout: float | None = None,
    ) -> LiveAgent:
        """``async with client.agent("worker-1", capabilities=["python"]) as me:``
        registers the agent, heartbeats it every third of its TTL in the background and
        deregisters it on exit."""
        return LiveAgent(
            self._agents,
            agent_id,
            cascade_on_exit=cascade_on_exit,
            timeout=timeout,
            registration={
                "role": role,
                "capabilities": capabilities,
                "parent_id": parent_id,
                "labels": labels,
                "endpoint": endpoint,
                "ttl": ttl,
                "state": state,
                "identity": identity,
            },
        )

    # -- findings -------------------------------------------------------------------

    async def post_finding(
        self,
        finding: contents_pb2.Finding | packet_pb2.Packet,
        *,
        origin: str = "",
        topic: str = "findings",
        timeout: float | None = None,
    ) -> finding_service_pb2.PostFindingResponse:
        """Post a finding of a task (Finding.task_id is required). The response lists the
        earlier findings of the task it conflicts with; each conflict is also published
        once on the topic "findings.conflicts"."""
        if isinstance(finding, packet_pb2.Packet):
            packet = finding
        else:
            packet = packet_pb2.Packet(
                origin=origin,
                topic=topic,
                speech_act=speech_act_pb2.SPEECH_ACT_INFORM,
                finding=finding,
            )
        fill_defaults(packet, self._config.identity)
        request = finding_service_pb2.PostFindingRequest(packet=packet)
        return await self._call(self._findings.PostFinding, request, timeout)

    async def get_finding(
        self, task_id: str, finding_id: str, *, timeout: float | None = None
    ) -> packet_service_pb2.StoredPacket:
        request = finding_service_pb2.GetFindingRequest(task_id=task_id, finding_id=finding_id)
        response = await self._call(self._findings.GetFinding, request, timeout)
        return cast(packet_service_pb2.StoredPacket, response.finding)

    async def list_findings(
        self, task_id: str, *, timeout: float | None = None
    ) -> list[packet_service_pb2.StoredPacket]:
        """A task's findings, first posted first (fetched a page at a time: `timeout`
        is per page)."""

        async def page(token: str) -> finding_service_pb2.ListFindingsResponse:
            request = finding_service_pb2.ListFindingsRequest(task_id=task_id, page_token=token)
            return await self._call(self._findings.ListFindings, request, timeout)

        return await collect(page, lambda r: r.findings)

    async def detect_conflicts(
        self, task_id: str, *, threshold: float = 0.0, timeout: float | None = None
    ) -> list[finding_service_pb2.FindingConflict]:
        """Every conflicting pair among a task's findings (0: the server's threshold, 0.3),
        fetched a page at a time (`timeout` is per page)."""

        async def page(token: str) -> finding_service_pb2.DetectConflictsResponse:
            request = finding_service_pb2.DetectConflictsRequest(
                task_id=task_id, threshold=threshold, page_token=token
            )
            return await self._call(self._findings.DetectConflicts, request, timeout)

        return await collect(page, lambda r: r.conflicts)

    async def escalate(
        self,
        task_id: str,
        finding_ids: Sequence[str],
        *,
        reason: str,
        origin: str = "",
        timeout: float | None = None,
    ) -> packet_service_pb2.StoredPacket:
        """Escalate to a human: an ESCALATE packet on the topic "escalations" carrying the
        supporting findings. `origin` defaults to this client's identity. The server's
        policy judges the packet: a rejection raises PERMISSION_DENIED (ErrorInfo
        POLICY_REJECTED); a held escalation comes back with no receipt cursor, waiting
        for `approve_packet("escalations", its tracking id)`."""
        who = origin or (self._config.identity.agent_id if self._config.identity else "")
        request = finding_service_pb2.EscalateRequest(
            task_id=task_id, origin=who, reason=reason, finding_ids=finding_ids
        )
        response = await self._call(self._findings.Escalate, request, timeout)
        return cast(packet_service_pb2.StoredPacket, response.escalation)

    async def list_escalations(
        self, task_id: str = "", *, timeout: float | None = None
    ) -> list[packet_service_pb2.StoredPacket]:
        """Escalations (of one task, or all), oldest first (fetched a page at a time:
        `timeout` is per page)."""

        async def page(token: str) -> finding_service_pb2.ListEscalationsResponse:
            request = finding_service_pb2.ListEscalationsRequest(task_id=task_id, page_token=token)
            return await self._call(self._findings.ListEscalations, request, timeout)

        return await collect(page, lambda r: r.escalations)

    # -- inboxes and request/reply ---------------------------------------------------

    async def inbox(
        self,
        agent_id: str | None = None,
        *,
        max_outstanding_packets: int = 1000,
        timeout: float | None = None,
    ) -> Inbox:
        """Open `agent_id`'s inbox (default: this client's identity): an async iterator
        of leased deliveries, and `Inbox.request` for request/reply. Creates the inbox's
        consumer group on first use, from the inbox's first packet."""
        agent = agent_id or (self._config.identity.agent_id if self._config.identity else "")
        if not agent:
            raise ValueError("name the agent: inbox(agent_id), or connect with an identity")
        topic = inbox_topic(agent)
        await self.create_consumer_group(topic, INBOX_GROUP, start=EARLIEST, timeout=timeout)
        consumer = self.consume(
            topic, INBOX_GROUP, consumer=agent, max_outstanding_packets=max_outstanding_packets
        )
        return Inbox(self, agent, consumer)

    async def send_to(
        self, agent_id: str, packet: packet_pb2.Packet, *, timeout: float | None = None
    ) -> packet_service_pb2.Receipt:
        """Dispatch `packet` to `agent_id`'s inbox (its topic is set accordingly)."""
        return await self.dispatch(address_to(packet, agent_id), timeout=timeout)

    async def reply(
        self,
        request: packet_service_pb2.StoredPacket | packet_pb2.Packet,
        packet: packet_pb2.Packet,
        *,
        timeout: float | None = None,
    ) -> packet_service_pb2.Receipt:
        """Answer `request`: `packet` goes to the requester's inbox with in_reply_to set."""
        return await self.dispatch(reply_to(request, packet), timeout=timeout)

    # -- shared context -------------------------------------------------------------

    async def put_context(
        self,
        scope: str,
        name: str,
        data: bytes | AsyncIterable[bytes],
        *,
        expected_version: int | None = None,
        ttl: int = 0,
        content_type: str = "",
        author: str = "",
        size: int | None = None,
        sha256: bytes | None = None,
        upload_id: str = "",
        chunk_bytes: int = CHUNK_BYTES,
        timeout: float | None = None,
    ) -> context_service_pb2.ContextDocument:
        """Write a context document of any size (sent in chunks). `expected_version`:
        compare-and-set (0: must not exist), ABORTED when stale; None: any. Streaming
        `data` needs `size` and `sha256` up front. Returns the committed version.

        `upload_id` (a lowercase UUID; default: a new one) makes the put safe to send
        again: the same bytes under it answer the first commit. `data` given as bytes
        is sent again after a lost connection within `timeout`; a stream is read once,
        so a failure says `outcome_unknown` and the caller puts again under the same
        `upload_id`."""
        response = await self._context.put(
            scope,
            name,
            data,
            expected_version=expected_version,
            ttl=ttl,
            content_type=content_type,
            author=author or (self._config.identity.agent_id if self._config.identity else ""),
            size=size,
            sha256=sha256,
            upload_id=upload_id,
            chunk_bytes=chunk_bytes,
            timeout=timeout,
        )
        return response.document

    async def get_context(
        self,
        scope: str,
        name: str,
        *,
        version: int | None = None,
        timeout: float | None = None,
    ) -> ContextValue:
        """A document's current version (or exactly `version`), bytes checked."""
        return await self._context.get(scope, name, version=version, timeout=timeout)

    async def get_context_to(
        self,
        scope: str,
        name: str,
        sink: BinaryIO,
        *,
        version: int | None = None,
        timeout: float | None = None,
    ) -> context_service_pb2.ContextDocument:
        """Stream a document to `sink` (a file) without holding it in memory."""
        return await self._context.get_to(scope, name, sink, version=version, timeout=timeout)

    async def delete_context(
        self,
        scope: str,
        name: str,
        *,
        expected_version: int | None = None,
        author: str = "",
        timeout: float | None = None,
    ) -> context_service_pb2.DeleteContextResponse:
        request = context_service_pb2.DeleteContextRequest(scope=scope, name=name, author=author)
        if expected_version is not None:
            request.expected_version = expected_version
        response: context_service_pb2.DeleteContextResponse = await self._context.call(
            "DeleteContext", request, timeout
        )
        return response

    async def list_contexts(
        self,
        scope: str,
        *,
        name_prefix: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> context_service_pb2.ListContextsResponse:
        """One page of a scope's documents by name (follow next_page_token)."""
        request = context_service_pb2.ListContextsRequest(
            scope=scope, name_prefix=name_prefix, page_size=page_size, page_token=page_token
        )
        response: context_service_pb2.ListContextsResponse = await self._context.call(
            "ListContexts", request, timeout
        )
        return response

    def watch_context(
        self,
        scope: str,
        *,
        name_prefix: str = "",
        after_cursor: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[context_service_pb2.WatchContextResponse]:
        """Changes of a scope's documents as they commit (each once), from after
        `after_cursor` (empty: from now); `timeout` None watches until cancelled."""
        return self._context.watch(
            scope, name_prefix=name_prefix, after_cursor=after_cursor, timeout=timeout
        )

    async def set_global_context(
        self,
        key: str,
        value: str,
        *,
        expected_value: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Set a key of the global context map; with `expected_value` only if the
        current value is that ("": unset), else ABORTED."""
        request = context_service_pb2.SetGlobalContextRequest(key=key, value=value)
        if expected_value is not None:
            request.expected_value = expected_value
        await self._context.call("SetGlobalContext", request, timeout)

    async def get_global_context(self, key: str, *, timeout: float | None = None) -> str:
        request = context_service_pb2.GetGlobalContextRequest(key=key)
        response = await self._context.call("GetGlobalContext", request, timeout)
        return cast(str, response.value)

    async def delete_global_context(self, key: str, *, timeout: float | None = None) -> bool:
        request = context_service_pb2.DeleteGlobalContextRequest(key=key)
        response = await self._context.call("DeleteGlobalContext", request, timeout)
        return bool(response.existed)

    async def list_global_context(self, *, timeout: float | None = None) -> dict[str, str]:
        """Every key and value, fetched a page at a time (`timeout` is per page)."""

        async def page(token: str) -> context_service_pb2.ListGlobalContextResponse:
            request = context_service_pb2.ListGlobalContextRequest(page_token=token)
            response: context_service_pb2.ListGlobalContextResponse = await self._context.call(
                "ListGlobalContext", request, timeout
            )
            return response

        return dict(await collect(page, lambda r: r.entries.items()))

    async def append_memory(
        self,
        agent: str,
        entry: context_service_pb2.LogEntry,
        *,
        ttl: int = 0,
        timeout: float | None = None,
    ) -> int:
        """Append to an agent's memory log (once per entry id); its length after."""
        request = context_service_pb2.AppendMemoryRequest(agent=agent, entry=entry, ttl_seconds=ttl)
        response = await self._context.call("AppendMemory", request, timeout)
        return int(response.length)

    async def list_memory(
        self, agent: str, *, limit: int = 0, timeout: float | None = None
    ) -> list[context_service_pb2.LogEntry]:
        """An agent's memory log, newest first (the `limit` newest, when not 0), fetched
        a page at a time (`timeout` is per page)."""

        async def page(token: str) -> context_service_pb2.ListMemoryResponse:
            request = context_service_pb2.ListMemoryRequest(
                agent=agent, limit=limit, page_token=token
            )
            response: context_service_pb2.ListMemoryResponse = await self._context.call(
                "ListMemory", request, timeout
            )
            return response

        return await collect(page, lambda r: r.entries, most=limit)

    async def append_trace(
        self,
        task_id: str,
        agent: str,
        entry: context_service_pb2.LogEntry,
        *,
        ttl: int = 0,
        timeout: float | None = None,
    ) -> int:
        """Append to an agent's trace of a task (once per entry id); its length after."""
        request = context_service_pb2.AppendTraceRequest(
            task_id=task_id, agent=agent, entry=entry, ttl_seconds=ttl
        )
        response = await self._context.call("AppendTrace", request, timeout)
        return int(response.length)

    async def list_traces(
        self, task_id: str, agent: str, *, limit: int = 0, timeout: float | None = None
    ) -> list[context_service_pb2.LogEntry]:
        """An agent's trace of a task, oldest first (the `limit` oldest, when not 0),
        fetched a page at a time (`timeout` is per page)."""

        async def page(token: str) -> context_service_pb2.ListTracesResponse:
            request = context_service_pb2.ListTracesRequest(
                task_id=task_id, agent=agent, limit=limit, page_token=token
            )
            response: context_service_pb2.ListTracesResponse = await self._context.call(
                "ListTraces", request, timeout
            )
            return response

        return await collect(page, lambda r: r.entries, most=limit)

    # -- swarm records ----------------------------------------------------------------

    async def put_record(
        self,
        record: contents_pb2.SessionSummary
        | contents_pb2.SwarmRegistry
        | contents_pb2.RemediationScan
        | packet_pb2.Packet,
        *,
        origin: str = "",
        topic: str = "records",
        retention: int = 0,
        tracking_id: str = "",
        timeout: float | None = None,
    ) -> record_service_pb2.PutRecordResponse:
        """Store a swarm record (kept for its kind's retention, or `retention` s).

        Its id is the packet's tracking id (`tracking_id` for a record given bare;
        a new UUID when empty): the same record again under it answers the
        original (created False), another is ALREADY_EXISTS."""
        if isinstance(record, packet_pb2.Packet):
            packet = record
        else:
            packet = packet_pb2.Packet(
                origin=origin,
                topic=topic,
                speech_act=speech_act_pb2.SPEECH_ACT_INFORM,
                tracking_id=tracking_id,
            )
            field = {
                contents_pb2.SessionSummary: "session_summary",
                contents_pb2.SwarmRegistry: "swarm_registry",
                contents_pb2.RemediationScan: "remediation_scan",
            }[type(record)]
            getattr(packet, field).CopyFrom(record)
        fill_defaults(packet, self._config.identity)
        request = record_service_pb2.PutRecordRequest(packet=packet, retention_seconds=retention)
        return await self._call(self._records.PutRecord, request, timeout)

    async def get_record(
        self, kind: int, record_id: str, *, timeout: float | None = None
    ) -> packet_service_pb2.StoredPacket:
        request = record_service_pb2.GetRecordRequest(kind=kind, record_id=record_id)  # type: ignore[arg-type]
        response = await self._call(self._records.GetRecord, request, timeout)
        return cast(packet_service_pb2.StoredPacket, response.record)

    async def list_records(
        self,
        kind: int,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> record_service_pb2.ListRecordsResponse:
        """One page of a kind's records, newest first (follow next_page_token)."""
        request = record_service_pb2.ListRecordsRequest(
            kind=kind,  # type: ignore[arg-type]
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(self._records.ListRecords, request, timeout)

    # -- carcel -----------------------------------------------------------------

    async def carcel_entries(
        self,
        topic: str = "",
        *,
        reason: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[carcel_service_pb2.CarcelEntry]:
        """Every carcel entry of `topic` (or of all topics), oldest first, optionally
        only those with `reason`; fetched a page at a time (`timeout` is per page)."""
        token = ""
        while True:
            request = carcel_service_pb2.ListCarcelEntriesRequest(
                topic=topic, reason=reason, page_size=page_size, page_token=token
            )
            response = await self._list_carcel(request, timeout)
            for entry in response.entries:
                yield entry
            token = response.next_page_token
            if not token:
                return

    async def _list_carcel(
        self, request: carcel_service_pb2.ListCarcelEntriesRequest, timeout: float | None
    ) -> carcel_service_pb2.ListCarcelEntriesResponse:
        return await self._call(self._carcel.ListCarcelEntries, request, timeout)

    async def get_carcel_entry(
        self, topic: str, entry_id: str, *, timeout: float | None = None
    ) -> carcel_service_pb2.CarcelEntry:
        request = carcel_service_pb2.GetCarcelEntryRequest(topic=topic, id=entry_id)
        response = await self._call(self._carcel.GetCarcelEntry, request, timeout)
        return cast(carcel_service_pb2.CarcelEntry, response.entry)

    async def requeue_carcel_entry(
        self, topic: str, entry_id: str, *, timeout: float | None = None
    ) -> str:
        """Validate a carceled packet again and deliver it once more to its consumer
        group; returns its new cursor."""
        request = carcel_service_pb2.RequeueCarcelEntryRequest(topic=topic, id=entry_id)
        response = await self._call(self._carcel.RequeueCarcelEntry, request, timeout)
        return str(response.cursor)

    async def purge_carcel(
        self, topic: str, entry_ids: Sequence[str] = (), *, timeout: float | None = None
    ) -> int:
        """Remove these carcel entries of `topic` (all of them when none are named)."""
        request = carcel_service_pb2.PurgeCarcelEntriesRequest(topic=topic, ids=entry_ids)
        response = await self._call(self._carcel.PurgeCarcelEntries, request, timeout)
        return int(response.purged)

    # -- governance -------------------------------------------------------------

    async def get_policy(
        self, *, timeout: float | None = None
    ) -> policy_service_pb2.GetPolicyResponse:
        """The server's governance policy in force (version, rules) and its last load error."""
        return await self._governance.get_policy(timeout)

    async def list_held_packets(
        self, topic: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[policy_service_pb2.HeldPacket]:
        """Packets a policy rule holds for approval (of `topic`, or all), oldest first;
        fetched a page at a time (`timeout` is per page)."""
        async for held in self._governance.held(topic, page_size, timeout):
            yield held

    async def get_held_packet(
        self, topic: str, tracking_id: str, *, timeout: float | None = None
    ) -> policy_service_pb2.HeldPacket:
        return await self._governance.get_held(topic, tracking_id, timeout)

    def _approver(self, identity: AgentIdentity | None) -> AgentIdentity:
        found = identity or self._config.identity
        if found is None:
            raise ValueError("no identity: pass one, or connect with ClientConfig(identity=...)")
        return found

    async def approve_packet(
        self,
        topic: str,
        tracking_id: str,
        *,
        identity: AgentIdentity | None = None,
        note: str = "",
        timeout: float | None = None,
    ) -> packet_service_pb2.Receipt:
        """Approve a held packet: it is stored on its topic, its chain carrying an
        "approved" entry signed with `identity`'s key (default: this client's identity,
        which must be registered). Returns its receipt; approving again is harmless."""
        response = await self._governance.decide(
            topic, tracking_id, self._approver(identity), _custody.APPROVED, note, timeout
        )
        assert isinstance(response, policy_service_pb2.ApprovePacketResponse)
        return response.receipt

    async def deny_packet(
        self,
        topic: str,
        tracking_id: str,
        *,
        reason: str,
        identity: AgentIdentity | None = None,
        timeout: float | None = None,
    ) -> str:
        """Deny a held packet: it goes to its topic's carcel with a signed "denied" entry
        and `reason`. Returns its carcel entry id."""
        response = await self._governance.decide(
            topic, tracking_id, self._approver(identity), _custody.DENIED, reason, timeout
        )
        assert isinstance(response, policy_service_pb2.DenyPacketResponse)
        return str(response.carcel_entry_id)

    async def policy_stats(
        self, topic: str = "", *, timeout: float | None = None
    ) -> policy_service_pb2.GetPolicyStatsResponse:
        """How many packets the policy rejected, held, and agents approved or denied:
        by rule, by reason and by decision (of `topic`, or all topics added up)."""
        return await self._governance.stats(topic, timeout)

    def subscribe(
        self,
        topic: str,
        *,
        start: StartPosition = LATEST,
        after: str | None = None,
        max_batch_packets: int = 0,
        timeout: float | None = None,
        on_gap: GapHandler | None = None,
    ) -> Subscription:
        """Follow `topic`: an async iterator of StoredPacket, in stored order.

        Starts at `start` (EARLIEST or LATEST), or right after cursor `after`.
        After a lost connection it resumes after the last packet it yielded, so
        nothing is skipped or repeated. `timeout` bounds the whole subscription
        (None: until closed).

        Packets it can no longer deliver (removed by retention, or expired,
        before it got to them) are never skipped silently: iteration raises
        `SubscriptionGapError` (DATA_LOSS, with the `SubscriptionGap`), after
        which iterating again continues past the gap; or, with `on_gap`, that
        callback gets the gap and iteration goes on.
        """
        return Subscription(
            self._stub,
            topic,
            start=start,
            after=after,
            max_batch_packets=max_batch_packets,
            deadline=None if timeout is None else time.monotonic() + timeout,
            retry=self._config.retry,
            on_gap=on_gap,
        )


GapHandler: TypeAlias = Callable[[packet_service_pb2.SubscriptionGap], None]
# What a subscription hands out: packets, and the gaps announced before them.
_Item: TypeAlias = packet_service_pb2.StoredPacket | packet_service_pb2.SubscriptionGap


def _items(response: packet_service_pb2.SubscribeResponse | None) -> list[_Item]:
    """What a response hands out, in order: its gap (which comes before its packets), then them."""
    if response is None:
        return []
    gap = [response.gap] if response.HasField("gap") else []
    return [*gap, *response.packets]


class Subscription(ClosedOnExit):
    """An async iterator over a topic's packets; `cursor` is the last one yielded, or
    the end of the last gap it reported."""

    def __init__(
        self,
        stub: packet_service_pb2_grpc.PacketServiceStub,
        topic: str,
        *,
        start: StartPosition,
        after: str | None,
        max_batch_packets: int,
        deadline: float | None,
        retry: RetrySettings,
        on_gap: GapHandler | None = None,
    ) -> None:
        self._stub = stub
        self._topic = topic
        self._start = start
        self.cursor: str | None = after
        self._max_batch = max_batch_packets
        self._deadline = deadline
        self._retry = retry
        self._on_gap = on_gap
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._buffer: list[_Item] = []  # last first
        self._closed = False

    def _request(self) -> packet_service_pb2.SubscribeRequest:
        if self.cursor is not None:
            return packet_service_pb2.SubscribeRequest(
                topic=self._topic, after_cursor=self.cursor, max_batch_packets=self._max_batch
            )
        return packet_service_pb2.SubscribeRequest(
            topic=self._topic, start_position=self._start, max_batch_packets=self._max_batch
        )

    def __aiter__(self) -> AsyncIterator[packet_service_pb2.StoredPacket]:
        return self

    async def __anext__(self) -> packet_service_pb2.StoredPacket:
        while True:
            while not self._buffer:
                if self._closed:
                    raise StopAsyncIteration
                self._buffer = _items(await self._next_batch())
                self._buffer.reverse()
            item = self._buffer.pop()
            if isinstance(item, packet_service_pb2.StoredPacket):
                self.cursor = item.receipt.cursor
                return item
            self._pass_gap(item)

    def _pass_gap(self, gap: packet_service_pb2.SubscriptionGap) -> None:
        # Past the gap first: a caller that catches the error and iterates
        # again (or a reconnect) continues after it, and is not told twice.
        self.cursor = gap.resume_after_cursor
        if self._on_gap is None:
            raise SubscriptionGapError(gap)
        self._on_gap(gap)

    async def _next_batch(self) -> packet_service_pb2.SubscribeResponse | None:
        backoff = Backoff(self._retry)
        failing_since: float | None = None
        while True:
            if self._call is None:
                timeout = None if self._deadline is None else self._deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise PacketbusError(grpc.StatusCode.DEADLINE_EXCEEDED, "subscription ended")
            try:
                if self._call is None:
                    self._call = self._stub.Subscribe(self._request(), timeout=timeout)
                response = await self._call.read()
            except CLOSED as exc:
                if self._closed:  # close() from another task cancels the read
                    return None
                self._call = None
                raise_closed(exc)
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return None
                self._call = None
                # Opened again after a lost connection, or with the current token
                # once the one it was opened with expired.
                if exc.code() != grpc.StatusCode.UNAVAILABLE and not credential_expired(exc):
                    raise PacketbusError.from_rpc_error(exc, changes=False) from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self._retry.reconnect_window:
                    raise PacketbusError.from_rpc_error(exc, changes=False) from None
                await asyncio.sleep(backoff.next_delay())
                continue
            if response is grpc.aio.EOF:
                self._call = None
                if self._closed:
                    return None
                continue
            return cast(packet_service_pb2.SubscribeResponse, response)

    async def close(self) -> None:
        self._closed = True
        self._buffer = []
        if self._call is not None:
            self._call.cancel()
            self._call = None
