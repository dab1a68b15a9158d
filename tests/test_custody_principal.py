"""Custody records the authenticated principal (issue 14, item 4): each hop the server
signs during a call names that call's principal (CustodyRecord.principal, field 12):
the dispatcher's on "received"/"dispatched", the consumer's on "delivered"/"acked".
The record's exact bytes are still what is signed; records without the field (the
local principal, older records) verify as before.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import pytest

import packetbus
from packetbus import _custody, _wire
from packetbus._cli_custody import _verify
from packetbus.v1 import custody_pb2
from packetbus_server import RunningServer
from tests._identities import Issuer, client_as, guarded_fixtures, spiffe
from tests.conftest import new_packet, unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

PUBLISHER = spiffe("publisher-1")
CONSUMER = spiffe("consumer-7")
WORKER = spiffe("worker-9")
GRANTS = {
    PUBLISHER: [
        ("topics.publish", "cust.*"),
        ("groups.manage", "cust.*"),
        ("tasks.post", "cust.*"),
    ],
    CONSUMER: [("topics.consume", "cust.*"), ("audit.export", "cust.*"), ("agents.read", "*")],
    WORKER: [("tasks.claim", "cust.*"), ("tasks.read", "cust.*")],
}


issuer, guarded = guarded_fixtures(GRANTS, "custody-principal")


@pytest.fixture
async def publisher(guarded: RunningServer, issuer: Issuer) -> AsyncIterator[packetbus.Client]:
    async with await client_as(f"127.0.0.1:{guarded.port}", issuer.token(PUBLISHER)) as c:
        yield c


@pytest.fixture
async def consumer(guarded: RunningServer, issuer: Issuer) -> AsyncIterator[packetbus.Client]:
    async with await client_as(f"127.0.0.1:{guarded.port}", issuer.token(CONSUMER)) as c:
        yield c


@pytest.fixture
async def worker(guarded: RunningServer, issuer: Issuer) -> AsyncIterator[packetbus.Client]:
    async with await client_as(f"127.0.0.1:{guarded.port}", issuer.token(WORKER)) as c:
        yield c


def principals(chain: list[custody_pb2.CustodyEntry]) -> list[tuple[str, str]]:
    records = [custody_pb2.CustodyRecord.FromString(e.record) for e in chain]
    return [(r.action, r.principal) for r in records]


async def test_a_delivered_and_acked_packets_hops_name_the_dispatcher_and_the_consumer(
    publisher: packetbus.Client,
    consumer: packetbus.Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = unique("cust")
    await publisher.create_consumer_group(topic, "workers", start=packetbus.EARLIEST)
    packet = new_packet(topic)
    packet.origin = "publisher-1"  # its own agent id (the packet names its sender)
    [result] = await publisher.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "receipt"

    async with consumer.consume(topic, "workers", consumer="w-7") as stream:
        async with asyncio.timeout(10):
            delivery = await anext(aiter(stream))
        assert principals(list(delivery.packet.packet.chain_of_custody)) == [
            ("received", PUBLISHER),
            ("dispatched", PUBLISHER),
            ("delivered", CONSUMER),
        ]
        await delivery.ack()

    verdict = await consumer.verify_custody(packet.tracking_id)
    assert verdict.verified
    assert [(e.action, e.principal) for e in verdict.entries] == [
        ("received", PUBLISHER),
        ("dispatched", PUBLISHER),
        ("delivered", CONSUMER),
        ("acked", CONSUMER),
    ]
    server_id = (await consumer.server_info()).server_id
    assert {e.actor for e in verdict.entries} == {server_id}

    # The client's own verifier: the same chain, the same principals, every entry ok.
    stored = verdict.packet
    keys = {k.key_id: k for k in await consumer.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=packet.tracking_id,
        content=stored.content,
        chain=stored.packet.chain_of_custody,
        keys=keys,
        head=stored.custody_head,
    )
    assert report.verified, report.failures()
    assert [e.principal for e in report.entries] == [PUBLISHER, PUBLISHER, CONSUMER, CONSUMER]

    # The signed bytes are the record's deterministic serialization, principal included:
    # nothing is re-serialized to verify, and the field sits in its place (12).
    for entry in stored.packet.chain_of_custody:
        record = custody_pb2.CustodyRecord.FromString(entry.record)
        assert entry.record == record.SerializeToString(deterministic=True)

    # `packetbus verify` shows whose call made each hop.
    args = argparse.Namespace(tracking_id=packet.tracking_id, json=False, timeout=10)
    assert await _verify(consumer, args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"entry 0: OK received by {server_id} for {PUBLISHER} (")
    assert lines[3].startswith(f"entry 3: OK acked by {server_id} for {CONSUMER} (")
    assert lines[-1] == "verified"


async def test_a_tasks_hops_name_the_poster_and_the_worker(
    publisher: packetbus.Client, worker: packetbus.Client
) -> None:
    queue = unique("cust")
    task = packetbus.Task(id="t-1", description="do it")
    await publisher.task_queue(queue).post(task, origin="publisher-1")
    claimed = await worker.task_queue(queue).claim("worker-9", lease_seconds=30)
    assert claimed is not None
    await claimed.complete({"answer": 42})
    state = await worker.task_queue(queue).get("t-1")
    keys = {k.key_id: k for k in await worker.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=state.packet.packet.tracking_id,
        content=state.packet.content,
        chain=state.packet.packet.chain_of_custody,
        keys=keys,
        head=state.packet.custody_head,
    )
    assert report.verified, report.failures()
    assert [(e.action, e.principal) for e in report.entries] == [
        ("received", PUBLISHER),
        ("dispatched", PUBLISHER),
        ("claimed", WORKER),
        ("completed", WORKER),
    ]


async def test_the_local_principal_is_not_recorded(
    client: packetbus.Client, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No authentication configured (the README's two commands): records are as they
    were before the field existed, and verify as before."""
    packet = new_packet(topic)
    [result] = await client.dispatch_batch([packet])
    assert result.WhichOneof("outcome") == "receipt"
    verdict = await client.verify_custody(packet.tracking_id)
    assert verdict.verified
    assert [(e.action, e.principal) for e in verdict.entries] == [
        ("received", ""),
        ("dispatched", ""),
    ]
    for entry in verdict.packet.packet.chain_of_custody:
        record = custody_pb2.CustodyRecord.FromString(entry.record)
        assert not record.principal
        assert entry.record == record.SerializeToString(deterministic=True)
    args = argparse.Namespace(tracking_id=packet.tracking_id, json=False, timeout=10)
    assert await _verify(client, args) == 0
    assert " for " not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("counterpart", "attempt", "reason", "principal"),
    [
        ("group:g consumer:w-1", 2, "nacked: boom", "spiffe://example.org/agent/w-1"),
        ("", 0, "", "worker-3"),
        ("", 0, "", ""),
        ("queue:q", 1, "", "x" * 300),
    ],
)
def test_hop_details_with_a_principal_match_deterministic_serialization(
    counterpart: str, attempt: int, reason: str, principal: str
) -> None:
    writer = _wire.RecordWriter(
        actor=b"server-1", action=b"delivered", occurred_at_ns=1_795_000_000_5, key_id=b"k"
    )
    details = _wire.hop_details(
        counterpart=counterpart.encode(),
        attempt=attempt,
        reason=reason.encode(),
        principal=principal.encode(),
    )
    raw = writer.record(
        sequence=4,
        content_digest=b"c" * 32,
        previous_hash=b"p" * 32,
        tracking_id=b"t-1",
        details=details,
    )
    expected = custody_pb2.CustodyRecord(
        sequence=4,
        actor="server-1",
        action="delivered",
        content_digest=b"c" * 32,
        previous_hash=b"p" * 32,
        key_id="k",
        tracking_id="t-1",
        counterpart=counterpart,
        attempt=attempt,
        reason=reason,
        principal=principal,
    )
    expected.occurred_at.FromNanoseconds(1_795_000_000_5)
    assert raw == expected.SerializeToString(deterministic=True)


def test_a_record_signed_before_the_field_existed_verifies_as_before() -> None:
    """The signature covers the record's exact bytes: an old record (no field 12)
    verifies, and a principal added to its bytes afterwards does not."""
    signer = _custody.Signer.generate()
    key = custody_pb2.SigningKey(
        key_id=signer.key_id,
        public_key=signer.public_key,
        owner_kind=custody_pb2.KEY_OWNER_KIND_SERVER,
        owner="server-1",
    )
    content = b"content"
    record = custody_pb2.CustodyRecord(
        sequence=0,
        actor="server-1",
        action="received",
        content_digest=_custody.digest(content),
        key_id=signer.key_id,
        tracking_id="t-1",
    )
    entry = _custody.sign_entry(signer, record)
    ok = _custody.verify_entry(
        0,
        entry,
        tracking_id="t-1",
        content_digest=_custody.digest(content),
        previous_hash=b"",
        keys={key.key_id: key},
    )
    assert (ok.ok, ok.principal) == (True, "")
    tampered = custody_pb2.CustodyEntry()
    tampered.CopyFrom(entry)
    tampered.record = entry.record + _wire.hop_details(principal=b"spiffe://x/agent/evil")
    bad = _custody.verify_entry(
        0,
        tampered,
        tracking_id="t-1",
        content_digest=_custody.digest(content),
        previous_hash=b"",
        keys={key.key_id: key},
    )
    assert bad.verdict == custody_pb2.CUSTODY_VERDICT_BAD_SIGNATURE
