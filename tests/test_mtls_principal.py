"""The principal of a mutual-TLS call: its SPIFFE ID URI SAN, else its subject CN.

A grpc.aio server with the real server credentials (_tls) and one test method
that passes the real Gate with the mTLS authenticator and answers the caller
(`_access.caller()`) it then holds; real certificates, a real handshake."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from google.rpc import error_details_pb2, status_pb2

from packetbus_server._access import Gate, caller
from packetbus_server._access.mtls import MtlsAuthenticator
from packetbus_server._access.setup import authenticators
from packetbus_server._app import ServerConfig
from packetbus_server._tls import ReloadingCredentials, TlsPaths
from tests._certs import ClientCert, client_cert, write_server_cert

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

_METHOD = "/packetbus.test.Whoami/Whoami"


@dataclass
class _Door:
    port: int
    server_ca: trustme.CA
    client_ca: trustme.CA


async def _serve_whoami(
    credentials: ReloadingCredentials, gate: Gate | None = None
) -> tuple[grpc.aio.Server, int]:
    """A started server whose one method passes the gate (default: mTLS alone) and
    answers its caller as JSON {name, source, agent_id}; and its port."""
    gate = gate or Gate([MtlsAuthenticator()])

    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await gate.admit(_METHOD.lstrip("/"), request, context)
        principal = caller()
        assert principal is not None
        return json.dumps(
            {"name": principal.name, "source": principal.source, "agent_id": principal.agent_id}
        ).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "packetbus.test.Whoami", {"Whoami": grpc.unary_unary_rpc_method_handler(whoami)}
            )
        ]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials.credentials())
    await server.start()
    return server, port


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[_Door]:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    files = write_server_cert(server_ca, tmp_path)
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    credentials = ReloadingCredentials(TlsPaths(files.cert, files.key, tmp_path / "clients.pem"))
    server, port = await _serve_whoami(credentials)
    yield _Door(port, server_ca, client_ca)
    await server.stop(0)


async def _whoami(
    door: _Door, cert: ClientCert, metadata: tuple[tuple[str, str], ...] = ()
) -> dict[str, str]:
    credentials = grpc.ssl_channel_credentials(
        door.server_ca.cert_pem.bytes(), private_key=cert.key, certificate_chain=cert.cert
    )
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{door.port}", credentials, options=(("grpc.use_local_subchannel_pool", 1),)
    ) as channel:
        reply: bytes = await channel.unary_unary(_METHOD)(b"", timeout=5, metadata=metadata)
    found: dict[str, str] = json.loads(reply)
    return found


async def test_the_principal_is_the_spiffe_id(door: _Door) -> None:
    cert = client_cert(door.client_ca, uris=("spiffe://example.org/agent/planner",))
    assert await _whoami(door, cert) == {
        "name": "spiffe://example.org/agent/planner",
        "source": "mtls",
        "agent_id": "planner",
    }


async def test_the_spiffe_id_beats_the_common_name(door: _Door) -> None:
    cert = client_cert(
        door.client_ca, common_name="someone-else", uris=("spiffe://example.org/agent/w-2",)
    )
    assert await _whoami(door, cert) == {
        "name": "spiffe://example.org/agent/w-2",
        "source": "mtls",
        "agent_id": "w-2",
    }


async def test_without_a_spiffe_id_the_principal_is_the_common_name(door: _Door) -> None:
    cert = client_cert(door.client_ca, common_name="alice")
    assert await _whoami(door, cert) == {"name": "alice", "source": "mtls", "agent_id": "alice"}


async def _refusal(door: _Door, cert: ClientCert) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _whoami(door, cert)
    details = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(details).details[0].Unpack(info)
    return refused.value.code(), info.reason, refused.value.details() or ""


async def test_two_uri_sans_are_no_spiffe_identity(door: _Door) -> None:
    cert = client_cert(
        door.client_ca,
        common_name="alice",
        uris=("spiffe://example.org/agent/a", "spiffe://example.org/agent/b"),
    )
    code, reason, message = await _refusal(door, cert)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_IDENTITY_INVALID")
    assert "has 2 URI SANs" in message


async def test_a_malformed_spiffe_id_is_no_identity(door: _Door) -> None:
    cert = client_cert(door.client_ca, uris=("spiffe://example.org/agent/a?x=1",))
    code, reason, message = await _refusal(door, cert)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_IDENTITY_INVALID")
    assert "SPIFFE ID is not valid" in message


async def test_a_certificate_naming_no_one_is_refused(door: _Door) -> None:
    cert = client_cert(door.client_ca, uris=("https://example.org/not-spiffe",))
    code, reason, message = await _refusal(door, cert)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_IDENTITY_INVALID")
    assert "neither a SPIFFE ID URI SAN nor one subject CN" in message


async def test_a_call_without_a_client_certificate_has_no_mtls_principal(tmp_path: Path) -> None:
    # TLS without client authentication: the authenticator finds no credential,
    # and a gate with nothing else says the credential is missing.
    server_ca = trustme.CA()
    files = write_server_cert(server_ca, tmp_path)
    server, port = await _serve_whoami(ReloadingCredentials(TlsPaths(files.cert, files.key)))
    try:
        credentials = grpc.ssl_channel_credentials(server_ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary(_METHOD)(b"", timeout=5)
    finally:
        await server.stop(0)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    details = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(details).details[0].Unpack(info)
    assert info.reason == "CREDENTIAL_MISSING"


async def test_a_common_name_with_a_control_character_is_no_principal(door: _Door) -> None:
    # A principal's name is written into custody records and printed by the CLI.
    cert = client_cert(door.client_ca, common_name="alice\nentry 2: VALID")
    code, reason, message = await _refusal(door, cert)
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "PRINCIPAL_INVALID")
    assert message == (
        "the principal's name holds U+000A: control characters, line separators and bidi "
        "controls are refused"
    )


async def test_a_connection_outliving_its_client_certificate_is_refused(door: _Door) -> None:
    # The handshake checks notAfter once; a kept-alive connection's later calls must too.
    cert = client_cert(door.client_ca, common_name="alice", lifetime=datetime.timedelta(seconds=3))
    credentials = grpc.ssl_channel_credentials(
        door.server_ca.cert_pem.bytes(), private_key=cert.key, certificate_chain=cert.cert
    )
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{door.port}", credentials, options=(("grpc.use_local_subchannel_pool", 1),)
    ) as channel:
        whoami = channel.unary_unary(_METHOD)
        assert json.loads(await whoami(b"", timeout=5))["name"] == "alice"
        await asyncio.sleep(4)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await whoami(b"", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    details = dict(refused.value.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(details).details[0].Unpack(info)
    assert (info.reason, dict(info.metadata)) == ("CREDENTIAL_EXPIRED", {"principal": "alice"})


async def test_behind_a_mesh_the_sidecars_header_names_the_caller_behind_it(
    tmp_path: Path,
) -> None:
    """Client CA and --trust-xfcc together (a mesh whose sidecars hold certificates of
    that CA): the connection's certificate is the sidecar's own, so the header it
    forwards names the caller; a connection without the header is its certificate's."""
    server_ca, sidecars = trustme.CA(), trustme.CA()
    files = write_server_cert(server_ca, tmp_path)
    sidecars.cert_pem.write_to_path(str(tmp_path / "sidecars.pem"))
    config = ServerConfig(
        tls_cert_file=files.cert,
        tls_key_file=files.key,
        tls_client_ca_file=tmp_path / "sidecars.pem",
        trust_xfcc=True,
    )
    credentials = ReloadingCredentials(TlsPaths(files.cert, files.key, tmp_path / "sidecars.pem"))
    server, port = await _serve_whoami(credentials, Gate(authenticators(config)))
    try:
        door = _Door(port, server_ca, sidecars)
        sidecar = client_cert(sidecars, uris=("spiffe://example.org/sidecar/envoy-1",))
        forwarded = (("x-forwarded-client-cert", "URI=spiffe://example.org/agent/planner"),)
        assert await _whoami(door, sidecar, forwarded) == {
            "name": "spiffe://example.org/agent/planner",
            "source": "xfcc",
            "agent_id": "planner",
        }
        assert (await _whoami(door, sidecar))["name"] == "spiffe://example.org/sidecar/envoy-1"
    finally:
        await server.stop(0)
