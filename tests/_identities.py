"""Callers with real identities, for tests of what the server lets a principal do.

A server configured as an operator would (no test gate): bearer JWTs verified
against a JWKS file (the principal is the token's `sub`, here a SPIFFE ID whose
last path segment is the agent id) and a policy file whose `[authorization]`
section gives each principal its grants (`policy_text`). `client_as(target,
token)` is a `packetbus.Client` whose every call carries that token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

import packetbus
from packetbus._config import ClientConfig
from packetbus_server import RunningServer, ServerConfig, start

SPIFFE_PREFIX = "spiffe://test.example/agent/"
ISSUER = "https://issuer.test.example"
AUDIENCE = "packetbus-identity-tests"
KID = "agents-1"

Grant = tuple[str, str]  # (permission glob, resource glob)


def spiffe(agent_id: str) -> str:
    """The principal name of the agent `agent_id` (its SPIFFE ID's last segment)."""
    return SPIFFE_PREFIX + agent_id


class Issuer:
    """An Ed25519 token issuer whose public key the server trusts (a JWKS file)."""

    def __init__(self) -> None:
        self._key = ed25519.Ed25519PrivateKey.generate()

    def jwks(self) -> str:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return json.dumps({"keys": [{**jwk, "kid": KID}]})

    def token(self, subject: str) -> str:
        """A token for `subject`, good for five minutes."""
        now = int(time.time())
        claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": KID})


def policy_text(grants: Mapping[str, Sequence[Grant]], rules: str = "") -> str:
    """A policy file: `rules` (TOML before the section), then an `[authorization]`
    section giving each principal name in `grants` a role of its own with those
    grants (deny by default for everything else)."""
    lines = [rules, "[authorization]", ""]
    roles = []
    for i, (name, granted) in enumerate(grants.items()):
        role = f"r{i}"
        lines += ["[[authorization.principals]]", f"match = {json.dumps(name)}"]
        lines += [f'roles = ["{role}"]', ""]
        entries = ", ".join(
            f"{{ permissions = [{json.dumps(p)}], resources = [{json.dumps(r)}] }}"
            for p, r in granted
        )
        roles += [f"[authorization.roles.{role}]", f"grants = [{entries}]", ""]
    return "\n".join(lines + roles)


def server_config(
    redis_url: str, folder: Path, issuer: Issuer, policy: str, **fields: Any
) -> ServerConfig:
    """A server config that takes `issuer`'s tokens and runs `policy` (files in `folder`)."""
    (folder / "jwks.json").write_text(issuer.jwks())
    (folder / "policy.toml").write_text(policy)
    return ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=folder / f"data-{uuid.uuid4().hex[:8]}",
        jwt_jwks_file=folder / "jwks.json",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        policy_file=folder / "policy.toml",
        **fields,
    )


class _WithToken:
    """Adds the bearer token to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# One interceptor per kind of call: a channel files each under the first kind it is.
class _UnaryUnary(_WithToken, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_WithToken, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_WithToken, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_WithToken, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


async def client_as(target: str, token: str) -> packetbus.Client:
    """A client of `target` whose every call carries bearer `token` (loopback)."""
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    channel = grpc.aio.insecure_channel(target, interceptors=[kind(token) for kind in kinds])
    await channel.channel_ready()
    return packetbus.Client(channel, ClientConfig())


@asynccontextmanager
async def guarded_server(
    redis_url: str,
    folder: Path,
    issuer: Issuer,
    grants: Mapping[str, Sequence[Grant]],
    rules: str = "",
    **settings: Any,
) -> AsyncIterator[RunningServer]:
    """A server (see server_config) authenticating `issuer`'s JWTs and authorizing by
    `grants`, with the governance `rules` (policy file TOML) and ServerConfig
    `settings` (e.g. metrics_listen), stopped on exit."""
    config = await asyncio.to_thread(
        server_config, redis_url, folder, issuer, policy_text(grants, rules)
    )
    srv = await start(replace(config, **settings))
    try:
        yield srv
    finally:
        await srv.stop(grace=0)


def guarded_fixtures(
    grants: Mapping[str, Sequence[Grant]], name: str, rules: str = "", **settings: Any
) -> tuple[Any, Any]:
    """A test module's fixtures `issuer` (an Issuer, module-scoped) and `guarded` (a
    guarded_server authenticating its JWTs and authorizing by `grants`, with `rules` and
    `settings`, module-scoped, its files in a temporary folder named after `name`), for
    the module to bind: ``issuer, guarded = guarded_fixtures(GRANTS, "my-tests")``."""

    @pytest.fixture(scope="module", name="issuer")
    def issuer_fixture() -> Issuer:
        return Issuer()

    @pytest.fixture(scope="module", name="guarded")
    async def guarded_fixture(
        redis_url: str, issuer: Issuer, tmp_path_factory: pytest.TempPathFactory
    ) -> AsyncIterator[RunningServer]:
        folder = tmp_path_factory.mktemp(name)
        async with guarded_server(redis_url, folder, issuer, grants, rules, **settings) as srv:
            yield srv

    return issuer_fixture, guarded_fixture
