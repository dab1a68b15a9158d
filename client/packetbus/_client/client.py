"""`Client`: a connection to a packetbus server, composed of its groups of calls."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import grpc

from packetbus import _tracing
from packetbus.v1 import (
    agent_service_pb2_grpc,
    carcel_service_pb2_grpc,
    consumer_group_service_pb2_grpc,
    custody_service_pb2_grpc,
    finding_service_pb2_grpc,
    packet_service_pb2_grpc,
    policy_service_pb2_grpc,
    record_service_pb2_grpc,
    task_service_pb2_grpc,
    topic_service_pb2_grpc,
)

from .._agents import Agents
from .._approvals import Governance
from .._batcher import Batcher
from .._config import ClientConfig
from .._context import ContextClient
from .._dispatch_stream import DispatchStream
from .._errors import PacketbusError
from .._security import TlsSettings, Token, channel_credentials, check_token, local_kind
from .._workers import on_workers
from .agent_calls import AgentCalls
from .consumer_group_calls import ConsumerGroupCalls
from .context_calls import ContextCalls
from .custody_calls import CustodyCalls
from .finding_calls import FindingCalls
from .governance_calls import GovernanceCalls
from .packet_calls import PacketCalls
from .record_calls import RecordCalls
from .task_and_inbox_calls import TaskAndInboxCalls
from .token_view import TokenChannel, checked
from .topic_admin_calls import TopicAdminCalls

KEEPALIVE_MS = 30_000


class Client(
    TaskAndInboxCalls,
    PacketCalls,
    CustodyCalls,
    ConsumerGroupCalls,
    TopicAdminCalls,
    AgentCalls,
    FindingCalls,
    ContextCalls,
    RecordCalls,
    GovernanceCalls,
):
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
        # dispatch()'s batches: over a DispatchStream per connection (_dispatch_stream),
        # except in a with_token view, whose calls each carry a token (unary Dispatch).
        streamed = config.batching.use_stream and not isinstance(channel, TokenChannel)
        self._streams = [
            DispatchStream(stub, functools.partial(self._send_on, stub), config.retry)
            for stub in (self._dispatchers if streamed else ())
        ]
        self._batcher = Batcher(self._send_dispatched, config.batching)
        # The address connected to (connect sets it), for with_token's rule.
        self._target = config.target
        # A view (with_token) shares its parent's channels: closing it closes none.
        self._owns_channels = True

    def with_token(self, token: Token) -> Client:
        """A view of this client whose every call carries bearer `token` (a JWT, or a
        callable returning the current one), sharing this client's connection.

        For a service acting for many callers (the A2A gateway): one connection,
        each call made as the principal of the caller's token. The view has its own
        dispatch batcher (packets of different principals never share a batch);
        close it to send what it still queues; closing it closes no connection.

        Raises ValueError when this client sends a token of its own (a call would
        carry two: the server refuses that), for an empty token, and when the
        connection is neither TLS nor to this machine (the rule `connect` applies:
        a bearer token never travels in clear text over a network).
        """
        if self._config.token is not None:
            raise ValueError(
                "with_token: this client already sends a token of its own; connect "
                "without one and give each call's token through with_token"
            )
        if self._config.tls is None and local_kind(self._target) is None:
            raise ValueError(
                f"with_token: a bearer token is sent only over TLS or to this machine, "
                f"and {self._target} is neither"
            )
        checked(token)
        channels = [self._channel, *self._extra_channels]
        wrapped: list[Any] = [TokenChannel(c, token) for c in channels]
        view = Client(wrapped[0], self._config, dispatch_channels=wrapped[1:])
        view._target = self._target
        view._owns_channels = False
        return view

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
        client = cls(channels[0], config, dispatch_channels=channels[1:])
        client._target = address
        return client

    async def close(self) -> None:
        """Send what is still queued for dispatch, then close the channel."""
        try:
            await self._batcher.close()
            for stream in self._streams:
                await stream.close()
        finally:
            if self._owns_channels:
                for channel in [self._channel, *self._extra_channels]:
                    await channel.close()
