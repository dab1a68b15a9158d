"""The state and retried unary calls every group of `Client`'s calls builds on."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message

from packetbus.v1 import (
    carcel_service_pb2_grpc,
    consumer_group_service_pb2_grpc,
    custody_service_pb2_grpc,
    finding_service_pb2_grpc,
    packet_service_pb2_grpc,
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
from .._retry_policy import Retry, policy_of
from .._retrying import retried
from .._stopping import ClosedOnExit

T = TypeVar("T")


if TYPE_CHECKING:

    class _State(ClosedOnExit):
        # Client's attributes (set by Client.__init__), declared for the type checker
        # only: declared at run time they would add __annotations__ to dir(Client).
        _channel: grpc.aio.Channel
        _config: ClientConfig
        _stub: packet_service_pb2_grpc.PacketServiceStub
        _custody: custody_service_pb2_grpc.CustodyServiceStub
        _groups: consumer_group_service_pb2_grpc.ConsumerGroupServiceStub
        _topics: topic_service_pb2_grpc.TopicServiceStub
        _carcel: carcel_service_pb2_grpc.CarcelServiceStub
        _tasks: task_service_pb2_grpc.TaskServiceStub
        _findings: finding_service_pb2_grpc.FindingServiceStub
        _agents: Agents
        _context: ContextClient
        _records: record_service_pb2_grpc.RecordServiceStub
        _governance: Governance
        _extra_channels: list[grpc.aio.Channel]
        _dispatchers: list[packet_service_pb2_grpc.PacketServiceStub]
        _turn: int
        _batcher: Batcher
        _streams: list[DispatchStream]
        _target: str
        _owns_channels: bool

else:
    _State = ClosedOnExit


class ClientCore(_State):
    """What every group of calls of `Client` shares: its connection, stubs and
    settings (set by `Client.__init__`), deadlines, and retried unary calls."""

    @property
    def config(self) -> ClientConfig:
        return self._config

    @property
    def target(self) -> str:
        """The address this client connected to (`connect`'s target or the config's)."""
        return self._target

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
