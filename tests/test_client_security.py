"""The client's side of identity (issue 14): TLS, mutual TLS and bearer tokens.

A real grpc.aio server on loopback, with certificates made here (trustme), stands
for packetbus: it answers Health and GetServerInfo, records each call's metadata
and peer, and refuses Dispatch the way packetbus's gate does (the gate's own
`denial` status), so the client's handling of a refusal is tested on the wire.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import trustme
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

import packetbus
from packetbus import Client, ClientConfig, PacketbusError, SyncClient, TlsSettings, TokenFile
from packetbus._security import local_kind
from packetbus.rich_status import STATUS_DETAILS_KEY
from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from packetbus_server._access.gate import denial
from packetbus_server._access.permissions import Permission
from packetbus_server._access.principal import Principal
from tests.conftest import new_packet, run_cli

# Every wait here is bounded by a connect timeout of a few seconds.
# Identity, not storage: one backend (see conftest).
pytestmark = [pytest.mark.timeout(90), pytest.mark.one_backend]


@dataclass
class Recorded:
    """What the test server saw: each call's method, metadata and peer certificate CN."""

    calls: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    # Dispatch answers: "deny" (PERMISSION_DENIED), "unauthenticated" or "ok".
    dispatch: str = "deny"

    def note(self, method: str, context: grpc.aio.ServicerContext) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        auth = context.auth_context()
        cn = b"".join(auth.get("x509_common_name", [])).decode()
        self.calls.append((method, metadata, cn))

    def tokens(self, method: str) -> list[str]:
        return [m.get("authorization", "") for name, m, _ in self.calls if name == method]


class _Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # (untyped stubs)
    def __init__(self, recorded: Recorded) -> None:
        self._recorded = recorded

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self._recorded.note("Check", context)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class _Packets(packet_service_pb2_grpc.PacketServiceServicer):
    def __init__(self, recorded: Recorded) -> None:
        self._recorded = recorded

    async def GetServerInfo(
        self, request: packet_service_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> packet_service_pb2.GetServerInfoResponse:
        if not request.assign_worker:  # not the call Client.connect makes (see _workers)
            self._recorded.note("GetServerInfo", context)
        return packet_service_pb2.GetServerInfoResponse(version="test")

    async def Subscribe(
        self, request: packet_service_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[packet_service_pb2.SubscribeResponse]:
        self._recorded.note("Subscribe", context)
        status = denial(
            Principal("spiffe://t/agent/x", "mtls", "x"), Permission.TOPICS_SUBSCRIBE, "jobs"
        )
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            status.message,
            trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
        )
        yield packet_service_pb2.SubscribeResponse()  # never: aborted above

    async def Dispatch(
        self, request: packet_service_pb2.DispatchRequest, context: grpc.aio.ServicerContext
    ) -> packet_service_pb2.DispatchResponse:
        self._recorded.note("Dispatch", context)
        if self._recorded.dispatch == "deny":
            status = denial(
                Principal("spiffe://t/agent/x", "mtls", "x"), Permission.TOPICS_PUBLISH, "jobs"
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                status.message,
                trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
            )
        if self._recorded.dispatch == "unauthenticated":
            info = error_details_pb2.ErrorInfo(reason="TOKEN_EXPIRED", domain="packetbus")
            status = status_pb2.Status(code=16, message="the bearer token has expired")
            status.details.add().Pack(info)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                status.message,
                trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
            )
        return packet_service_pb2.DispatchResponse()


@dataclass
class RecordingServer:
    target: str
    recorded: Recorded
    ca: trustme.CA
    ca_file: Path
    tmp: Path

    def client_cert(self, name: str, ca: trustme.CA | None = None) -> tuple[Path, Path]:
        """A client certificate (CN `name`) from `ca` (default: the server's CA): files."""
        issued = (ca or self.ca).issue_cert(common_name=name)
        cert, key = self.tmp / f"{name}.crt", self.tmp / f"{name}.key"
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(cert), append=True)
        issued.private_key_pem.write_to_path(str(key))
        return cert, key


async def _serve(
    tmp: Path, *, tls: bool = True, mtls: bool = False
) -> tuple[grpc.aio.Server, RecordingServer]:
    recorded = Recorded()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(_Health(recorded), server)
    packet_service_pb2_grpc.add_PacketServiceServicer_to_server(_Packets(recorded), server)  # type: ignore[abstract]  # (the rest answer UNIMPLEMENTED)
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    if tls:
        issued = ca.issue_cert("localhost", "127.0.0.1")
        credentials = grpc.ssl_server_credentials(
            [(issued.private_key_pem.bytes(), b"".join(b.bytes() for b in issued.cert_chain_pems))],
            root_certificates=ca.cert_pem.bytes() if mtls else None,
            require_client_auth=mtls,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, RecordingServer(f"127.0.0.1:{port}", recorded, ca, ca_file, tmp)


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[RecordingServer]:
    server, info = await _serve(tmp_path)
    yield info
    await server.stop(None)


@pytest.fixture
async def mtls_server(tmp_path: Path) -> AsyncIterator[RecordingServer]:
    server, info = await _serve(tmp_path, mtls=True)
    yield info
    await server.stop(None)


@pytest.fixture
async def plain_server(tmp_path: Path) -> AsyncIterator[RecordingServer]:
    server, info = await _serve(tmp_path, tls=False)
    yield info
    await server.stop(None)


@pytest.fixture(autouse=True)
def _no_connection_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own PACKETBUS_TLS_*/TOKEN* must not leak into these tests."""
    for name in (
        "PACKETBUS_TLS_CA",
        "PACKETBUS_TLS_CERT",
        "PACKETBUS_TLS_KEY",
        "PACKETBUS_TLS_SERVER_NAME",
        "PACKETBUS_TOKEN",
        "PACKETBUS_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


# -- TLS and mTLS -------------------------------------------------------------


async def test_a_client_with_the_ca_verifies_the_server(tls_server: RecordingServer) -> None:
    tls = TlsSettings(ca_file=tls_server.ca_file)
    async with await Client.connect(tls_server.target, tls=tls, timeout=5) as client:
        assert (await client.server_info()).version == "test"
        assert await client.health() == "SERVING"


async def test_pem_bytes_and_a_server_name_for_an_ip_target(tls_server: RecordingServer) -> None:
    # The certificate names localhost and 127.0.0.1; the override is checked too.
    port = tls_server.target.rpartition(":")[2]
    tls = TlsSettings(ca_pem=tls_server.ca.cert_pem.bytes(), server_name="localhost")
    async with await Client.connect(f"127.0.0.1:{port}", tls=tls, timeout=5) as client:
        assert (await client.server_info()).version == "test"
    wrong = TlsSettings(ca_pem=tls_server.ca.cert_pem.bytes(), server_name="elsewhere.example")
    with pytest.raises(PacketbusError) as caught:
        await Client.connect(tls_server.target, tls=wrong, timeout=1.0)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_a_server_certificate_from_another_ca_fails_unavailable_in_time(
    tls_server: RecordingServer, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    started = time.monotonic()
    with pytest.raises(PacketbusError) as caught:
        await Client.connect(tls_server.target, tls=TlsSettings(ca_file=other), timeout=1.5)
    assert time.monotonic() - started < 5
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "within 1.5s" in caught.value.message
    assert "over TLS: check the CA" in caught.value.message
    assert tls_server.recorded.calls == []


async def test_a_plaintext_client_does_not_reach_a_tls_server(tls_server: RecordingServer) -> None:
    with pytest.raises(PacketbusError) as caught:
        await Client.connect(tls_server.target, config=ClientConfig(tls=None), timeout=1.0)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_presents_the_client_certificate(mtls_server: RecordingServer) -> None:
    cert, key = mtls_server.client_cert("agent-7")
    tls = TlsSettings(ca_file=mtls_server.ca_file, cert_file=cert, key_file=key)
    async with await Client.connect(mtls_server.target, tls=tls, timeout=5) as client:
        await client.server_info()
    assert [cn for name, _, cn in mtls_server.recorded.calls if name == "GetServerInfo"] == [
        "agent-7"
    ]


@pytest.mark.parametrize("which", ["none", "another CA"])
async def test_mutual_tls_refuses_a_client_without_a_good_certificate(
    mtls_server: RecordingServer, which: str
) -> None:
    tls = TlsSettings(ca_file=mtls_server.ca_file)
    if which == "another CA":
        cert, key = mtls_server.client_cert("intruder", ca=trustme.CA())
        tls = TlsSettings(ca_file=mtls_server.ca_file, cert_file=cert, key_file=key)
    with pytest.raises(PacketbusError) as caught:
        await Client.connect(mtls_server.target, tls=tls, timeout=1.0)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert mtls_server.recorded.calls == []


def test_tls_settings_refuse_half_a_client_certificate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both cert and key"):
        TlsSettings(cert_file=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="ca_file or ca_pem"):
        TlsSettings(ca_file=tmp_path / "ca.pem", ca_pem=b"x")


def test_tls_settings_show_no_pem_content() -> None:
    shown = repr(TlsSettings(ca_file="ca.pem", cert_pem=b"CERT-BYTES", key_pem=b"KEY-BYTES"))
    assert "KEY-BYTES" not in shown
    assert "CERT-BYTES" not in shown
    assert "ca_file='ca.pem'" in shown
    assert "key_pem" in shown


# -- bearer tokens --------------------------------------------------------------


async def test_a_token_is_sent_as_bearer_metadata_on_unary_calls_and_streams(
    tls_server: RecordingServer,
) -> None:
    tls = TlsSettings(ca_file=tls_server.ca_file)
    async with await Client.connect(tls_server.target, tls=tls, token="jwt-1", timeout=5) as client:
        await client.server_info()
        # A stream carries it too; its refusal (nothing to resume) ends the iteration.
        async with client.subscribe("jobs") as subscription:
            with pytest.raises(PacketbusError) as caught:
                await anext(subscription)
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.error_info is not None
    assert caught.value.error_info.metadata["permission"] == "topics.subscribe"
    assert tls_server.recorded.tokens("GetServerInfo") == ["Bearer jwt-1"]
    assert tls_server.recorded.tokens("Subscribe") == ["Bearer jwt-1"]
    assert tls_server.recorded.tokens("Check") == []  # connect waits for the channel only


async def test_a_token_read_from_a_file_with_its_newline_is_sent_stripped(
    tls_server: RecordingServer, tmp_path: Path
) -> None:
    # What a newcomer writes: token=open("worker-1.jwt").read(), the file ending in
    # a newline (echo, an editor). It was refused as "spanning lines".
    saved = tmp_path / "worker-1.jwt"
    saved.write_text("jwt-from-file\n")
    tls = TlsSettings(ca_file=tls_server.ca_file)
    token = saved.read_text()
    async with await Client.connect(tls_server.target, tls=tls, token=token, timeout=5) as client:
        await client.server_info()
    assert tls_server.recorded.tokens("GetServerInfo") == ["Bearer jwt-from-file"]
    with pytest.raises(ValueError, match="spans lines"):
        await Client.connect(tls_server.target, tls=tls, token="a\nb", timeout=5)


async def test_a_token_callable_is_asked_again_for_every_call(tls_server: RecordingServer) -> None:
    issued: list[str] = []

    def fresh() -> str:
        issued.append(f"jwt-{len(issued) + 1}")
        return issued[-1]

    tls = TlsSettings(ca_file=tls_server.ca_file)
    async with await Client.connect(tls_server.target, tls=tls, token=fresh, timeout=5) as client:
        for _ in range(3):
            await client.server_info()
    # connect asks once (to fail early on no token) and once for its worker
    # assignment call (see packetbus._workers), then once per call.
    assert tls_server.recorded.tokens("GetServerInfo") == [
        "Bearer jwt-3",
        "Bearer jwt-4",
        "Bearer jwt-5",
    ]


async def test_a_token_file_is_read_again_when_it_changes(tls_server: RecordingServer) -> None:
    path = tls_server.tmp / "token"
    path.write_text("jwt-old\n")
    tls = TlsSettings(ca_file=tls_server.ca_file)
    async with await Client.connect(
        tls_server.target, tls=tls, token=TokenFile(path), timeout=5
    ) as client:
        await client.server_info()
        path.write_text("jwt-rotated-and-longer\n")
        await client.server_info()
    assert tls_server.recorded.tokens("GetServerInfo") == [
        "Bearer jwt-old",
        "Bearer jwt-rotated-and-longer",
    ]


async def test_environment_variables_configure_tls_and_the_token(
    tls_server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACKETBUS_TLS_CA", str(tls_server.ca_file))
    monkeypatch.setenv("PACKETBUS_TOKEN", "jwt-from-env")
    config = ClientConfig(target=tls_server.target)
    assert config.tls == TlsSettings(ca_file=str(tls_server.ca_file))
    assert "jwt-from-env" not in repr(config)
    async with await Client.connect(config=config, timeout=5) as client:
        await client.server_info()
    monkeypatch.delenv("PACKETBUS_TOKEN")
    token_file = tls_server.tmp / "env-token"
    token_file.write_text("jwt-from-file")
    monkeypatch.setenv("PACKETBUS_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("PACKETBUS_TLS_SERVER_NAME", "localhost")
    async with await Client.connect(tls_server.target, timeout=5) as client:
        await client.server_info()
    assert tls_server.recorded.tokens("GetServerInfo") == [
        "Bearer jwt-from-env",
        "Bearer jwt-from-file",
    ]


async def test_a_token_over_plaintext_goes_to_loopback_only(plain_server: RecordingServer) -> None:
    async with await Client.connect(plain_server.target, token="jwt-local", timeout=5) as client:
        await client.server_info()
    assert plain_server.recorded.tokens("GetServerInfo") == ["Bearer jwt-local"]
    for target in ("10.1.2.3:50051", "bus.example.com:443", "dns:///bus.example.com:443"):
        started = time.monotonic()
        with pytest.raises(ValueError, match="only over TLS or to this machine"):
            await Client.connect(target, token="jwt-secret", timeout=5)
        assert time.monotonic() - started < 1  # refused before connecting


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("127.0.0.1:50051", grpc.LocalConnectionType.LOCAL_TCP),
        ("127.8.9.1:1", grpc.LocalConnectionType.LOCAL_TCP),
        ("localhost:50051", grpc.LocalConnectionType.LOCAL_TCP),
        ("[::1]:50051", grpc.LocalConnectionType.LOCAL_TCP),
        ("ipv4:127.0.0.1:50051", grpc.LocalConnectionType.LOCAL_TCP),
        ("unix:/run/packetbus.sock", grpc.LocalConnectionType.UDS),
        ("0.0.0.0:50051", None),
        ("192.168.1.4:50051", None),
        ("[2001:db8::1]:50051", None),
        ("localhost.evil.example:50051", None),
    ],
)
def test_which_targets_are_local(target: str, local: grpc.LocalConnectionType | None) -> None:
    assert local_kind(target) is local


async def test_an_empty_or_missing_token_is_said_before_connecting(
    plain_server: RecordingServer,
) -> None:
    with pytest.raises(ValueError, match="empty"):
        await Client.connect(plain_server.target, token="  ", timeout=5)
    with pytest.raises(FileNotFoundError):
        await Client.connect(
            plain_server.target, token=TokenFile(plain_server.tmp / "absent"), timeout=5
        )
    assert plain_server.recorded.calls == []


async def test_a_token_that_cannot_be_had_fails_the_call_as_never_sent(
    plain_server: RecordingServer,
) -> None:
    asked: list[int] = []

    def flaky() -> str:
        asked.append(1)
        if len(asked) > 1:
            raise OSError("token file is being rotated")
        return "jwt-first"

    plain_server.recorded.dispatch = "ok"
    async with await Client.connect(plain_server.target, token=flaky, timeout=5) as client:
        with pytest.raises(PacketbusError) as caught:
            # Time for several attempts with room after the last (backoff 0.05 s
            # doubling): on a loaded machine 1 s let the last attempt meet the
            # deadline, which is DEADLINE_EXCEEDED (see the test below).
            await client.dispatch(new_packet("jobs"), timeout=3)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "no bearer token: OSError: token file is being rotated" in caught.value.message
    # It never left the client: a write that surely did not happen; asked again on retries.
    assert caught.value.outcome_unknown is False
    assert len(asked) > 2
    assert plain_server.recorded.calls == []


async def test_a_deadline_met_while_retrying_a_missing_token_names_the_token(
    plain_server: RecordingServer,
) -> None:
    """The retries of a call whose token cannot be had end at the deadline: the
    DEADLINE_EXCEEDED says what the attempts before it met, not only the clock."""
    asked: list[float] = []

    def failing_then_hanging() -> str:
        asked.append(time.monotonic())
        if len(asked) == 1:
            return "jwt-first"
        if asked[-1] - asked[1] > 0.3:  # some attempts failed at once by now
            time.sleep(2)  # longer than the call's whole timeout
        raise OSError("token file is being rotated")

    plain_server.recorded.dispatch = "ok"
    async with await Client.connect(
        plain_server.target, token=failing_then_hanging, timeout=5
    ) as client:
        with pytest.raises(PacketbusError) as caught:
            await client.dispatch(new_packet("jobs"), timeout=1)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (
        "the attempt before failed UNAVAILABLE: Getting metadata from plugin failed with error: "
        "no bearer token: OSError: token file is being rotated"
    ) in caught.value.message
    assert plain_server.recorded.calls == []


# -- refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["deny", "unauthenticated"])
async def test_refusals_carry_their_error_info_and_are_never_retried(
    tls_server: RecordingServer, refusal: str
) -> None:
    tls_server.recorded.dispatch = refusal
    tls = TlsSettings(ca_file=tls_server.ca_file)
    async with await Client.connect(tls_server.target, tls=tls, token="jwt", timeout=5) as client:
        with pytest.raises(PacketbusError) as caught:
            await client.dispatch(new_packet("jobs"), timeout=3)
    error = caught.value
    assert error.outcome_unknown is False
    assert error.error_info is not None
    if refusal == "deny":
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert error.error_info.reason == "PERMISSION_DENIED"
        assert error.error_info.domain == "packetbus"
        assert error.error_info.metadata["permission"] == "topics.publish"
        assert error.error_info.metadata["resource"] == "jobs"
    else:
        assert error.code == grpc.StatusCode.UNAUTHENTICATED
        assert error.error_info.reason == "TOKEN_EXPIRED"
    assert len(tls_server.recorded.tokens("Dispatch")) == 1


async def test_the_sync_client_takes_tls_and_a_token(tls_server: RecordingServer) -> None:
    tls = TlsSettings(ca_file=tls_server.ca_file)

    def blocking() -> str:  # in a thread: the test server runs on this loop
        with SyncClient.connect(tls_server.target, tls=tls, token="jwt-sync", timeout=5) as client:
            version: str = client.server_info().version  # SyncClient's calls are Any
            return version

    assert await asyncio.to_thread(blocking) == "test"
    assert tls_server.recorded.tokens("GetServerInfo") == ["Bearer jwt-sync"]


# -- the CLI ----------------------------------------------------------------------


async def _cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = await asyncio.to_thread(run_cli, *argv, env=env, timeout=60)
    return done.returncode, done.stdout, done.stderr


async def test_cli_health_and_info_over_tls_with_a_token_file(tls_server: RecordingServer) -> None:
    token = tls_server.tmp / "cli-token"
    token.write_text("jwt-cli\n")
    common = ["--target", tls_server.target, "--tls-ca", str(tls_server.ca_file)]
    code, out, err = await _cli(*common, "--token-file", str(token), "health")
    assert (code, out.strip(), err) == (0, "SERVING", "")
    code, out, err = await _cli(*common, "--token-file", str(token), "info")
    assert code == 0, err
    assert tls_server.recorded.tokens("GetServerInfo") == ["Bearer jwt-cli"]


async def test_cli_mutual_tls_flags(mtls_server: RecordingServer) -> None:
    cert, key = mtls_server.client_cert("cli-agent")
    base = ["--target", mtls_server.target, "--tls-ca", str(mtls_server.ca_file)]
    code, _, err = await _cli(*base, "--tls-cert", str(cert), "--tls-key", str(key), "info")
    assert code == 0, err
    assert [cn for name, _, cn in mtls_server.recorded.calls if name == "GetServerInfo"] == [
        "cli-agent"
    ]
    code, _, err = await _cli("--timeout", "1", *base, "info")
    assert code == 1
    assert err.startswith("packetbus: UNAVAILABLE: could not reach a packetbus server")
    assert len(err.splitlines()) == 1


async def test_cli_reads_tls_and_token_from_the_environment(tls_server: RecordingServer) -> None:
    env = {
        "PACKETBUS_TARGET": tls_server.target,
        "PACKETBUS_TLS_CA": str(tls_server.ca_file),
        "PACKETBUS_TOKEN": "jwt-env-cli",
    }
    code, _, err = await _cli("info", env=env)
    assert code == 0, err
    assert tls_server.recorded.tokens("GetServerInfo") == ["Bearer jwt-env-cli"]


@pytest.mark.parametrize(
    ("refusal", "line"),
    [
        (
            "deny",
            "packetbus: permission denied: principal 'spiffe://t/agent/x' lacks permission "
            "topics.publish on 'jobs'",
        ),
        ("unauthenticated", "packetbus: not authenticated: the bearer token has expired"),
    ],
)
async def test_cli_says_a_refusal_in_one_line(
    tls_server: RecordingServer, refusal: str, line: str
) -> None:
    tls_server.recorded.dispatch = refusal
    code, _, err = await _cli(
        "--target",
        tls_server.target,
        "--tls-ca",
        str(tls_server.ca_file),
        "dispatch",
        "--topic",
        "jobs",
        "--origin",
        "x",
    )
    assert code == 1
    assert err.splitlines() == [line]
    assert "Traceback" not in err


async def test_cli_refuses_a_token_in_clear_text_to_another_machine(tmp_path: Path) -> None:
    code, out, err = await _cli(
        "--target", "192.0.2.1:50051", "health", env={"PACKETBUS_TOKEN": "jwt-do-not-leak"}
    )
    assert code == 2
    assert err.startswith("packetbus: a bearer token is sent only over TLS or to this machine")
    assert "jwt-do-not-leak" not in err + out


def test_cli_has_no_flag_for_the_token_itself() -> None:
    done = run_cli("--token", "jwt-secret-value", "health")
    assert done.returncode == 2
    assert "no --token: a token on the command line is visible" in done.stderr
    assert "jwt-secret-value" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # The global flags do not abbreviate (test_cli_global_flags): not placed at all.
        (["--toke=jwt-secret-value", "health"], "unrecognized arguments: --toke=***"),
        (["health", "--to=jwt-secret-value"], "ambiguous option: --to=*** could match"),
        (["health", "--tokn=jwt-secret-value"], "unrecognized arguments: --tokn=***"),
    ],
)
def test_a_misspelt_token_flag_never_repeats_the_token(argv: list[str], said: str) -> None:
    # argparse quotes the argument it could not place, "=VALUE" and all.
    done = run_cli(*argv)
    assert done.returncode == 2
    assert said in done.stderr
    assert "jwt-secret-value" not in done.stderr + done.stdout


def test_the_package_exports_the_settings() -> None:
    assert packetbus.TlsSettings is TlsSettings
    assert packetbus.TokenFile is TokenFile
    fresh: Callable[[], str] = TokenFile("/nonexistent")
    assert callable(fresh)


def test_a_subcommands_own_token_flag_is_untouched() -> None:
    # `tasks complete --token N` is a claim's fencing token, not a credential.
    from packetbus._cli import _parser

    args = _parser().parse_args(["tasks", "complete", "q", "t1", "--token", "5"])
    assert args.token == 5
    assert args.connect_token_file is None


def test_connection_flags_after_the_subcommand_stand_for_the_global_ones() -> None:
    from packetbus._cli import _parser

    args = _parser().parse_args(["--tls-ca", "a.pem", "health", "--tls-ca", "b.pem"])
    assert args.connect_tls_ca == "b.pem"
    args = _parser().parse_args(["--tls-ca", "a.pem", "--token-file", "t", "info"])
    assert (args.connect_tls_ca, args.connect_token_file) == ("a.pem", "t")
    args = _parser().parse_args(["info", "--tls-server-name", "bus.internal"])
    assert args.connect_tls_server_name == "bus.internal"
    # serve's --tls-cert is its own certificate, not the client's.
    args = _parser().parse_args(["serve", "--tls-cert", "s.crt", "--tls-key", "s.key"])
    assert (str(args.tls_cert), args.connect_tls_cert) == ("s.crt", None)
    # A nested subcommand too, its own --token kept.
    args = _parser().parse_args(["tasks", "complete", "q", "t", "--token", "7", "--tls-ca", "c"])
    assert (args.token, args.connect_tls_ca) == (7, "c")


async def test_cli_flags_after_the_subcommand(tls_server: RecordingServer) -> None:
    code, out, err = await _cli(
        "--target", tls_server.target, "health", "--tls-ca", str(tls_server.ca_file)
    )
    assert (code, out.strip(), err) == (0, "SERVING", "")
    # A token value after the subcommand is refused, not taken for --token-file's path.
    code, out, err = await _cli("health", "--token", "jwt-secret-after")
    assert code == 2
    assert "no --token: a token on the command line is visible" in err
    assert "jwt-secret-after" not in err + out
