"""Secure by default: beyond loopback, `serve` demands TLS and a way to authenticate
callers, or an explicit --insecure; and TLS settings that cannot serve are one
line before anything starts (issue 14, items 1 and 6)."""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
import trustme

from packetbus._cli import main
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import ServerConfig, start
from packetbus_server._exposure import (
    InsecureListenError,
    TlsSettingsError,
    exposure_problem,
    is_loopback,
)
from packetbus_server._tls import TlsFilesError
from tests._certs import ServerFiles, client_cert, write_server_cert
from tests.conftest import free_port, packetbus_serve, run_cli

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

# Nothing listens here: a server that got past its checks fails at once.
_NO_STORE = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("LOCALHOST:0", True),
        ("unix:/run/packetbus.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("192.168.1.20:50051", False),
        ("[fe80::1]:50051", False),
        ("bus.example.org:50051", False),
        ("localhost.evil.example:1", False),
        # gRPC binds an unbracketed IPv6 address whole (port 443): ::1:5005 is not ::1.
        ("::1:5005", False),
        ("::1", True),
        ("127.0.0.1", True),
    ],
)
def test_which_addresses_are_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_beyond_loopback_tls_and_authentication_are_needed(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "c", tmp_path / "k", tmp_path / "ca"
    wide = ServerConfig(listen="0.0.0.0:50051")
    assert "without TLS and authentication" in (exposure_problem(wide) or "")
    tls_only = ServerConfig(listen="0.0.0.0:50051", tls_cert_file=cert, tls_key_file=key)
    assert "without authentication" in (exposure_problem(tls_only) or "")
    for enough in (
        ServerConfig(
            listen="0.0.0.0:1", tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=ca
        ),
        ServerConfig(listen="0.0.0.0:1", tls_cert_file=cert, tls_key_file=key, jwt_jwks_file=ca),
        ServerConfig(
            listen="0.0.0.0:1", tls_cert_file=cert, tls_key_file=key, jwt_public_key_files=(ca,)
        ),
        ServerConfig(
            listen="0.0.0.0:1",
            tls_cert_file=cert,
            tls_key_file=key,
            tls_client_ca_file=ca,
            trust_xfcc=True,
        ),
        ServerConfig(listen="0.0.0.0:1", insecure=True),
        ServerConfig(listen="127.0.0.1:1"),
    ):
        assert exposure_problem(enough) is None, enough
    # Authentication without TLS: the credentials would cross the network in clear.
    assert exposure_problem(ServerConfig(listen="0.0.0.0:1", trust_xfcc=True))
    # A header anyone who reaches the port could send: trusted only from sidecars
    # that prove themselves with a client certificate.
    forgeable = ServerConfig(
        listen="0.0.0.0:1", tls_cert_file=cert, tls_key_file=key, trust_xfcc=True
    )
    assert "--tls-client-ca" in (exposure_problem(forgeable) or "")
    assert exposure_problem(ServerConfig(listen="127.0.0.1:1", trust_xfcc=True)) is None


def _refused(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("packetbus: cannot start: ")
    return lines[0]


def _serve_cli(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`packetbus serve OPTIONS` run in this process (the same `main` the command
    runs, without an interpreter's start per case), its stderr captured."""
    argv = ["serve", "--redis-url", _NO_STORE, "--data-dir", str(tmp_path / "data"), *options]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    return subprocess.CompletedProcess(argv, code, "", stderr.getvalue())


def test_the_command_refuses_every_interface_without_tls(tmp_path: Path) -> None:
    # The command itself, once: exit 2, one line, no traceback.
    result = run_cli(
        "serve", "--listen", "0.0.0.0:0", "--redis-url", _NO_STORE, "--data-dir", str(tmp_path)
    )
    line = _refused(result, 2)
    assert (
        "refusing to listen on 0.0.0.0:0 (beyond loopback) without TLS and authentication" in line
    )
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--insecure"):
        assert flag in line


def test_workers_refuse_every_interface_without_tls(tmp_path: Path) -> None:
    # serve --workers (issue 16): the workers' own ports bind on --listen's host,
    # so the shared port's check covers them; refused before any worker starts.
    port = free_port()
    result = run_cli(
        *("serve", "--workers", "2", "--listen", f"0.0.0.0:{port}", "--worker-ports", "0"),
        *("--redis-url", _NO_STORE, "--data-dir", str(tmp_path)),
    )
    line = _refused(result, 2)
    assert f"refusing to listen on 0.0.0.0:{port} (beyond loopback) without TLS" in line
    assert "workers serving" not in result.stdout


def test_the_cli_refuses_tls_without_authentication(tmp_path: Path) -> None:
    files = write_server_cert(trustme.CA(), tmp_path)
    result = _serve_cli(
        tmp_path,
        "--listen",
        "0.0.0.0:0",
        "--tls-cert",
        str(files.cert),
        "--tls-key",
        str(files.key),
    )
    assert "(beyond loopback) without authentication:" in _refused(result, 2)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (("--tls-key", "{key}"), "TLS needs both --tls-cert and --tls-key"),
        (("--tls-cert", "{cert}"), "TLS needs both --tls-cert and --tls-key"),
        (("--tls-client-ca", "{cert}"), "--tls-client-ca needs TLS"),
    ],
)
def test_the_cli_refuses_tls_settings_that_do_not_go_together(
    tmp_path: Path, options: tuple[str, ...], said: str
) -> None:
    files = write_server_cert(trustme.CA(), tmp_path)
    filled = [o.format(cert=files.cert, key=files.key) for o in options]
    assert said in _refused(_serve_cli(tmp_path, *filled), 2)


def _with_files(files: ServerFiles, *extra: str) -> tuple[str, ...]:
    return ("--tls-cert", str(files.cert), "--tls-key", str(files.key), *extra)


def test_the_cli_names_a_missing_certificate_file(tmp_path: Path) -> None:
    files = ServerFiles(tmp_path / "absent.crt", tmp_path / "absent.key")
    line = _refused(_serve_cli(tmp_path, *_with_files(files)), 1)
    assert line.endswith(f"TLS certificate {files.cert}: No such file or directory")


def test_the_cli_names_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    ca = trustme.CA()
    files = write_server_cert(ca, tmp_path)
    other = write_server_cert(ca, tmp_path, name="other")
    mixed = ServerFiles(files.cert, other.key)
    line = _refused(_serve_cli(tmp_path, *_with_files(mixed)), 1)
    assert line.endswith(
        f"TLS key {other.key} is not the key of certificate {files.cert} (its first certificate)"
    )
    assert "PRIVATE KEY" not in line


def test_the_cli_names_files_that_are_not_pem(tmp_path: Path) -> None:
    files = write_server_cert(trustme.CA(), tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    line = _refused(_serve_cli(tmp_path, *_with_files(ServerFiles(garbage, files.key))), 1)
    assert line.endswith(f"TLS certificate {garbage}: not a PEM certificate")
    line = _refused(_serve_cli(tmp_path, *_with_files(ServerFiles(files.cert, garbage))), 1)
    assert f"TLS key {garbage}: not an unencrypted PEM private key" in line
    line = _refused(_serve_cli(tmp_path, *_with_files(files, "--tls-client-ca", str(garbage))), 1)
    assert line.endswith(f"TLS client CA {garbage}: not a PEM certificate")


async def test_start_refuses_every_interface_without_tls() -> None:
    with pytest.raises(InsecureListenError, match=r"refusing to listen on 0\.0\.0\.0:0"):
        await start(ServerConfig(listen="0.0.0.0:0", redis_url=_NO_STORE))


async def test_start_refuses_tls_settings_that_do_not_go_together(tmp_path: Path) -> None:
    with pytest.raises(TlsSettingsError, match="TLS needs both --tls-cert and --tls-key"):
        await start(ServerConfig(redis_url=_NO_STORE, tls_key_file=tmp_path / "k"))


async def test_start_refuses_tls_files_that_do_not_check(tmp_path: Path) -> None:
    ca = trustme.CA()
    files, other = write_server_cert(ca, tmp_path), write_server_cert(ca, tmp_path, name="o")
    config = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=_NO_STORE,
        data_dir=tmp_path / "data",
        tls_cert_file=files.cert,
        tls_key_file=other.key,
    )
    with pytest.raises(TlsFilesError, match="is not the key of certificate"):
        await start(config)


async def _answers(port: int, credentials: grpc.ChannelCredentials | None) -> bool:
    target = f"127.0.0.1:{port}"
    async with (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    ) as channel:
        stub = packet_service_pb2_grpc.PacketServiceStub(channel)
        reply = await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest(), timeout=10)
    return bool(reply.version)


@pytest.mark.slow
async def test_insecure_serves_every_interface_when_asked(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = packetbus_serve(
        "--listen",
        f"0.0.0.0:{port}",
        "--redis-url",
        redis_url,
        "--data-dir",
        str(tmp_path / "data"),
        "--insecure",
    )
    try:
        assert await _answers(port, None)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0


@pytest.mark.slow
async def test_mtls_serves_every_interface(redis_url: str, tmp_path: Path) -> None:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    files = write_server_cert(server_ca, tmp_path)
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients.pem"))
    port = free_port()
    server = packetbus_serve(
        "--listen",
        f"0.0.0.0:{port}",
        "--redis-url",
        redis_url,
        "--data-dir",
        str(tmp_path / "data"),
        *_with_files(files, "--tls-client-ca", str(tmp_path / "clients.pem")),
    )
    try:
        worker = client_cert(client_ca, uris=("spiffe://example.org/agent/worker-1",))
        credentials = grpc.ssl_channel_credentials(
            server_ca.cert_pem.bytes(), private_key=worker.key, certificate_chain=worker.cert
        )
        assert await _answers(port, credentials)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _answers(port, grpc.ssl_channel_credentials(server_ca.cert_pem.bytes()))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
