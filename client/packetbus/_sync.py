"""A blocking facade over the asyncio Client, for scripts and threads without a loop.

`SyncClient` has every public call of `Client`, made at import from `Client`'s own
members (see `_install_client_calls`), so a call added to `Client` is offered here
with nothing more to write; `_sync_proxy` makes each call and what it returns
blocking.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from ._client import Client
from ._config import ClientConfig
from ._security import TlsSettings, Token
from ._sync_calls import SyncCalls
from ._sync_proxy import SyncProxy, call_blocking, run_on, wrap

# A subscription, like every stream, is a SyncProxy; this name is kept for importers.
SyncSubscription = SyncProxy


class SyncClient(SyncCalls):
    """Every public call of `Client`, blocking; its own event loop runs in a thread.

    Each call takes the same arguments as in `Client` (`timeout=` in seconds among
    them) and raises the same PacketbusError (with the gRPC status). What `Client`
    returns as an object with async calls (a subscription, `consume()`'s consumer
    and its deliveries, `task_queue()` and its claimed tasks, `inbox()`, `agent()`,
    the `watch_*` and `export*` streams) comes back as a `SyncProxy`: blocking
    calls, a plain iterator, a ``with`` block that closes it. Callbacks (`on_gap`)
    run on the client's loop thread. Close the client (or use ``with``): that
    closes the `Client`, then stops and joins its thread.

    For a type checker, `_sync_calls.pyi` (generated from `Client` by
    scripts/generate_sync_types.py; a test checks it is current) gives each call
    `Client`'s parameters and the awaited result; a `SyncProxy`'s own attributes
    are `Any`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, client: Client):
        self._loop = loop
        self._thread = thread
        self._client = client
        # close() from several threads at once: one closes, the others wait for it
        # (two stopping the loop would leave one waiting on a loop that stopped).
        self._closing = threading.Lock()

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
            client = run_on(
                loop, Client.connect(target, config=config, tls=tls, token=token, timeout=timeout)
            )
        except BaseException:
            _stop(loop, thread)
            raise
        return cls(loop, thread, client)

    def close(self) -> None:
        """Close the client, end its open async generators, and stop and join its
        loop's thread; closing again does nothing, and threads closing at once all
        return once it is closed. Calls waiting meanwhile raise PacketbusError
        CANCELLED. Raises RuntimeError on the client's own loop thread (a callback)."""
        with self._closing:
            if self._loop.is_closed():
                return
            try:
                run_on(self._loop, self._client.close())
            finally:
                _stop(self._loop, self._thread)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_running():
        try:
            run_on(loop, loop.shutdown_asyncgens())
        finally:
            loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def client_calls() -> list[str]:
    """The public members of `Client` that `SyncClient` offers: every name not
    starting with "_" (calls and properties), sorted."""
    return sorted(name for name, _ in inspect.getmembers(Client) if not name.startswith("_"))


def _blocking_call(name: str, member: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(member)
    def call(self: SyncClient, *args: Any, **kwargs: Any) -> Any:
        return call_blocking(self._loop, getattr(self._client, name), args, kwargs)

    call.__doc__ = f"Blocking `Client.{name}`. {member.__doc__ or ''}"
    return call


def _blocking_property(name: str) -> property:
    def read(self: SyncClient) -> Any:
        return wrap(self._loop, getattr(self._client, name))

    return property(read, doc=f"`Client.{name}`.")


def _install_client_calls() -> None:
    for name in client_calls():
        if name in vars(SyncClient):  # connect and close: the sync client's own
            continue
        member = inspect.getattr_static(Client, name)
        if isinstance(member, property):
            setattr(SyncClient, name, _blocking_property(name))
        else:
            setattr(SyncClient, name, _blocking_call(name, getattr(Client, name)))


_install_client_calls()
