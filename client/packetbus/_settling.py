"""Settlements of consumer-group deliveries: what the caller awaits (Settling), what
waits to go out on the Pull stream (Outgoing), and the unary calls that carry
them when no stream can."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2

from packetbus.v1 import consumer_group_service_pb2 as pb
from packetbus.v1 import consumer_group_service_pb2_grpc

from ._config import RetrySettings
from ._errors import CLOSED, PacketbusError, client_closed, own_cancellation
from ._retry_policy import policy_of
from ._retrying import retried

# How long a settlement sent as a unary call may take, its retries included.
UNARY_TIMEOUT = 30.0
# The most settlements one PullRequest, Acknowledge, Nack or ExtendLeases call
# carries: the server's Limits.max_batch_packets (1000 by default) refuses more
# (INVALID_ARGUMENT, BATCH_TOO_LARGE), so more are sent as several.
SETTLEMENTS_PER_REQUEST = 1000


class Settling:
    """A settlement on its way. Await it to learn how it went: it returns the
    SettleResult, or raises PacketbusError if the server refused it (e.g.
    FAILED_PRECONDITION: the lease ran out), with `outcome_unknown` set when a
    unary call carrying it failed in a way that may have settled it anyway. Not
    awaiting it is fine too."""

    __slots__ = ("_futures", "_unknown")

    def __init__(
        self, futures: Sequence[asyncio.Future[pb.SettleResult]], unknown: set[str] | None = None
    ) -> None:
        self._futures = futures
        # Delivery ids whose unary call failed after it may have reached the server.
        self._unknown = unknown if unknown is not None else set()

    def __await__(self) -> Generator[Any, None, list[pb.SettleResult]]:
        return self._wait().__await__()

    async def _wait(self) -> list[pb.SettleResult]:
        results = list(await asyncio.gather(*self._futures))
        for result in results:
            if result.status.code != code_pb2.OK:
                error = PacketbusError.from_status(result.status)
                error.outcome_unknown = result.delivery_id in self._unknown
                raise error
        return results


@dataclass(slots=True)
class Outgoing:
    acks: list[str] = field(default_factory=list)
    nacks: list[pb.Nacked] = field(default_factory=list)
    extends: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.acks or self.nacks or self.extends)

    def requests(self, most: int = SETTLEMENTS_PER_REQUEST) -> list[pb.PullRequest]:
        """These settlements as PullRequests of at most `most` settlements each
        (none when there are none), acks first, then nacks, then extends."""
        acks, nacks, extends = self.acks, self.nacks, self.extends
        requests = []
        while acks or nacks or extends:
            ack_ids = acks[:most]
            some_nacks = nacks[: most - len(ack_ids)]
            extend_ids = extends[: most - len(ack_ids) - len(some_nacks)]
            requests.append(
                pb.PullRequest(ack_ids=ack_ids, nacks=some_nacks, extend_ids=extend_ids)
            )
            acks = acks[len(ack_ids) :]
            nacks = nacks[len(some_nacks) :]
            extends = extends[len(extend_ids) :]
        return requests


def settle_by_unary(
    stub: consumer_group_service_pb2_grpc.ConsumerGroupServiceStub,
    subscription: pb.PullSubscription,
    kind: str,
    ids: list[str],
    nacks: list[pb.Nacked],
    retry: RetrySettings,
) -> tuple[Settling, Coroutine[Any, Any, None]]:
    """The Settling of `ids`, and the coroutine that sends `kind` ("ack", "nack" with
    `nacks`, "extend") for them as one Acknowledge, Nack or ExtendLeases call (see
    `unary_settle`) and resolves it. Every id resolves: with its SettleResult, or
    with the call's failure as its status (CANCELLED when the client is closed)."""
    loop = asyncio.get_running_loop()
    futures: dict[str, list[asyncio.Future[pb.SettleResult]]] = {}
    for ident in ids:
        futures.setdefault(ident, []).append(loop.create_future())
    unknown: set[str] = set()
    topic, group = subscription.topic, subscription.group

    async def send() -> None:
        failure = PacketbusError(grpc.StatusCode.CANCELLED, "the settlement was cancelled")
        sending: list[str] = []
        try:
            # One call per SETTLEMENTS_PER_REQUEST: the server refuses more per call.
            for start in range(0, len(ids), SETTLEMENTS_PER_REQUEST):
                sending = ids[start : start + SETTLEMENTS_PER_REQUEST]
                part = nacks[start : start + SETTLEMENTS_PER_REQUEST]
                response = await unary_settle(stub, topic, group, kind, sending, part, retry)
                for result in response.results:
                    waiting = futures.get(result.delivery_id)
                    if waiting:
                        waiting.pop(0).set_result(result)
            sending = []
            failure = PacketbusError(grpc.StatusCode.UNKNOWN, "the server's answer left it out")
        except CLOSED as exc:  # cancelled under the call by its own task
            failure = client_closed()
            if own_cancellation(exc):
                raise
        except PacketbusError as exc:  # after retries (the client closed under it too)
            failure = exc
        finally:
            # Failed, cancelled or answered in part: no future waits forever.
            status = failure.status or status_pb2.Status(
                code=failure.code.value[0], message=failure.message
            )
            if failure.outcome_unknown:
                unknown.update(sending)  # the call that failed; later ones never went
            for ident, waiting in futures.items():
                for future in waiting:
                    if not future.done():
                        future.set_result(pb.SettleResult(delivery_id=ident, status=status))

    settling = Settling([f for waiting in futures.values() for f in waiting], unknown)
    return settling, send()


async def unary_settle(
    stub: Any,
    topic: str,
    group: str,
    kind: str,
    ids: list[str],
    nacks: list[pb.Nacked],
    retry: RetrySettings,
) -> Any:
    """The Acknowledge, Nack (with `nacks`) or ExtendLeases call that settles `ids` by
    `kind` ("ack", "nack", "extend") outside a Pull stream, retried as
    `client.acknowledge` is (each is answered the same when repeated: the group
    records its last settlement) within UNARY_TIMEOUT seconds.

    Raises PacketbusError after retries, `outcome_unknown` set when it may have
    been applied."""
    if kind == "ack":
        request: Any = pb.AcknowledgeRequest(topic=topic, group=group, delivery_ids=ids)
        method = stub.Acknowledge
    elif kind == "nack":
        request = pb.NackRequest(topic=topic, group=group, nacks=nacks)
        method = stub.Nack
    else:
        request = pb.ExtendLeasesRequest(topic=topic, group=group, delivery_ids=ids)
        method = stub.ExtendLeases
    return await retried(
        lambda left: method(request, timeout=left),
        time.monotonic() + UNARY_TIMEOUT,
        policy_of(request),
        retry,
    )
