"""Authorization from the policy file on a real server: refusals name what was missing
and write nothing, a reload grants at once, GetPolicy shows the section, and a server
that authenticates no one refuses to turn it on (at start, at reload, in the CLI)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.rpc import error_details_pb2

import packetbus
from packetbus.rich_status import status_in
from packetbus.v1 import (
    consumer_group_service_pb2,
    consumer_group_service_pb2_grpc,
    context_service_pb2,
    context_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from packetbus_server import Limits, RunningServer, ServerConfig, start
from packetbus_server._policy_watch import AUTHORIZATION_WITHOUT_AUTHENTICATION
from tests._polling import until
from tests._store_keys import key_names, new_keys
from tests._tokens import AUDIENCE, ISSUER, bearer, jwks, token
from tests.conftest import free_port, packetbus_serve, run_cli, unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

KEY = ed25519.Ed25519PrivateKey.generate()


def policy_text(*grants: str) -> bytes:
    """alice (agent id alice) is a "reader" with these grants and the ones every test needs."""
    listed = ",\n  ".join(
        (
            '{ permissions = ["policy.read", "groups.read"], resources = ["*"] }',
            '{ permissions = ["memory.*"], resources = ["{agent}"] }',
            *grants,
        )
    )
    return (
        '[authorization]\n[[authorization.principals]]\nmatch = "alice"\nroles = ["reader"]\n'
        f"[authorization.roles.reader]\ngrants = [\n  {listed},\n]\n"
    ).encode()


@dataclass
class Serving:
    server: RunningServer
    channel: grpc.aio.Channel
    policy: Path

    def as_(self, name: str) -> tuple[tuple[str, str], ...]:
        """Call metadata proving principal `name`: a bearer JWT with that sub."""
        return bearer(token(KEY, "EdDSA", "authz-1", sub=name))


@pytest.fixture
async def serving(redis_url: str, tmp_path: Path) -> AsyncIterator[Serving]:
    """A server as `packetbus serve --jwt-jwks ... --policy ...` runs it: the gate
    `start` builds (JWT authenticator, the policy watch's authorization)."""
    policy = tmp_path / "policy.toml"
    policy.write_bytes(policy_text())
    keys = tmp_path / "jwks.json"
    keys.write_text(jwks((KEY, "authz-1")))
    srv = await start(
        ServerConfig(
            listen="127.0.0.1:0",
            redis_url=redis_url,
            data_dir=tmp_path / "data",
            policy_file=policy,
            limits=Limits(policy_reload_seconds=0.1),
            jwt_jwks_file=keys,
            jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE,
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            yield Serving(srv, channel, policy)
    finally:
        await srv.stop(grace=0)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = status_in(error.trailing_metadata())
    assert status is not None, "no status details"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def denied_as(error: grpc.aio.AioRpcError, permission: str, resource: str, principal: str) -> None:
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    info = error_info(error)
    assert (info.reason, info.domain) == ("PERMISSION_DENIED", "packetbus")
    assert dict(info.metadata) == {
        "permission": permission,
        "resource": resource,
        "principal": principal,
    }
    target = repr(resource) if resource else "'' (all of them: only a grant on '*' allows it)"
    assert error.details() == f"principal {principal!r} lacks permission {permission} on {target}"


async def test_a_reload_grants_what_was_denied_a_moment_before(
    serving: Serving, raw_redis: Any
) -> None:
    groups = consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(serving.channel)
    topic = unique("jobs")
    create = consumer_group_service_pb2.CreateConsumerGroupRequest(topic=topic, name="workers")
    alice = serving.as_("alice")

    before = await key_names(raw_redis)
    error = await refused(groups.CreateConsumerGroup(create, metadata=alice))
    denied_as(error, "groups.manage", topic, "alice")
    assert not {k for k in await new_keys(raw_redis, before) if topic.encode() in k}
    # Another principal, no entry of the policy: no role, denied as well.
    error = await refused(groups.CreateConsumerGroup(create, metadata=serving.as_("mallory")))
    denied_as(error, "groups.manage", topic, "mallory")
    # A listing over every topic: resource "", said as such (not as a literal '*').
    listing = consumer_group_service_pb2.ListConsumerGroupsRequest()
    error = await refused(groups.ListConsumerGroups(listing, metadata=serving.as_("mallory")))
    denied_as(error, "groups.read", "", "mallory")
    assert error.details().endswith("on '' (all of them: only a grant on '*' allows it)")
    # Reading is granted on "*", a listing over every topic too.
    await groups.ListConsumerGroups(
        consumer_group_service_pb2.ListConsumerGroupsRequest(topic=topic), metadata=alice
    )

    serving.policy.write_bytes(
        policy_text('{ permissions = ["groups.manage"], resources = ["jobs.*"] }')
    )
    watch = serving.server.policy
    assert watch is not None
    new_version = hashlib.sha256(serving.policy.read_bytes()).hexdigest()
    # The watch's own poll (every 0.1 s here), as an operator's edit is picked up.
    await until(lambda: watch.policy is not None and watch.policy.version == new_version)
    created = await groups.CreateConsumerGroup(create, metadata=alice)
    assert (created.group.topic, created.group.name) == (topic, "workers")
    # Only what was granted: mallory still has no role, alice no other topics.
    error = await refused(groups.CreateConsumerGroup(create, metadata=serving.as_("mallory")))
    denied_as(error, "groups.manage", topic, "mallory")
    other = consumer_group_service_pb2.CreateConsumerGroupRequest(topic="ops.x", name="w")
    denied_as(
        await refused(groups.CreateConsumerGroup(other, metadata=alice)),
        "groups.manage",
        "ops.x",
        "alice",
    )


async def test_the_agent_placeholder_is_the_callers_own_agent_id(serving: Serving) -> None:
    context = context_service_pb2_grpc.ContextServiceStub(serving.channel)
    alice = serving.as_("alice")
    await context.ListMemory(context_service_pb2.ListMemoryRequest(agent="alice"), metadata=alice)
    error = await refused(
        context.ListMemory(context_service_pb2.ListMemoryRequest(agent="bob"), metadata=alice)
    )
    denied_as(error, "memory.read", "bob", "alice")


async def test_an_agent_id_the_policy_maps_is_the_one_agent_patterns_see(
    serving: Serving,
) -> None:
    serving.policy.write_bytes(
        policy_text()
        + b'[[authorization.principals]]\nmatch = "svc-*"\nroles = ["reader"]\n'
        + b'agent_id = "planner"\n'
    )
    watch = serving.server.policy
    assert watch is not None
    new_version = hashlib.sha256(serving.policy.read_bytes()).hexdigest()
    await until(lambda: watch.policy is not None and watch.policy.version == new_version)
    context = context_service_pb2_grpc.ContextServiceStub(serving.channel)
    service = serving.as_("svc-7")
    await context.ListMemory(
        context_service_pb2.ListMemoryRequest(agent="planner"), metadata=service
    )
    error = await refused(
        context.ListMemory(context_service_pb2.ListMemoryRequest(agent="svc-7"), metadata=service)
    )
    denied_as(error, "memory.read", "svc-7", "svc-7")


async def test_get_policy_shows_the_authorization_section(serving: Serving) -> None:
    policies = policy_service_pb2_grpc.PolicyServiceStub(serving.channel)
    response = await policies.GetPolicy(
        policy_service_pb2.GetPolicyRequest(), metadata=serving.as_("alice")
    )
    assert response.loaded
    assert response.HasField("authorization")
    assert response.authorization == policy_service_pb2.AuthorizationPolicy(
        principals=[policy_service_pb2.AuthorizationPrincipal(match=["alice"], roles=["reader"])],
        roles=[
            policy_service_pb2.AuthorizationRole(
                name="reader",
                grants=[
                    policy_service_pb2.AuthorizationGrant(
                        permissions=["policy.read", "groups.read"], resources=["*"]
                    ),
                    policy_service_pb2.AuthorizationGrant(
                        permissions=["memory.*"], resources=["{agent}"]
                    ),
                ],
            )
        ],
    )


async def test_a_server_that_authenticates_no_one_refuses_authorization(
    redis_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_bytes(policy_text())
    config = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        policy_file=policy,
        limits=Limits(policy_reload_seconds=0.1),
    )
    with pytest.raises(ValueError, match=re.escape(AUTHORIZATION_WITHOUT_AUTHENTICATION)):
        await start(config)

    # Started without the section, a reload that adds it is refused: the old policy
    # stays, and GetPolicy says why.
    policy.write_bytes(b'default = "allow"\n')
    srv = await start(config)
    try:
        async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}", timeout=10) as client:
            first = await client.get_policy(timeout=10)
            assert not first.HasField("authorization")
            policy.write_bytes(policy_text())
            watch = srv.policy
            assert watch is not None
            await until(lambda: watch.failure is not None)
            after = await client.get_policy(timeout=10)
            assert after.version == first.version
            assert not after.HasField("authorization")
            assert after.load_error == AUTHORIZATION_WITHOUT_AUTHENTICATION
    finally:
        await srv.stop(grace=0)


def test_serve_refuses_authorization_without_authentication(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_bytes(policy_text())
    done = run_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "d"),
        "--policy",
        str(policy),
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"packetbus: cannot start: policy {policy}: {AUTHORIZATION_WITHOUT_AUTHENTICATION}"
    ]
    assert not (tmp_path / "d").exists()
    policy.write_bytes(policy_text('{ permissions = ["topics.pubish"], resources = ["*"] }'))
    done = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--policy", str(policy))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"packetbus: cannot start: policy {policy}: authorization.roles.reader.grants[2]"
        ".permissions: 'topics.pubish' names no permission; did you mean 'topics.publish'?"
    ]
    assert not (tmp_path / "d").exists()


async def test_packetbus_serve_with_jwt_keys_authorizes_by_the_policy(
    redis_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_bytes(policy_text())
    (tmp_path / "jwks.json").write_text(jwks((KEY, "authz-1")))
    port = free_port()
    server = packetbus_serve(
        *("--listen", f"127.0.0.1:{port}", "--redis-url", redis_url),
        *("--data-dir", str(tmp_path / "data"), "--policy", str(policy)),
        *("--jwt-jwks", str(tmp_path / "jwks.json")),
        *("--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            context = context_service_pb2_grpc.ContextServiceStub(channel)
            alice = bearer(token(KEY, "EdDSA", "authz-1", sub="alice"))
            own = context_service_pb2.ListMemoryRequest(agent="alice")
            await context.ListMemory(own, metadata=alice)
            other = context_service_pb2.ListMemoryRequest(agent="bob")
            denied_as(
                await refused(context.ListMemory(other, metadata=alice)),
                "memory.read",
                "bob",
                "alice",
            )
    finally:
        server.terminate()
        await asyncio.to_thread(server.communicate, timeout=30)


def test_policy_check_shows_and_validates_the_section(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_bytes(policy_text())
    done = run_cli("policy", "check", str(policy))
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["authorization"]
    assert shown == {
        "principals": [{"match": ["alice"], "roles": ["reader"]}],
        "roles": {
            "reader": [
                {"permissions": ["policy.read", "groups.read"], "resources": ["*"]},
                {"permissions": ["memory.*"], "resources": ["{agent}"]},
            ]
        },
    }
    policy.write_bytes(policy_text('{ permissions = ["topics.pubish"], resources = ["*"] }'))
    done = run_cli("policy", "check", str(policy))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"packetbus: {policy}: authorization.roles.reader.grants[2].permissions: "
        "'topics.pubish' names no permission; did you mean 'topics.publish'?"
    )


def test_policy_can_answers_with_the_grant_or_why_not(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_bytes(policy_text('{ permissions = ["topics.publish"], resources = ["jobs.*"] }'))
    file = str(policy)
    allowed = run_cli("policy", "can", file, "--principal", "alice", "topics.publish", "jobs.1")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == (
        "allowed: principal 'alice' (agent id 'alice', roles ['reader']) may topics.publish "
        "on 'jobs.1': role 'reader', grant 2 (permissions ['topics.publish'], "
        "resources ['jobs.*'])"
    )
    own = run_cli("policy", "can", file, "--principal", "alice", "memory.write", "alice")
    assert own.returncode == 0
    assert "grant 1 (permissions ['memory.*'], resources ['{agent}'])" in own.stdout
    itself = run_cli("policy", "can", file, "--principal", "alice", "agents.act_for", "alice")
    assert itself.returncode == 0, itself.stdout
    assert itself.stdout.strip() == (
        "allowed: principal 'alice' (agent id 'alice', roles ['reader']) may agents.act_for "
        "on 'alice': it is that agent itself (no grant needed)"
    )
    other = run_cli("policy", "can", file, "--principal", "alice", "agents.act_for", "bob")
    assert other.returncode == 1
    listing = run_cli("policy", "can", file, "--principal", "alice", "groups.read", "")
    assert listing.returncode == 0
    denied = run_cli("policy", "can", file, "--principal", "alice", "topics.publish", "ops.1")
    assert denied.returncode == 1
    assert denied.stdout.strip() == (
        "denied: principal 'alice' (agent id 'alice', roles ['reader']) lacks topics.publish "
        "on 'ops.1': no grant of its roles gives it"
    )
    stranger = run_cli("policy", "can", file, "--principal", "bob", "groups.read", "t")
    assert stranger.returncode == 1
    assert stranger.stdout.strip().endswith(
        "no [[authorization.principals]] entry matches it, so it has no role"
    )
    unknown = run_cli("policy", "can", file, "--principal", "alice", "topics.pub", "t")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("packetbus: 'topics.pub' is not a permission; one of: ")
    policy.write_bytes(b'default = "allow"\n')
    off = run_cli("policy", "can", file, "--principal", "bob", "carcel.purge", "t")
    assert off.returncode == 0
    assert off.stdout.strip() == (
        "allowed: the policy has no [authorization] section: every authenticated principal "
        "may call every RPC"
    )
