"""A Pull stream opened on the bare gRPC stub, its requests fed from a queue, for
tests that send what no client would (bad ids, oversized requests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from packetbus.v1 import consumer_group_service_pb2 as pb

# Puts a request on the stream; None half-closes it.
Requests = asyncio.Queue[pb.PullRequest | None]


def opened_pull(groups: Any, topic: str, group: str = "g") -> tuple[Any, Requests]:
    """A Pull call of consumer "c-1" on `groups` (a ConsumerGroupServiceStub) whose
    first request, the subscription, is already queued; and its request queue."""
    requests: Requests = asyncio.Queue()

    async def send() -> AsyncIterator[pb.PullRequest]:
        while (request := await requests.get()) is not None:
            yield request

    subscription = pb.PullSubscription(topic=topic, group=group, consumer="c-1")
    requests.put_nowait(pb.PullRequest(subscription=subscription))
    return groups.Pull(send()), requests
