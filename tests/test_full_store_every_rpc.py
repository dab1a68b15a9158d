"""Issue 13, fault 7 as a class: every RPC of every service against a full store.

test_store_refusals fills a store and tries a few kinds of write; the scripts and
pipelines added since (sealed batches, idempotency records, topic retention,
findings, hops, requeues, ...) must map the store's OOM the same way. Each RPC is
sent with the request the access table builds for it (tests/_access_rows_*.py,
one that would write, for a write), built while the store has room; then the
store's maxmemory is set below what it holds (noeviction: every write refused)
and the call is sent. It answers what it can (reads answer OK) or
RESOURCE_EXHAUSTED with ErrorInfo STORE_FULL, never INTERNAL or UNKNOWN, and a
refused call leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from packetbus_server._access.permissions import RULES
from tests._access_calls import ROWS, send
from tests._access_world import (
    NOBODY,
    NOTHING,
    Door,
    differences,
    holder,
    open_door,
    policy_text,
    snapshot,
)
from tests._own_store import own_store

# Each fills ROWS with the rows of its services.
from tests import _access_rows_topics, _access_rows_work  # noqa: F401  isort: skip

# The store is the test's own Valkey (its memory limit is changed): one backend.
pytestmark = pytest.mark.one_backend

# What a call may answer when the store refuses every write: its answer (a read),
# the store's refusal, or the answer it gives whatever the store holds.
_FULL = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with own_store(
        tmp_path_factory.mktemp("full-store"), "--maxmemory-policy", "noeviction"
    ) as url:
        yield url


@pytest.fixture(scope="module")
async def door(tmp_path_factory: pytest.TempPathFactory, store: str) -> AsyncIterator[Door]:
    async with open_door(tmp_path_factory.mktemp("full-server"), store, policy_text()) as opened:
        yield opened


@pytest.mark.parametrize("method", sorted(RULES))
async def test_every_rpc_on_a_full_store_answers_or_is_refused_as_full(
    door: Door, method: str
) -> None:
    permission = RULES[method].permission
    me = holder(permission) if permission is not None else NOBODY
    call = await ROWS[method](door, me)
    before = await snapshot(door.redis)
    # Below what the store holds: every command that may grow it is refused (OOM).
    await door.redis.config_set("maxmemory", "1")
    try:
        outcome = await send(door.stubs, call, door.md(me))
    finally:
        await door.redis.config_set("maxmemory", "0")
    assert outcome.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
        method,
        outcome,
    )
    assert outcome.code in (call.expect, _FULL), (method, outcome)
    if outcome.code == _FULL:
        assert outcome.reason == "STORE_FULL", (method, outcome)
        # Refused before anything was written.
        assert differences(before, await snapshot(door.redis)) == NOTHING, method
