"""A server with identity at the door, for the access acceptance tests (issue 14).

One packetbus server on loopback over a Valkey of its own, serving TLS only (a
certificate from a trustme CA: the acceptance asks for real TLS on loopback, and
a plaintext dial is refused in the handshake), authenticating bearer JWTs
(Ed25519, signed here with PyJWT) and authorizing by a policy file whose
`[authorization]` section gives, for every `Permission` P:

- principal ``p-P`` (agent id ``p-P``): exactly P on every resource (``*``);
- principal ``all-but-P``: every permission but P on every resource, so a refusal
  of it can only be for P (agents.act_for included: origin binding passes);
- principal ``admin``: everything (the tests' own setup);
- principal ``nobody``: authenticated, no role.

The policy's governance part holds packets of topics ``held.*`` and rejects those
of ``reject.*`` (to fill the held list and the carcel).

`snapshot` reads every key of the store with its contents, so "nothing written"
is checked against contents too (a refused ack would change a consumer group's
pending list, not a key name); `outcome` reads a call's status and its
google.rpc ErrorInfo, from a failed call's trailer or a per-packet result.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import redis.asyncio as redis_asyncio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.rpc import error_details_pb2, status_pb2

import packetbus
from packetbus.rich_status import status_in
from packetbus.v1 import (
    agent_service_pb2_grpc,
    carcel_service_pb2_grpc,
    consumer_group_service_pb2_grpc,
    context_service_pb2_grpc,
    custody_service_pb2_grpc,
    finding_service_pb2_grpc,
    packet_service_pb2_grpc,
    policy_service_pb2_grpc,
    record_service_pb2_grpc,
    task_service_pb2_grpc,
    topic_service_pb2_grpc,
)
from packetbus_server import ServerConfig, start
from packetbus_server._access import Permission
from tests._certs import write_server_cert
from tests._store_keys import key_names

ISSUER = "https://issuer.test"
AUDIENCE = "packetbus"
ADMIN = "admin"
NOBODY = "nobody"


def holder(permission: Permission) -> str:
    """The principal (and agent id) holding exactly `permission`."""
    return f"p-{permission.value}"


def lacker(permission: Permission) -> str:
    """The principal holding every permission but `permission`."""
    return f"all-but-{permission.value}"


def _role(permission: Permission, prefix: str) -> str:
    return prefix + permission.value.replace(".", "_")


def policy_text() -> str:
    """The policy file: governance (hold ``held.*``, reject ``reject.*``) and the
    authorization section described in this module's docstring."""
    lines = [
        'default = "allow"',
        "",
        "[[rules]]",
        'id = "hold-held"',
        'decision = "hold"',
        'reason = "needs a human"',
        'topic = "held.*"',
        "",
        "[[rules]]",
        'id = "reject-rejected"',
        'decision = "reject"',
        'reason = "not here"',
        'topic = "reject.*"',
        "",
        "[authorization]",
        "",
        "[[authorization.principals]]",
        f'match = "{ADMIN}"',
        'roles = ["admin"]',
        "",
        "[[authorization.principals]]",
        f'match = "{NOBODY}"',
        'roles = ["none"]',
    ]
    for permission in Permission:
        lines += [
            "",
            "[[authorization.principals]]",
            f'match = "{holder(permission)}"',
            f'roles = ["{_role(permission, "only_")}"]',
            "",
            "[[authorization.principals]]",
            f'match = "{lacker(permission)}"',
            f'roles = ["{_role(permission, "all_but_")}"]',
        ]
    lines += [
        "",
        "[authorization.roles.admin]",
        'grants = [{ permissions = ["*"], resources = ["*"] }]',
        "",
        "[authorization.roles.none]",
        # A role must grant something: this one only what no call needs.
        'grants = [{ permissions = ["policy.read"], resources = ["nothing-is-named-so"] }]',
    ]
    for permission in Permission:
        others = ", ".join(f'"{p.value}"' for p in Permission if p is not permission)
        lines += [
            "",
            f"[authorization.roles.{_role(permission, 'only_')}]",
            f'grants = [{{ permissions = ["{permission.value}"], resources = ["*"] }}]',
            "",
            f"[authorization.roles.{_role(permission, 'all_but_')}]",
            f'grants = [{{ permissions = [{others}], resources = ["*"] }}]',
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Issuer:
    """Signs JWTs for any principal with one Ed25519 key; its public key is in
    `public_key_file` (PEM) for the server's --jwt-public-key."""

    key: Ed25519PrivateKey
    public_key_file: Path

    @classmethod
    def create(cls, directory: Path) -> Issuer:
        key = Ed25519PrivateKey.generate()
        path = directory / "jwt-public.pem"
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return cls(key, path)

    def token(self, subject: str, *, lifetime_seconds: int = 3600) -> str:
        now = int(time.time())
        claims = {
            "sub": subject,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now - 5,
            "exp": now + lifetime_seconds,
        }
        return jwt.encode(claims, self.key, algorithm="EdDSA")


def server_config(
    directory: Path, redis_url: str, issuer: Issuer, policy_toml: str, ca: trustme.CA
) -> ServerConfig:
    """TLS with a certificate `ca` issues, authentication by JWT (`issuer`'s key)
    and authorization by `policy_toml`."""
    policy = directory / "policy.toml"
    policy.write_text(policy_toml)
    served = write_server_cert(ca, directory)
    return ServerConfig(
        listen="127.0.0.1:0",
        tls_cert_file=served.cert,
        tls_key_file=served.key,
        redis_url=redis_url,
        data_dir=directory,
        policy_file=policy,
        jwt_public_key_files=(issuer.public_key_file,),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `token` (none for None)."""
    return () if token is None else (("authorization", f"Bearer {token}"),)


@dataclass
class Stubs:
    """Raw stubs of every packetbus service over one channel (credentials per call)."""

    agents: agent_service_pb2_grpc.AgentServiceStub
    carcel: carcel_service_pb2_grpc.CarcelServiceStub
    groups: consumer_group_service_pb2_grpc.ConsumerGroupServiceStub
    context: context_service_pb2_grpc.ContextServiceStub
    custody: custody_service_pb2_grpc.CustodyServiceStub
    findings: finding_service_pb2_grpc.FindingServiceStub
    packets: packet_service_pb2_grpc.PacketServiceStub
    policy: policy_service_pb2_grpc.PolicyServiceStub
    records: record_service_pb2_grpc.RecordServiceStub
    tasks: task_service_pb2_grpc.TaskServiceStub
    topics: topic_service_pb2_grpc.TopicServiceStub

    @classmethod
    def over(cls, channel: grpc.aio.Channel) -> Stubs:
        return cls(
            agent_service_pb2_grpc.AgentServiceStub(channel),
            carcel_service_pb2_grpc.CarcelServiceStub(channel),
            consumer_group_service_pb2_grpc.ConsumerGroupServiceStub(channel),
            context_service_pb2_grpc.ContextServiceStub(channel),
            custody_service_pb2_grpc.CustodyServiceStub(channel),
            finding_service_pb2_grpc.FindingServiceStub(channel),
            packet_service_pb2_grpc.PacketServiceStub(channel),
            policy_service_pb2_grpc.PolicyServiceStub(channel),
            record_service_pb2_grpc.RecordServiceStub(channel),
            task_service_pb2_grpc.TaskServiceStub(channel),
            topic_service_pb2_grpc.TopicServiceStub(channel),
        )


@dataclass(frozen=True)
class Outcome:
    """A call's status code and its ErrorInfo (reason "" and no metadata if none)."""

    code: grpc.StatusCode
    reason: str = ""
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.metadata)


def _error_info(status: status_pb2.Status) -> tuple[str, tuple[tuple[str, str], ...]]:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, tuple(sorted(info.metadata.items()))
    return "", ()


def failed(error: grpc.aio.AioRpcError) -> Outcome:
    """The outcome of a call that ended with `error`."""
    status = status_in(error.trailing_metadata()) or status_pb2.Status()
    reason, metadata = _error_info(status)
    return Outcome(error.code(), reason, metadata)


def per_packet(status: status_pb2.Status) -> Outcome:
    """The outcome a per-packet result's google.rpc.Status says."""
    reason, metadata = _error_info(status)
    return Outcome(_code(status.code), reason, metadata)


def _code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    raise AssertionError(f"no status code {number}")


Snapshot = dict[bytes, tuple[bytes, Any]]


async def snapshot(r: Any) -> Snapshot:
    """Every key of `r`'s store with its type and contents: a stream's entries and
    its consumer groups' cursors and pending lists too. TTLs are left out (they
    fall while the test runs)."""
    names = sorted(await key_names(r))
    async with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.type(name)
        types: list[bytes] = await pipe.execute()
    async with r.pipeline(transaction=False) as pipe:
        for name, kind in zip(names, types, strict=True):
            if kind == b"string":
                pipe.get(name)
            elif kind == b"hash":
                pipe.hgetall(name)
            elif kind == b"list":
                pipe.lrange(name, 0, -1)
            elif kind == b"set":
                pipe.smembers(name)
            elif kind == b"zset":
                pipe.zrange(name, 0, -1, withscores=True)
            elif kind == b"stream":
                pipe.xrange(name)
            else:
                pipe.exists(name)
        values = await pipe.execute()
    found: Snapshot = {}
    for name, kind, value in zip(names, types, values, strict=True):
        if kind == b"stream":
            groups = []
            for group in await r.xinfo_groups(name):
                pending = await r.xpending_range(name, group["name"], "-", "+", 10_000)
                cursor = group["last-delivered-id"]
                groups.append(
                    (
                        group["name"],
                        cursor,
                        [(p["message_id"], p["consumer"], p["times_delivered"]) for p in pending],
                    )
                )
            value = (value, groups)
        found[name] = (kind, value)
    return found


def differences(before: Snapshot, after: Snapshot) -> dict[str, list[bytes]]:
    """What changed between two snapshots: keys added, removed, changed."""
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


NOTHING: dict[str, list[bytes]] = {"added": [], "removed": [], "changed": []}


@dataclass
class Door:
    """A server with identity at the door, its store, and the parties that call it:
    `stubs` take credentials per call (`md(principal)`); `admin` is a Client as the
    principal ``admin``."""

    target: str
    issuer: Issuer
    redis: redis_asyncio.Redis
    stubs: Stubs
    admin: packetbus.Client
    tokens: dict[str, str] = field(default_factory=dict)
    identities: dict[str, packetbus.AgentIdentity] = field(default_factory=dict)

    async def identity(self, agent_id: str) -> packetbus.AgentIdentity:
        """`agent_id`'s signing identity, its key registered (by the admin) once."""
        if agent_id not in self.identities:
            self.identities[agent_id] = packetbus.AgentIdentity.generate(agent_id)
            await self.admin.register_identity(self.identities[agent_id])
        return self.identities[agent_id]

    def token(self, principal: str) -> str:
        """A valid JWT whose subject is `principal` (one per principal, cached)."""
        if principal not in self.tokens:
            self.tokens[principal] = self.issuer.token(principal)
        return self.tokens[principal]

    def md(self, principal: str) -> tuple[tuple[str, str], ...]:
        """The call metadata of `principal`'s calls."""
        return bearer(self.token(principal))


@contextlib.asynccontextmanager
async def open_door(directory: Path, redis_url: str, policy_toml: str) -> AsyncIterator[Door]:
    """A server over `redis_url` (a store of the test's own: `snapshot` reads all of
    it) authenticating JWTs and authorizing by `policy_toml`; stopped on exit."""
    issuer = Issuer.create(directory)
    ca = trustme.CA()
    config = server_config(directory, redis_url, issuer, policy_toml, ca)
    server = await start(config)
    target = f"127.0.0.1:{server.port}"
    ca_pem = ca.cert_pem.bytes()
    channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca_pem))
    redis = redis_asyncio.Redis.from_url(redis_url)
    tls = packetbus.TlsSettings(ca_pem=ca_pem)
    admin = await packetbus.Client.connect(target, tls=tls, token=issuer.token(ADMIN))
    try:
        yield Door(target, issuer, redis, Stubs.over(channel), admin)
    finally:
        await admin.close()
        await channel.close()
        await redis.aclose()
        await server.stop(grace=0)
