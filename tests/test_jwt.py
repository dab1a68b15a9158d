"""Bearer JWTs at the door (issue 14, item 2): real keys, real signed tokens, a real
server on loopback and raw calls with `authorization: Bearer` metadata."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from packetbus_server import Limits, RunningServer, ServerConfig, start
from packetbus_server._access import Gate
from packetbus_server._access.jwt_keys import thumbprint
from packetbus_server._access.setup import authenticators
from tests._identity import (
    Metadata,
    PolicyReadRefused,
    authenticated_as,
    dispatch,
    error_info,
    server_info,
)
from tests._store_keys import key_names, new_keys
from tests._tokens import (
    AUDIENCE,
    ISSUER,
    SUBJECT,
    bearer,
    jwks,
    pem,
    token,
)
from tests.conftest import unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

RsaKey = rsa.RSAPrivateKey


@dataclass(frozen=True)
class Keys:
    ed: ed25519.Ed25519PrivateKey  # JWKS kid "ed-1"
    ec: ec.EllipticCurvePrivateKey  # JWKS kid "ec-1"
    rsa: RsaKey  # a PEM file (no kid)
    stranger: ed25519.Ed25519PrivateKey  # configured nowhere
    stranger_rsa: RsaKey  # configured nowhere


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token PyJWT would not make (alg none, HS256 keyed by a public key)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(signature)}"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": SUBJECT, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, **overrides}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        ed=ed25519.Ed25519PrivateKey.generate(),
        ec=ec.generate_private_key(ec.SECP256R1()),
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        stranger=ed25519.Ed25519PrivateKey.generate(),
        stranger_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def _config(redis_url: str, folder: Path, keys: Keys, **fields: Any) -> ServerConfig:
    (folder / "jwks.json").write_text(jwks((keys.ed, "ed-1"), (keys.ec, "ec-1")))
    (folder / "rsa.pem").write_bytes(pem(keys.rsa))
    return ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=folder / "data",
        jwt_jwks_file=folder / "jwks.json",
        jwt_public_key_files=(folder / "rsa.pem",),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        **fields,
    )


@pytest.fixture(scope="module")
async def observed(
    redis_url: str, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    """A server that takes these keys' tokens and refuses policy.read (so a call
    shows which principal it was, see tests._identity)."""
    config = _config(redis_url, tmp_path_factory.mktemp("jwt"), keys)
    gate = Gate(authenticators(config), authorizer=PolicyReadRefused)
    srv = await start(config, gate=gate)
    yield srv
    await srv.stop(grace=0)


@pytest.fixture
async def channel(observed: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observed.port}") as ch:
        yield ch


# --- admitted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "algorithm", "kid"),
    [("ed", "EdDSA", "ed-1"), ("ec", "ES256", "ec-1"), ("rsa", "RS256", None)],
)
async def test_a_good_token_of_each_key_type_is_its_sub(
    channel: grpc.aio.Channel, keys: Keys, which: str, algorithm: str, kid: str | None
) -> None:
    good = token(getattr(keys, which), algorithm, kid)
    await server_info(channel, bearer(good))
    await dispatch(channel, unique("topic"), bearer(good))
    assert await authenticated_as(channel, bearer(good)) == SUBJECT


async def test_a_pem_key_is_named_by_its_thumbprint_and_an_audience_list_may_hold_ours(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    named = thumbprint(keys.rsa.public_key())
    good = token(keys.rsa, "RS256", named, sub="auditor", aud=["other", AUDIENCE])
    assert await authenticated_as(channel, bearer(good)) == "auditor"
    # The leeway: expired 10 s ago, starting in 10 s: both still good.
    now = int(time.time())
    assert await authenticated_as(channel, bearer(token(keys.ed, "EdDSA", "ed-1", exp=now - 10)))
    assert await authenticated_as(channel, bearer(token(keys.ed, "EdDSA", "ed-1", nbf=now + 10)))


# --- refused ----------------------------------------------------------------------


def _public_pem_as_secret(keys: Keys) -> str:
    # The classic confusion: HS256 "signed" with the verifier's public key as secret.
    secret = pem(keys.ed)
    header = {"alg": "HS256", "kid": "ed-1", "typ": "JWT"}
    unsigned = handmade(header, _claims()).rsplit(".", 1)[0]
    mac = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{_b64(mac)}"


MINUTES_AGO = -120  # beyond the 30 s leeway
REFUSED: dict[str, tuple[Callable[[Keys], Metadata], str]] = {
    "expired": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1", exp=int(time.time()) + MINUTES_AGO)),
        "TOKEN_EXPIRED",
    ),
    "not yet valid (nbf)": (
        lambda k: bearer(token(k.ec, "ES256", "ec-1", nbf=int(time.time()) + 120)),
        "TOKEN_NOT_YET_VALID",
    ),
    "issued in the future (iat)": (
        lambda k: bearer(token(k.rsa, "RS256", iat=int(time.time()) + 120)),
        "TOKEN_NOT_YET_VALID",
    ),
    "wrong audience": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1", aud="another-service")),
        "TOKEN_WRONG_AUDIENCE",
    ),
    "audience list without ours": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1", aud=["a", "b"])),
        "TOKEN_WRONG_AUDIENCE",
    ),
    "wrong issuer": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1", iss="https://evil.example.org")),
        "TOKEN_WRONG_ISSUER",
    ),
    "forged (another key, a known kid)": (
        lambda k: bearer(token(k.stranger, "EdDSA", "ed-1")),
        "TOKEN_INVALID",
    ),
    "forged (another RSA key, no kid)": (
        lambda k: bearer(token(k.stranger_rsa, "RS256")),
        "TOKEN_INVALID",
    ),
    "forged and expired (the signature is checked first)": (
        lambda k: bearer(token(k.stranger, "EdDSA", "ed-1", exp=int(time.time()) - 600)),
        "TOKEN_INVALID",
    ),
    "alg none": (
        lambda k: bearer(handmade({"alg": "none", "typ": "JWT"}, _claims())),
        "TOKEN_INVALID",
    ),
    "alg none naming a key": (
        lambda k: bearer(handmade({"alg": "none", "kid": "ed-1"}, _claims(), b"x")),
        "TOKEN_INVALID",
    ),
    "HS256 with the public key as secret": (
        lambda k: bearer(_public_pem_as_secret(k)),
        "TOKEN_INVALID",
    ),
    "another algorithm than its key's": (
        lambda k: bearer(token(k.rsa, "RS256", "ec-1")),
        "TOKEN_INVALID",
    ),
    "exp beyond any float (10**400)": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1", exp=10**400)),
        "TOKEN_INVALID",
    ),
    # A principal's name goes into custody records and `custody verify`'s lines.
    "sub with a newline": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1", sub="w-1\nentry 2: VALID approved")),
        "PRINCIPAL_INVALID",
    ),
    "sub with a terminal escape": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1", sub="w-1\x1b[2K")),
        "PRINCIPAL_INVALID",
    ),
    "sub with a bidi override": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1", sub="w-1\u202egnp.exe")),
        "PRINCIPAL_INVALID",
    ),
    "unknown kid": (
        lambda k: bearer(token(k.stranger, "EdDSA", "ed-2")),
        "TOKEN_UNKNOWN_KEY",
    ),
    "no sub": (lambda k: bearer(token(k.ed, "EdDSA", "ed-1", sub=None)), "TOKEN_INVALID"),
    "empty sub": (lambda k: bearer(token(k.ed, "EdDSA", "ed-1", sub="")), "TOKEN_INVALID"),
    "no exp": (lambda k: bearer(token(k.ed, "EdDSA", "ed-1", exp=None)), "TOKEN_INVALID"),
    "no aud": (lambda k: bearer(token(k.ed, "EdDSA", "ed-1", aud=None)), "TOKEN_INVALID"),
    "no iss": (lambda k: bearer(token(k.ed, "EdDSA", "ed-1", iss=None)), "TOKEN_INVALID"),
    "garbage": (lambda k: bearer("garbage"), "TOKEN_INVALID"),
    "three parts of garbage": (lambda k: bearer("abc.def.ghi"), "TOKEN_INVALID"),
    "a bit flipped in the signature": (
        lambda k: bearer(_flipped(token(k.ed, "EdDSA", "ed-1"))),
        "TOKEN_INVALID",
    ),
    "not a bearer scheme": (
        lambda k: (("authorization", "Basic dXNlcjpwYXNzd29yZA=="),),
        "TOKEN_INVALID",
    ),
    "bearer without a token": (lambda k: (("authorization", "Bearer "),), "TOKEN_INVALID"),
    "two tokens": (
        lambda k: bearer(token(k.ed, "EdDSA", "ed-1")) + bearer(token(k.ec, "ES256", "ec-1")),
        "TOKEN_INVALID",
    ),
}


def _flipped(good: str) -> str:
    head, _, signature = good.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[5] ^= 0x01
    return f"{head}.{_b64(bytes(raw))}"


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_bad_token_is_unauthenticated_with_its_reason_and_writes_nothing(
    channel: grpc.aio.Channel, keys: Keys, raw_redis: Any, case: str
) -> None:
    make, reason = REFUSED[case]
    metadata = make(keys)
    before = await key_names(raw_redis)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dispatch(channel, unique("topic"), metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
    assert error_info(refused.value) == (reason, {})
    details = refused.value.details() or ""
    for _, value in metadata:  # the token is never said back
        secret = value.removeprefix("Bearer ")
        assert not secret or secret not in details
    assert await new_keys(raw_redis, before) == set()


async def test_no_token_is_credential_missing_and_writes_nothing(
    channel: grpc.aio.Channel, raw_redis: Any
) -> None:
    before = await key_names(raw_redis)
    for call in (server_info(channel, ()), dispatch(channel, unique("topic"), ())):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(refused.value) == ("CREDENTIAL_MISSING", {})
    assert await new_keys(raw_redis, before) == set()


# --- keys rotated while the server runs -------------------------------------------


async def test_a_rotated_jwks_file_is_used_without_a_restart(
    redis_url: str, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(jwks((keys.ed, "old")))
    config = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        jwt_jwks_file=jwks_file,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        limits=Limits(policy_reload_seconds=0.05),
    )
    srv = await start(config)  # the gate _app builds from the config
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            old, new = token(keys.ed, "EdDSA", "old"), token(keys.ec, "ES256", "new")
            await server_info(channel, bearer(old))  # verified, and now cached
            # The new key added, the old one removed (a new file renamed over the old).
            staged = tmp_path / "jwks.next"
            staged.write_text(jwks((keys.ec, "new")))
            staged.replace(jwks_file)

            async def refused_reason(metadata: Metadata) -> str | None:
                try:
                    await server_info(channel, metadata)
                except grpc.aio.AioRpcError as exc:
                    return error_info(exc)[0]
                return None

            await eventually(lambda: refused_reason(bearer(old)), "TOKEN_UNKNOWN_KEY")
            await server_info(channel, bearer(new))
            # A bad new file keeps the keys in force, and says why.
            with caplog.at_level(logging.WARNING, logger="packetbus.server.access"):
                jwks_file.write_text('{"keys": [')
                # Keys are looked at when a call needs them.
                await eventually(
                    lambda: _called_and_warned(
                        channel, bearer(new), caplog, f"JWKS {jwks_file}: not JSON"
                    ),
                    True,
                )
            await server_info(channel, bearer(new))
            assert await refused_reason(bearer(old)) == "TOKEN_UNKNOWN_KEY"
    finally:
        await srv.stop(grace=0)


async def _called_and_warned(
    channel: grpc.aio.Channel, metadata: Metadata, caplog: pytest.LogCaptureFixture, text: str
) -> bool:
    await server_info(channel, metadata)
    return any(text in record.getMessage() for record in caplog.records)


async def eventually(probe: Callable[[], Awaitable[object]], expected: object) -> None:
    """Wait until `probe()` gives `expected` (AssertionError after 10 s)."""
    deadline = time.monotonic() + 10
    while (seen := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {seen!r}, not {expected!r}"
        await asyncio.sleep(0.05)
