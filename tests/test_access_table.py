"""Issue 14 acceptance: every RPC of every packetbus service at the door.

`_access.permissions.RULES` is the list (69 RPCs). Each RPC is called three times
with the same valid request (one that would write, for a write), built fresh for
it on resources of its own:

Calls go over TLS (a certificate from the test's CA), as the acceptance asks.

1. with no credential: UNAUTHENTICATED, ErrorInfo reason CREDENTIAL_MISSING;
2. by the principal holding every permission but the one its rule names
   (``all-but-P``): PERMISSION_DENIED, ErrorInfo reason PERMISSION_DENIED with
   metadata permission P and the resource the rule reads from the request; and
   by ``nobody`` (authenticated, no role): PERMISSION_DENIED (deny by default);
3. by the principal holding exactly that permission (``p-P``): the call's own
   answer (OK here: every request is one the service carries out).

ListTopics is never refused: a principal without topics.subscribe on a topic gets
OK and a listing without it. GetPacket and VerifyCustody name a packet by tracking id only: refused, they
answer NOT_FOUND as for a packet that is not there (a refusal would confirm that
a guessed id exists). The store (every key and its contents, consumer groups'
pending lists included) is the same after the refused calls as before them. The two RPCs whose rule
names no permission (GetSigningKeys, GetServerInfo) answer any authenticated
principal, ``nobody`` included. ListTaskQueues filters instead: without tasks.read
on a queue, a caller is answered OK with that queue left out (its listing is
checked in tests/test_task_queues_access.py). The server and its principals are in
tests/_access_world.py; the requests, one builder per RPC, in
tests/_access_rows_topics.py and tests/_access_rows_work.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server._access import Permission
from packetbus_server._access.permissions import RULES
from tests._access_calls import OK, ROWS, Call, send
from tests._access_world import (
    NOBODY,
    NOTHING,
    Door,
    Outcome,
    differences,
    holder,
    lacker,
    open_door,
    policy_text,
    snapshot,
)
from tests._own_store import own_store

# Each fills ROWS with the rows of its services.
from tests import _access_rows_topics, _access_rows_work  # noqa: F401  isort: skip

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with own_store(tmp_path_factory.mktemp("access-store")) as url:
        yield url


@pytest.fixture(scope="module")
async def door(tmp_path_factory: pytest.TempPathFactory, store: str) -> AsyncIterator[Door]:
    async with open_door(tmp_path_factory.mktemp("access-server"), store, policy_text()) as opened:
        yield opened


# -- the test -------------------------------------------------------------------


async def test_the_door_is_tls_only(door: Door) -> None:
    # The table below runs over real TLS: a plaintext dial fails the handshake.
    async with grpc.aio.insecure_channel(door.target) as plain:
        stub = packet_service_pb2_grpc.PacketServiceStub(plain)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_every_rpc_has_a_row() -> None:
    assert set(ROWS) == set(RULES)
    assert len(ROWS) == 69


def _expected_resource(call: Call) -> str:
    rule = RULES[call.method]
    if rule.in_service:
        assert call.resource is not None, call.method
        return call.resource
    assert rule.resource is not None
    return rule.resource(call.request)


async def _listed(door: Door, call: Call, principal: str) -> list[str]:
    """The names a filtered listing (ListTopics, ListTaskQueues) gives `principal`."""
    if call.method.endswith("/ListTopics"):
        topics = await door.stubs.topics.ListTopics(call.request, metadata=door.md(principal))
        return [t.name for t in topics.topics]
    queues = await door.stubs.tasks.ListTaskQueues(call.request, metadata=door.md(principal))
    return [q.queue for q in queues.queues]


@pytest.mark.parametrize("method", sorted(RULES))
async def test_the_door(door: Door, method: str) -> None:
    permission: Permission | None = RULES[method].permission
    me = holder(permission) if permission is not None else NOBODY
    call = await ROWS[method](door, me)
    assert call.method == method

    if call.filtered:
        # Once first: the first listing of a store may complete its topic or queue
        # index (_name_index), a write of its own that no refusal is about.
        assert await send(door.stubs, call, door.md(me)) == Outcome(call.expect)
    before = await snapshot(door.redis)
    outsider = await send(door.stubs, call, ())
    assert (outsider.code, outsider.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIAL_MISSING",
    ), outsider
    if permission is not None and call.filtered:
        # Filtered, not refused: the listing answers without what it may not show.
        for principal in (lacker(permission), NOBODY):
            assert await send(door.stubs, call, door.md(principal)) == Outcome(OK)
            assert await _listed(door, call, principal) == []
        assert await _listed(door, call, me) == [call.resource]
    elif permission is not None:
        refused = await send(door.stubs, call, door.md(lacker(permission)))
        if call.hidden:
            assert refused == Outcome(grpc.StatusCode.NOT_FOUND), refused
        else:
            assert refused.code == grpc.StatusCode.PERMISSION_DENIED, refused
            assert refused.reason == "PERMISSION_DENIED", refused
            assert refused.meta == {
                "permission": permission.value,
                "resource": _expected_resource(call),
                "principal": lacker(permission),
            }, refused
        # Deny by default: an authenticated principal with no role.
        unknown = await send(door.stubs, call, door.md(NOBODY))
        if call.hidden:
            assert unknown == Outcome(grpc.StatusCode.NOT_FOUND), unknown
        else:
            assert unknown.code == grpc.StatusCode.PERMISSION_DENIED, unknown
            assert unknown.meta["principal"] == NOBODY, unknown
    assert differences(before, await snapshot(door.redis)) == NOTHING

    allowed = await send(door.stubs, call, door.md(me))
    assert allowed.code == call.expect, allowed
