"""Governance of context writes: judged by a described packet (content_type "context",
topic context/<scope>, global/<key>, memory/<agent>, trace/<task>), refused with the
rule and nothing written (issue 14, item 5; _governance)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis_asyncio

import packetbus
from packetbus.v1 import context_service_pb2
from packetbus_server import RunningServer
from tests._governed import (
    ALLOW_ALL,
    DEFAULT_REASON,
    REJECT_ALL,
    error_info,
    set_policy,
)
from tests._store_keys import key_names, new_keys
from tests.conftest import unique

SOME_ALLOWED = """
default = "reject"

[[rules]]
id = "no-secrets"
decision = "reject"
reason = "secrets are not shared"
content_type = "context"
topic = "global/secret.*"

[[rules]]
id = "own-memory"
decision = "allow"
content_type = "context"
topic = "memory/*"
fields = { "data.operation" = "append" }

[[rules]]
id = "shared-docs"
decision = "allow"
content_type = "context"
topic = ["context/shared.*", "global/*"]
origin = "writer-*"
"""

HOLD_CONTEXT = """
default = "allow"

[[rules]]
id = "review-context"
decision = "hold"
reason = "context is reviewed"
content_type = "context"
"""


@pytest.fixture
async def bus(governed: tuple[RunningServer, Path]) -> AsyncIterator[packetbus.Client]:
    srv, path = governed
    async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client:
        await set_policy(client, path, ALLOW_ALL)
        yield client


def entry() -> context_service_pb2.LogEntry:
    return context_service_pb2.LogEntry(entry_id=str(uuid.uuid4()), kind="thought", text="hm")


def writes(
    bus: packetbus.Client, scope: str, key: str, agent: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each context write, by RPC name."""
    return {
        "PutContext": lambda: bus.put_context(scope, "doc", b"new", author=agent),
        "DeleteContext": lambda: bus.delete_context(scope, "doc", author=agent),
        "SetGlobalContext": lambda: bus.set_global_context(key, "new"),
        "DeleteGlobalContext": lambda: bus.delete_global_context(key),
        "AppendMemory": lambda: bus.append_memory(agent, entry()),
        "AppendTrace": lambda: bus.append_trace(unique("task"), agent, entry()),
    }


async def refused(call: Callable[[], Awaitable[Any]]) -> packetbus.PacketbusError:
    with pytest.raises(packetbus.PacketbusError) as caught:
        await call()
    return caught.value


async def test_with_default_reject_every_context_write_is_refused_and_nothing_written(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    scope, key, agent = unique("shared"), unique("k"), unique("agent")
    await bus.put_context(scope, "doc", b"old", author=agent)
    await bus.set_global_context(key, "old")
    version = await set_policy(bus, governed[1], REJECT_ALL)
    before = await key_names(raw_redis)
    for rpc, call in writes(bus, scope, key, agent).items():
        exc = await refused(call)
        assert exc.code == grpc.StatusCode.PERMISSION_DENIED, rpc
        assert error_info(exc) == {
            "reason": "POLICY_REJECTED",
            "rule_id": "default",
            "rule_reason": DEFAULT_REASON,
            "policy_version": version,
        }, rpc
        assert "nothing was written" in exc.message
    assert await new_keys(raw_redis, before) == set()
    # The earlier writes stand, untouched by the refused deletes and overwrites.
    await set_policy(bus, governed[1], ALLOW_ALL)
    value = await bus.get_context(scope, "doc")
    assert (value.document.version, value.data) == (1, b"old")
    assert await bus.get_global_context(key) == "old"
    assert await bus.list_memory(agent) == []


async def test_rules_by_topic_origin_and_operation_allow_some_context_writes(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    await set_policy(bus, governed[1], SOME_ALLOWED)
    agent, writer = unique("agent"), unique("writer-x")
    assert await bus.append_memory(agent, entry()) == 1
    put = await bus.put_context(unique("shared"), "doc", b"ok", author=writer)
    assert put.version == 1
    # Another author of the same scope, and another scope: the default.
    for call in (
        lambda: bus.put_context(unique("shared"), "doc", b"no", author=agent),
        lambda: bus.put_context(unique("private"), "doc", b"no", author=writer),
        lambda: bus.append_trace(unique("task"), agent, entry()),
    ):
        assert error_info(await refused(call))["rule_id"] == "default"
    # The caller of a global write is the server's principal ("" when unauthenticated):
    # no origin rule names it, so a topic rule decides.
    secret = unique("secret")
    exc = await refused(lambda: bus.set_global_context(secret, "hunter2"))
    assert exc.code == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(exc)
    assert (info["rule_id"], info["rule_reason"]) == ("no-secrets", "secrets are not shared")
    assert "hunter2" not in exc.message
    assert not await raw_redis.hexists("pb:{gctx}:map", secret)


async def test_a_reload_flips_the_decision_on_context_writes(
    bus: packetbus.Client, governed: tuple[RunningServer, Path]
) -> None:
    key = unique("k")
    await set_policy(bus, governed[1], REJECT_ALL)
    exc = await refused(lambda: bus.set_global_context(key, "v"))
    assert exc.code == grpc.StatusCode.PERMISSION_DENIED
    await set_policy(bus, governed[1], ALLOW_ALL)
    await bus.set_global_context(key, "v")
    assert await bus.get_global_context(key) == "v"
    await set_policy(bus, governed[1], REJECT_ALL)
    exc = await refused(lambda: bus.delete_global_context(key))
    assert exc.code == grpc.StatusCode.PERMISSION_DENIED
    await set_policy(bus, governed[1], ALLOW_ALL)
    assert await bus.get_global_context(key) == "v"


async def test_a_hold_rule_refuses_context_writes_which_cannot_be_held(
    bus: packetbus.Client, governed: tuple[RunningServer, Path], raw_redis: redis_asyncio.Redis
) -> None:
    version = await set_policy(bus, governed[1], HOLD_CONTEXT)
    before = await key_names(raw_redis)
    for rpc, call in writes(bus, unique("shared"), unique("k"), unique("agent")).items():
        exc = await refused(call)
        assert exc.code == grpc.StatusCode.FAILED_PRECONDITION, rpc
        assert error_info(exc) == {
            "reason": "POLICY_HOLD_UNSUPPORTED",
            "rule_id": "review-context",
            "rule_reason": "context is reviewed",
            "policy_version": version,
        }, rpc
    assert await new_keys(raw_redis, before) == set()
