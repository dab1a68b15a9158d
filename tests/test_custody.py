"""Chains of custody on a real server and Redis: signing, agent origins, verification
through the RPC, the CLI and offline exports, and key rotation."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis_asyncio
from nacl.bindings import crypto_core_ed25519_add

import packetbus
from packetbus import AgentIdentity, _custody
from packetbus.v1 import custody_pb2, custody_service_pb2
from packetbus_server import ServerConfig, rotate_signing_key, start
from tests._store_keys import key_names, new_keys
from tests.conftest import REPO, new_packet, unique

CLI = [sys.executable, "-m", "packetbus._cli"]
# A point of order 8, and two 32-byte strings that are no curve point's canonical
# encoding: y = p + 3 (CUSTODY.md section 3) and y = 2, which is not on the curve.
ORDER_8 = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
NON_CANONICAL_Y = bytes.fromhex("f0" + "ff" * 30 + "7f")
OFF_CURVE = (2).to_bytes(32, "little")


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--target", target, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def offline_verify(path: Path) -> subprocess.CompletedProcess[str]:
    """`packetbus verify --file`, with no --target: no server is involved."""
    return subprocess.run(
        [*CLI, "verify", "--file", str(path)], capture_output=True, text=True, check=False
    )


def _code(result: packetbus.DispatchResult) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == result.error.code)


async def _log_length(r: redis_asyncio.Redis, topic: str) -> int:
    return int(await r.xlen(f"pb:{{{topic}}}:log"))


async def test_a_dispatched_packet_verifies_by_rpc_cli_and_offline_export(
    client: packetbus.Client, target: str, topic: str, tmp_path: Path
) -> None:
    packets = [new_packet(topic) for _ in range(3)]
    await client.dispatch_batch(packets)

    result = await client.verify_custody(packets[1].tracking_id)
    assert result.verified
    assert [(e.index, e.action) for e in result.entries] == [(0, "received"), (1, "dispatched")]
    assert result.head_verdict == custody_pb2.CUSTODY_VERDICT_OK

    checked = await asyncio.to_thread(cli, target, "verify", packets[1].tracking_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().endswith("verified")

    export = tmp_path / "export.jsonl"
    wrote = await asyncio.to_thread(cli, target, "export", "--out", str(export), "--topic", topic)
    assert wrote.returncode == 0, wrote.stderr
    offline = await asyncio.to_thread(offline_verify, export)
    assert offline.returncode == 0, offline.stdout
    assert "3 of 3 packets verified" in offline.stdout


async def test_altering_one_byte_of_an_export_fails_and_names_the_packet(
    client: packetbus.Client, target: str, topic: str, tmp_path: Path
) -> None:
    packets = [new_packet(topic) for _ in range(2)]
    packets[1].finding.claim = "the original claim"
    packets[1].finding.confidence = 0.7
    await client.dispatch_batch(packets)
    export = tmp_path / "export.jsonl"
    assert (
        await asyncio.to_thread(cli, target, "export", "--out", str(export), "--topic", topic)
    ).returncode == 0

    lines = export.read_text().splitlines()
    doc = json.loads(lines[2])
    assert doc["packet"]["packet"]["trackingId"] == packets[1].tracking_id
    # One byte of the readable claim, leaving the signed bytes alone.
    doc["packet"]["packet"]["finding"]["claim"] = "the original claiM"
    lines[2] = json.dumps(doc)
    altered = tmp_path / "altered.jsonl"
    altered.write_text("\n".join(lines) + "\n")
    offline = await asyncio.to_thread(offline_verify, altered)
    assert offline.returncode == 1
    assert packets[1].tracking_id in offline.stdout
    assert packets[0].tracking_id not in offline.stdout
    assert "1 of 2 packets verified" in offline.stdout


async def test_agent_signed_origin_verifies_end_to_end(
    client: packetbus.Client, target: str, topic: str
) -> None:
    agent = AgentIdentity.generate(unique("agent"))
    await client.register_identity(agent)
    async with await packetbus.Client.connect(
        target, config=packetbus.ClientConfig(identity=agent)
    ) as signed_client:
        packet = new_packet(topic)
        packet.origin = agent.agent_id
        del packet.chain_of_custody[:]
        packet.schema_version = ""
        receipt = await signed_client.dispatch(packet)
    assert packet.schema_version == "1.1"
    result = await client.verify_custody(packet.tracking_id)
    assert result.verified
    first = result.entries[0]
    assert (first.actor, first.action) == (agent.agent_id, "originated")
    assert result.packet.receipt == receipt


async def test_bad_origin_signatures_are_refused_and_nothing_is_stored(
    client: packetbus.Client, raw_redis: redis_asyncio.Redis, topic: str
) -> None:
    agent = AgentIdentity.generate(unique("agent"))
    other = AgentIdentity.generate(unique("other"))
    await client.register_identity(agent)
    await client.register_identity(other)
    unregistered = AgentIdentity.generate(agent.agent_id)
    before = await key_names(raw_redis)

    def signed(identity: AgentIdentity, origin: str) -> packetbus.Packet:
        packet = new_packet(topic, ttl_seconds=600)
        packet.origin = origin
        return _custody.sign_origin(packet, identity.signer)

    # Signed by another key than the one its entry names: UNAUTHENTICATED.
    forged = signed(agent, agent.agent_id)
    forged.chain_of_custody[0].signature = other.signer.sign(
        _custody.ENTRY_DOMAIN, forged.chain_of_custody[0].record
    )
    # Content changed after signing: UNAUTHENTICATED.
    tampered = signed(agent, agent.agent_id)
    tampered.ttl_seconds = 601
    # A key nobody registered: PERMISSION_DENIED.
    unknown = signed(unregistered, agent.agent_id)
    # A registered key of another agent: PERMISSION_DENIED.
    impostor = signed(other, agent.agent_id)

    results = await client.dispatch_batch([forged, tampered, unknown, impostor])
    codes = [_code(r) for r in results]
    assert codes == [
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.PERMISSION_DENIED,
    ]
    # Content that is not what was signed says what the server hashed, so a signer
    # in another language can compare its own serialization (CUSTODY.md section 2).
    hashed = _custody.digest(_custody.content_bytes(tampered)).hex()
    assert results[1].error.message == (
        "chain_of_custody[0] does not authenticate this packet: the content is not what "
        f"this entry signed; the server's content digest is {hashed} (SHA-256 of the "
        "content's canonical serialization, CUSTODY.md section 2: map entries sorted by "
        "key, fields at their default left out)"
    )
    assert await _log_length(raw_redis, topic) == 0
    assert await new_keys(raw_redis, before) == set()


async def test_agent_key_registration_rules(client: packetbus.Client) -> None:
    agent = AgentIdentity.generate(unique("agent"))
    first = await client.register_identity(agent)
    assert first.owner == agent.agent_id
    assert first.owner_kind == custody_pb2.KEY_OWNER_KIND_AGENT
    # The same key again: harmless, the same answer.
    assert (await client.register_identity(agent)).key_id == first.key_id

    # A second key for a bound agent id needs an endorsement by the first.
    second = AgentIdentity.generate(agent.agent_id)
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.register_identity(second)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (await client.endorse_identity(second, agent)).key_id == second.signer.key_id

    # An endorsement by a key of another agent does not count.
    stranger = AgentIdentity.generate(unique("stranger"))
    await client.register_identity(stranger)
    third = AgentIdentity.generate(agent.agent_id)
    with pytest.raises(packetbus.PacketbusError) as caught:
        await client.endorse_identity(third, stranger)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED

    # Small-order public keys are not keys, nor are encodings no signature could ever
    # verify under: y = p + 3 (non-canonical), a y off the curve, and a point of mixed
    # order (a valid key plus a point of order 8).
    valid = agent.signer.public_key
    mixed = crypto_core_ed25519_add(valid, bytes.fromhex(ORDER_8))
    for key in (bytes([1]) + bytes(31), NON_CANONICAL_Y, OFF_CURVE, mixed):
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await client._custody.RegisterAgentKey(
                custody_service_pb2.RegisterAgentKeyRequest(
                    agent_id=unique("x"), public_key=key, proof=bytes(64)
                )
            )
        assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT, key.hex()
        assert "public_key" in (raw.value.details() or ""), raw.value.details()


async def test_rotation_old_packets_verify_new_ones_use_the_new_key(
    redis_url: str, tmp_path: Path, topic: str
) -> None:
    keyfile = tmp_path / "keys.json"
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            signing_key_file=keyfile,
            health_interval_seconds=0.05,
        )
    )
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
            old = new_packet(topic)
            await client.dispatch(old)
            old_key = (await client.verify_custody(old.tracking_id)).entries[0].key_id

            fresh_key = rotate_signing_key(keyfile).signer.key_id
            for _ in range(100):  # the server notices the rotation on its next tick
                if fresh_key in {k.key_id for k in await client.signing_keys()}:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)

            new = new_packet(topic)
            await client.dispatch(new)
            new_result = await client.verify_custody(new.tracking_id)
            old_result = await client.verify_custody(old.tracking_id)
            keys = {k.key_id: k for k in await client.signing_keys()}
    finally:
        await srv.stop(grace=0)

    assert fresh_key != old_key
    assert new_result.verified
    assert {e.key_id for e in new_result.entries} == {fresh_key}
    assert old_result.verified
    assert {e.key_id for e in old_result.entries} == {old_key}
    assert keys[old_key].HasField("valid_until")
    assert not keys[fresh_key].HasField("valid_until")
