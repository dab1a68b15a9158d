"""A blocking facade over the asyncio Client, for scripts and threads without a loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

from packetbus.v1 import packet_pb2, packet_service_pb2, topic_service_pb2

from ._client import LATEST, Client, GapHandler, StartPosition, Subscription
from ._config import ClientConfig
from ._errors import client_closed
from ._security import TlsSettings, Token

T = TypeVar("T")


def _run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the client's loop and wait for it; PacketbusError CANCELLED at
    once when that loop no longer runs (the client is closed), not a wait forever."""
    if loop.is_closed() or not loop.is_running():
        coro.close()  # never started: no "never awaited" warning
        raise client_closed()
    future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    return future.result()


class SyncSubscription:
    """A blocking iterator over a topic's packets; see `Subscription`.

    As there, a gap raises `SubscriptionGapError` and iterating again
    continues past it (which a generator could not do: it ends at its first
    exception). Close it, or use it in a ``with`` block.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, subscription: Subscription) -> None:
        self._loop = loop
        self._subscription = subscription

    @property
    def cursor(self) -> str | None:
        return self._subscription.cursor

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> packet_service_pb2.StoredPacket:
        try:
            return _run_on(self._loop, self._subscription.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        _run_on(self._loop, self._subscription.close())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncClient:
    """The same calls as `Client`, blocking; runs its own event loop in a daemon thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, client: Client):
        self._loop = loop
        self._thread = thread
        self._client = client

    @classmethod
    def connect(
        cls,
        target: str | None = None,
        *,
        config: ClientConfig | None = None,
        tls: TlsSettings | None = None,
        token: Token | None = None,
        timeout: float | None = 10.0,
    ) -> SyncClient:
        """See `Client.connect` (its `tls`, `token`, errors); blocking."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="packetbus-client", daemon=True)
        thread.start()
        try:
            client = asyncio.run_coroutine_threadsafe(
                Client.connect(target, config=config, tls=tls, token=token, timeout=timeout), loop
            ).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(loop, thread, client)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return _run_on(self._loop, coro)

    def dispatch(
        self, packet: packet_pb2.Packet, *, timeout: float | None = None
    ) -> packet_service_pb2.Receipt:
        return self._run(self._client.dispatch(packet, timeout=timeout))

    def dispatch_batch(
        self, packets: Sequence[packet_pb2.Packet], *, timeout: float | None = None
    ) -> list[packet_service_pb2.DispatchResult]:
        return self._run(self._client.dispatch_batch(packets, timeout=timeout))

    def get_packet(
        self, tracking_id: str, *, timeout: float | None = None
    ) -> packet_service_pb2.StoredPacket:
        return self._run(self._client.get_packet(tracking_id, timeout=timeout))

    def server_info(
        self, *, timeout: float | None = None
    ) -> packet_service_pb2.GetServerInfoResponse:
        return self._run(self._client.server_info(timeout=timeout))

    def set_topic_retention(
        self,
        topic: str,
        *,
        max_age_seconds: int = 0,
        max_packets: int = 0,
        max_bytes: int = 0,
        work_queue: bool = False,
        timeout: float | None = None,
    ) -> topic_service_pb2.SetTopicRetentionResponse:
        return self._run(
            self._client.set_topic_retention(
                topic,
                max_age_seconds=max_age_seconds,
                max_packets=max_packets,
                max_bytes=max_bytes,
                work_queue=work_queue,
                timeout=timeout,
            )
        )

    def get_topic_retention(
        self, topic: str, *, timeout: float | None = None
    ) -> topic_service_pb2.GetTopicRetentionResponse:
        return self._run(self._client.get_topic_retention(topic, timeout=timeout))

    def health(self, *, service: str = "", timeout: float | None = None) -> str:
        return self._run(self._client.health(service=service, timeout=timeout))

    def subscribe(
        self,
        topic: str,
        *,
        start: StartPosition = LATEST,
        after: str | None = None,
        max_batch_packets: int = 0,
        timeout: float | None = None,
        on_gap: GapHandler | None = None,
    ) -> SyncSubscription:
        """Blocking iterator over `topic`; see `Client.subscribe`. `on_gap` runs on the
        client's event loop thread."""
        subscription = self._client.subscribe(
            topic,
            start=start,
            after=after,
            max_batch_packets=max_batch_packets,
            timeout=timeout,
            on_gap=on_gap,
        )
        return SyncSubscription(self._loop, subscription)

    def close(self) -> None:
        """Close the client and stop its loop's thread; closing again does nothing."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
