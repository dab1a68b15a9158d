"""A mesh sidecar's x-forwarded-client-cert header (issue 14, item 2): its parser
(unit and property tests) and a real server that trusts it only with trust_xfcc."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from packetbus_server import RunningServer, ServerConfig, start
from packetbus_server._access import Gate
from packetbus_server._access.setup import authenticators
from packetbus_server._access.xfcc import (
    KEYS,
    REPEATABLE,
    XfccError,
    common_name,
    parse,
    principal_of,
)
from tests._identity import Metadata, PolicyReadRefused, authenticated_as, dispatch, error_info
from tests._store_keys import key_names, new_keys
from tests._tokens import AUDIENCE, ISSUER, bearer, pem, token
from tests.conftest import free_port, packetbus_serve, unique

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

HEADER = "x-forwarded-client-cert"
SIDECAR = "By=spiffe://example.org/ns/bus/sa/packetbus;Hash=9f86d081884c7d65"


def xfcc(value: str) -> Metadata:
    return ((HEADER, value),)


# --- the parser -------------------------------------------------------------------


def test_envoys_pairs_quoted_values_and_repeated_sans() -> None:
    header = (
        'By=http://frontend.example.com;Hash=468ed33b;Subject="/C=US/ST=CA/O=Ex/CN=Test Client";'
        "URI=http://testclient.example.com;DNS=a.example.com;dns=b.example.com,"
        'By=spiffe://example.org/b;Subject="CN=Doe\\, John \\"JD\\",O=Ex";URI=spiffe://example.org/x'
    )
    first, last = parse(header)
    assert first == {
        "by": ["http://frontend.example.com"],
        "hash": ["468ed33b"],
        "subject": ["/C=US/ST=CA/O=Ex/CN=Test Client"],
        "uri": ["http://testclient.example.com"],
        "dns": ["a.example.com", "b.example.com"],
    }
    assert last["subject"] == ['CN=Doe\\, John \\"JD\\",O=Ex']  # the subject's own escapes
    assert common_name(last["subject"][0]) == 'Doe, John "JD"'
    assert common_name(first["subject"][0]) == "Test Client"


@pytest.mark.parametrize(
    ("subject", "name"),
    [
        ("CN=planner,OU=agents,O=Example", "planner"),
        ("cn = planner ,O=Example", "planner"),
        ("O=Example+CN=planner", "planner"),
        ("CN=a\\2Cb,O=x", "a,b"),
        ("/O=Example/OU=agents/CN=planner", "planner"),
        ("O=Example", None),
        ("", None),
    ],
)
def test_the_cn_of_a_subject(subject: str, name: str | None) -> None:
    assert common_name(subject) == name


@pytest.mark.parametrize(
    "header",
    [
        "",
        "URI",
        "URI=spiffe://a/b;",
        "URI=spiffe://a/b,",
        ",URI=spiffe://a/b",
        "Who=someone",
        'Subject="CN=a;URI=spiffe://a/b',
        'Subject=CN="a"',
        'Subject="CN=a"x',
        "Hash=a;Hash=b",
        "URI=spiffe://a/b;;URI=spiffe://a/c",
        "x" * (64 * 1024 + 1),
    ],
)
def test_a_malformed_header_is_an_error(header: str) -> None:
    with pytest.raises(XfccError):
        parse(header)


def test_the_principal_of_an_element() -> None:
    spiffe = {"uri": ["https://not-spiffe.example", "spiffe://example.org/agent/planner"]}
    principal = principal_of({**spiffe, "subject": ["CN=other"]})
    assert (principal.name, principal.source, principal.agent_id) == (
        "spiffe://example.org/agent/planner",
        "xfcc",
        "planner",
    )
    assert principal_of({"uri": ["https://x"], "subject": ["CN=worker-2,O=x"]}).name == "worker-2"
    with pytest.raises(XfccError, match="no SPIFFE ID"):
        principal_of({"subject": [""], "hash": ["ab"]})
    with pytest.raises(XfccError, match="more than one SPIFFE ID"):
        principal_of({"uri": ["spiffe://a/x", "spiffe://a/y"]})


def quote(value: str) -> str:
    """`value` as Envoy writes it: in quotes when it holds a separator, a quote, a
    backslash or surrounding blanks (every ``"`` in it is escaped already, as RFC
    4514 subjects are)."""
    if value and not any(c in value for c in ',;="\\') and value.strip(" \t") == value:
        return value
    return f'"{value}"'


# Values as Envoy writes them: any characters, a quote or backslash only escaped
# (the subject's RFC 4514 escapes).
_escaped = st.characters(codec="utf-8").map(lambda c: "\\" + c)
_plain = st.characters(codec="utf-8", exclude_characters='"\\')
_values = st.lists(st.one_of(_plain, _escaped), max_size=12).map("".join)
_pair_keys = st.sampled_from(KEYS).flatmap(
    lambda key: st.sampled_from([key, key.upper(), key.capitalize()])
)
_element = st.lists(st.tuples(_pair_keys, _values), min_size=1, max_size=6).filter(
    lambda pairs: all(
        [k.lower() for k, _ in pairs].count(key) <= 1 for key in KEYS if key not in REPEATABLE
    )
)


@given(st.lists(_element, min_size=1, max_size=4))
def test_what_a_proxy_writes_is_read_back(elements: list[list[tuple[str, str]]]) -> None:
    header = ",".join(";".join(f"{key}={quote(value)}" for key, value in e) for e in elements)
    expected: list[dict[str, list[str]]] = []
    for pairs in elements:
        element: dict[str, list[str]] = {}
        for key, value in pairs:
            element.setdefault(key.lower(), []).append(value)
        expected.append(element)
    assert parse(header) == expected


@given(st.lists(st.tuples(st.sampled_from(["CN", "O", "OU"]), st.text(max_size=8)), max_size=4))
def test_a_subjects_escapes_are_undone(attributes: list[tuple[str, str]]) -> None:
    def escaped(value: str) -> str:  # RFC 4514 2.4
        return "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)

    subject = ",".join(f"{kind}={escaped(value)}" for kind, value in attributes)
    names = [value.strip() for kind, value in attributes if kind == "CN"]
    assert common_name(subject) == (names[0] if names else None)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_as_malformed(header: str) -> None:
    try:
        elements = parse(header)
    except XfccError:
        return
    assert elements
    try:
        principal = principal_of(elements[-1])
    except XfccError:
        return
    assert principal.name
    assert principal.source == "xfcc"


# --- a server that trusts it ------------------------------------------------------


@pytest.fixture(scope="module")
def signing_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _config(
    redis_url: str, folder: Path, key: ed25519.Ed25519PrivateKey, trust: bool
) -> ServerConfig:
    (folder / "issuer.pem").write_bytes(pem(key))
    return ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=folder / "data",
        jwt_public_key_files=(folder / "issuer.pem",),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        trust_xfcc=trust,
    )


async def _observed(config: ServerConfig) -> RunningServer:
    return await start(config, gate=Gate(authenticators(config), authorizer=PolicyReadRefused))


@pytest.fixture(scope="module", params=[True, False], ids=["trusted", "untrusted"])
async def observed(
    request: pytest.FixtureRequest,
    redis_url: str,
    signing_key: ed25519.Ed25519PrivateKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[bool, grpc.aio.Channel]]:
    """(trust_xfcc, a channel to a server with it and bearer JWTs) that refuses
    policy.read, so a call shows which principal it was (see tests._identity)."""
    trust: bool = request.param
    config = _config(redis_url, tmp_path_factory.mktemp("xfcc"), signing_key, trust)
    srv = await _observed(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield trust, channel
    await srv.stop(grace=0)


async def _refusal(channel: grpc.aio.Channel, metadata: Metadata, raw_redis: Any) -> str:
    """The ErrorInfo reason of an UNAUTHENTICATED Dispatch, once nothing was written."""
    before = await key_names(raw_redis)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dispatch(channel, unique("topic"), metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
    assert await new_keys(raw_redis, before) == set()
    return error_info(refused.value)[0]


@pytest.mark.parametrize(
    ("header", "principal"),
    [
        (
            f"{SIDECAR};URI=spiffe://example.org/agent/planner-1",
            "spiffe://example.org/agent/planner-1",
        ),
        (f'{SIDECAR};Subject="CN=worker-2,OU=agents,O=Example";URI=https://w2', "worker-2"),
        (f'{SIDECAR};Subject="/O=Example/CN=approver"', "approver"),
        # Only the last element, the one the nearest sidecar appended, counts.
        (
            "URI=spiffe://example.org/agent/coordinator,"
            f"{SIDECAR};URI=spiffe://example.org/agent/worker-9",
            "spiffe://example.org/agent/worker-9",
        ),
    ],
)
async def test_a_trusted_header_is_the_principal_and_an_untrusted_one_means_nothing(
    observed: tuple[bool, grpc.aio.Channel], raw_redis: Any, header: str, principal: str
) -> None:
    trusted, channel = observed
    if trusted:
        assert await authenticated_as(channel, xfcc(header)) == principal
        await dispatch(channel, unique("topic"), xfcc(header))
    else:
        assert await _refusal(channel, xfcc(header), raw_redis) == "CREDENTIAL_MISSING"


async def test_a_bearer_token_comes_before_the_header(
    observed: tuple[bool, grpc.aio.Channel], signing_key: ed25519.Ed25519PrivateKey
) -> None:
    _, channel = observed
    # Malformed: were it read, the call would be XFCC_INVALID.
    both = bearer(token(signing_key, "EdDSA", sub="auditor")) + xfcc("Who=nobody")
    assert await authenticated_as(channel, both) == "auditor"


@pytest.mark.parametrize(
    "header",
    [
        'URI=spiffe://example.org/agent/a;Subject="CN=x',
        "Hash=1;Hash=2;URI=spiffe://example.org/agent/a",
        f'{SIDECAR};Subject="O=Example"',  # names no one
        f"URI=spiffe://example.org/agent/a,{SIDECAR}",  # the last names no one
        "garbage",
    ],
)
async def test_a_malformed_trusted_header_is_xfcc_invalid_and_writes_nothing(
    observed: tuple[bool, grpc.aio.Channel], raw_redis: Any, header: str
) -> None:
    trusted, channel = observed
    reason = await _refusal(channel, xfcc(header), raw_redis)
    assert reason == ("XFCC_INVALID" if trusted else "CREDENTIAL_MISSING")


async def test_packetbus_serve_trusts_the_header_only_with_trust_xfcc(
    redis_url: str, tmp_path: Path
) -> None:
    header = xfcc(f"{SIDECAR};URI=spiffe://example.org/agent/planner-1")
    port = free_port()
    server = packetbus_serve(
        "--listen",
        f"127.0.0.1:{port}",
        "--redis-url",
        redis_url,
        "--data-dir",
        str(tmp_path / "data"),
        "--trust-xfcc",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await dispatch(channel, unique("topic"), header)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await dispatch(channel, unique("topic"), ())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert error_info(refused.value)[0] == "CREDENTIAL_MISSING"
    finally:
        server.terminate()
        server.wait(timeout=30)
