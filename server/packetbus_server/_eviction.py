"""The store must never evict: its maxmemory-policy has to be ``noeviction``.

Packet keys carry TTLs, so under memory pressure a store with any other policy
(volatile-* as much as allkeys-*) deletes acknowledged packets without a trace:
they answer NOT_FOUND, and a producer that sends one again stores it twice.
Under ``noeviction`` a full store refuses writes instead (RESOURCE_EXHAUSTED,
see _refusals), and everything acknowledged stays.

The policy is read at start (a store that may evict: the server does not start)
and again with every health check, so a policy changed under a running server,
or a store failed over to one configured differently, is seen within a health
interval: health turns NOT_SERVING and every call that may write is refused with
UNAVAILABLE (reads still answer) until the policy is ``noeviction`` again. An
operator who accepts the loss can run with ``allow_eviction`` (serve
``--allow-store-eviction``): then the server serves anyway and logs a warning.

Like Sidekiq and BullMQ, it reads CONFIG GET maxmemory-policy, or INFO memory's
maxmemory_policy where CONFIG is refused (managed stores, ACL users); a policy
that can be read neither way is treated as one that may evict.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster

from ._scripts import RedisClient
from ._status import error_info_trailer

# The ErrorInfo reason (domain "packetbus") of a call refused while the store may
# evict: nothing of it ran (README: "The store: eviction ...").
NOT_APPLIED_REASON = "STORE_MAY_EVICT"

log = logging.getLogger("packetbus.server")

NOEVICTION = "noeviction"
ALLOW_FLAG = "--allow-store-eviction"

# Calls that only read still answer while writes are refused; any other method
# (a new one included) is taken to write. These stock services only read.
_READ_ONLY_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
_NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


@functools.lru_cache(maxsize=512)
def read_only(method: str) -> bool:
    """Whether the RPC `method` ("/package.Service/Method") only reads the store:
    one of the stock read-only services, or a method its proto declares so
    (`option idempotency_level = NO_SIDE_EFFECTS`, which the client's retry
    policy reads too). A method not known here is taken to write."""
    service, _, name = method[1:].partition("/")
    if service in _READ_ONLY_SERVICES:
        return True
    try:
        found = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return False
    return bool(found.GetOptions().idempotency_level == _NO_SIDE_EFFECTS)


class EvictionPolicyError(ValueError):
    """The store may evict (or its policy cannot be read) and eviction is not allowed."""


async def _policy(
    config_get: Callable[[], Awaitable[Any]], info: Callable[[], Awaitable[Any]]
) -> str | None:
    """One node's maxmemory-policy, or None when neither command may be run."""
    try:
        found = (await config_get()).get("maxmemory-policy")
        if found:
            return str(found)
    except rx.ResponseError:  # NOPERM, or CONFIG renamed away: INFO may still answer
        pass
    try:
        found = (await info()).get("maxmemory_policy")
    except rx.ResponseError:
        return None
    # Some managed stores answer "" here: as good as unknown.
    return str(found) if found else None


async def store_policies(redis: RedisClient) -> dict[str, str | None]:
    """The maxmemory-policy of every node of the store (one for a single Redis,
    each primary and replica of a cluster: a replica may be promoted), by node
    ("host:port"); None where it cannot be read. Raises redis's connection errors."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # before its first command it knows only the startup node
        found: dict[str, str | None] = {}
        for node in redis.get_nodes():
            found[node.name] = await _policy(
                lambda n=node: redis.config_get("maxmemory-policy", target_nodes=n),  # type: ignore[misc]
                lambda n=node: redis.info("memory", target_nodes=n),  # type: ignore[misc]
            )
        return found
    where = redis.connection_pool.connection_kwargs
    name = where.get("path") or f"{where.get('host', 'localhost')}:{where.get('port', 6379)}"
    return {name: await _policy(lambda: redis.config_get("maxmemory-policy"), redis.info)}


def problem(policies: dict[str, str | None]) -> str | None:
    """Why a store with these `policies` may lose acknowledged packets, or None."""
    evicting = {node: p for node, p in policies.items() if p != NOEVICTION}
    if not evicting:
        return None
    unread = sorted(node for node, p in evicting.items() if p is None)
    read = {node: p for node, p in evicting.items() if p is not None}
    parts = [f"maxmemory-policy is {p!r} on {node}" for node, p in sorted(read.items())]
    if unread:
        parts.append(
            f"maxmemory-policy cannot be read on {', '.join(unread)} "
            "(CONFIG GET and INFO memory both refused)"
        )
    return (
        f"the store's {'; '.join(parts)}: a store that may evict deletes acknowledged "
        f"packets under memory pressure, and packetbus needs maxmemory-policy {NOEVICTION} "
        f"(CONFIG SET maxmemory-policy {NOEVICTION}, and the same in its config file)"
    )


async def require_noeviction(redis: RedisClient) -> None:
    """Raise EvictionPolicyError unless every node of the store is noeviction."""
    found = problem(await store_policies(redis))
    if found is not None:
        raise EvictionPolicyError(f"{found}; or serve with {ALLOW_FLAG} to risk the loss")


class EvictionGuard:
    """Whether the store may evict, as of its last `check`, and what that stops."""

    def __init__(self, redis: RedisClient, *, allow_eviction: bool) -> None:
        self._redis = redis
        self._allow = allow_eviction
        self._problem: str | None = None
        self._checked = False

    @property
    def problem(self) -> str | None:
        """Why the store may evict (as of the last check), or None."""
        return self._problem

    @property
    def writes_refused(self) -> str | None:
        """The reason calls that may write are refused now, or None when they are not."""
        if self._problem is None or self._allow:
            return None
        return (
            f"refused: {self._problem}. This server takes no writes until then "
            "(reads still answer); nothing was written"
        )

    async def check(self) -> str | None:
        """Read the store's policies again; the problem (see `problem`). Logs each change.
        Raises redis's connection errors (the caller's health check sees those)."""
        found = problem(await store_policies(self._redis))
        if found != self._problem or not self._checked:
            if found is None:
                if self._checked:
                    log.warning("the store's maxmemory-policy is %s again", NOEVICTION)
            elif self._allow:
                log.warning(
                    "%s; serving anyway (%s): ACKNOWLEDGED PACKETS MAY BE LOST", found, ALLOW_FLAG
                )
            else:
                log.error("%s; health NOT_SERVING and writes refused until then", found)
        self._problem = found
        self._checked = True
        return found

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """A server interceptor that refuses every call that may write while
        `writes_refused` says so (UNAVAILABLE: nothing was written, retry later)."""
        return _WriteGate(self)


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        # ErrorInfo STORE_MAY_EVICT: refused before anything ran, so a client knows
        # the outcome (nothing written) although UNAVAILABLE usually leaves it open.
        code = grpc.StatusCode.UNAVAILABLE
        trailer = error_info_trailer(code, message, NOT_APPLIED_REASON)
        await context.abort(code, message, trailing_metadata=trailer)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _WriteGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # untyped grpc class
    def __init__(self, guard: EvictionGuard) -> None:
        self._guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        message = self._guard.writes_refused
        if message is None or handler is None or read_only(details.method):
            return handler
        return _refusing(handler, message)
