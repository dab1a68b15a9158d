"""`serve --workers N` spreads clients evenly: each worker has a port of its own,
GetServerInfo assigns workers in turn, and the client connects to its assigned one.

Over the shared port alone (SO_REUSEPORT hashes connections) 4 clients often
land 1:3 on 2 workers; these tests ask for an exact split."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest

import packetbus
from packetbus.v1 import custody_pb2, packet_service_pb2, packet_service_pb2_grpc
from packetbus_server import RunningServer
from tests.conftest import (
    free_port,
    new_packet,
    packetbus_serve,
    run_cli,
    unique,
    wait_for_workers,
    worker_pids,
)

pytestmark = pytest.mark.slow

WORKERS = 2


def _serve_workers(
    listen: str,
    redis_url: str,
    data_dir: Path,
    *options: str,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """`packetbus serve --workers WORKERS` on `listen`, draining at once when stopped,
    once every worker serves (on the shared port and its own)."""
    process = packetbus_serve(
        *("--workers", str(WORKERS), "--listen", listen),
        *("--redis-url", redis_url, "--data-dir", str(data_dir)),
        *("--grace", "0", "--drain-notice", "0"),
        *options,
        env=env,
    )
    wait_for_workers(process, WORKERS)
    return process


@contextlib.asynccontextmanager
async def _forwarder(host: str, port: int) -> AsyncIterator[str]:
    """A TCP forwarder on 127.0.0.1 to `host`:`port` (as a NAT or a published
    container port does): its target."""

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    forwarder = await asyncio.start_server(forward, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{forwarder.sockets[0].getsockname()[1]}"
    finally:
        forwarder.close()


@pytest.fixture
def two_workers(redis_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = _serve_workers(f"127.0.0.1:{port}", redis_url, tmp_path / "data")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


async def _serving(client: packetbus.Client) -> int:
    """The worker that serves `client`'s connection."""
    info = await client.server_info()
    assert info.HasField("workers")
    return info.workers.serving


async def _connect(target: str, **settings: object) -> packetbus.Client:
    # The workers start after the supervisor says it serves: wait for them.
    config = packetbus.ClientConfig(**settings)  # type: ignore[arg-type]
    return await packetbus.Client.connect(target, config=config, timeout=60)


async def test_clients_land_evenly_on_the_workers(two_workers: str) -> None:
    clients = [await _connect(two_workers) for _ in range(4)]
    try:
        info = await clients[0].server_info()
        assert len(info.workers.ports) == WORKERS
        assert len(set(info.workers.ports)) == WORKERS
        served = Counter([await _serving(c) for c in clients])
        assert served == {0: 2, 1: 2}
        # Every call of a client goes to its worker (one connection, its port).
        for c in clients:
            assert {await _serving(c) for _ in range(5)} == {await _serving(c)}
    finally:
        for c in clients:
            await c.close()


async def test_a_clients_connections_spread_over_the_workers(two_workers: str) -> None:
    # 2 clients x 4 connections: 8 connections, 4 on each worker; dispatch batches
    # take turns over a client's connections, so one client uses both workers.
    clients = [await _connect(two_workers, connections=4) for _ in range(2)]
    try:
        served: Counter[int] = Counter()
        for c in clients:
            for channel in [c._channel, *c._extra_channels]:
                stub = packet_service_pb2_grpc.PacketServiceStub(channel)
                info = await stub.GetServerInfo(
                    packet_service_pb2.GetServerInfoRequest(), timeout=10
                )
                served[info.workers.serving] += 1
        assert served == {0: 4, 1: 4}
        topic = unique("spread")
        results = await clients[0].dispatch_batch([new_packet(topic) for _ in range(10)])
        assert all(r.WhichOneof("outcome") == "receipt" for r in results)
    finally:
        for c in clients:
            await c.close()


async def test_consumers_of_one_group_spread_over_the_workers(two_workers: str) -> None:
    topic = unique("spread")
    admin = await _connect(two_workers)
    alpha = await _connect(two_workers)
    beta = await _connect(two_workers)
    try:
        # Consecutive clients are assigned consecutive workers: the consumers' differ.
        assert await _serving(alpha) != await _serving(beta)
        await admin.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
        sent = [new_packet(topic) for _ in range(40)]
        await admin.dispatch_batch(sent)
        got: dict[str, set[str]] = {"alpha": set(), "beta": set()}
        all_got = asyncio.Event()

        async def work(client: packetbus.Client, name: str) -> None:
            async with client.consume(topic, "g", consumer=name, max_batch_packets=5) as c:
                async for batch in c.batches():
                    got[name].update(d.packet.packet.tracking_id for d in batch)
                    if len(got["alpha"] | got["beta"]) == len(sent):
                        all_got.set()
                    await c.ack(*batch)
                    await asyncio.sleep(0.05)  # leave some for the other consumer

        tasks = [asyncio.create_task(work(alpha, "alpha")), asyncio.create_task(work(beta, "beta"))]
        try:
            async with asyncio.timeout(30):
                await all_got.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert got["alpha"] | got["beta"] == {p.tracking_id for p in sent}
        assert not got["alpha"] & got["beta"]
    finally:
        for c in (admin, alpha, beta):
            await c.close()


async def test_opting_out_stays_on_the_shared_port(two_workers: str) -> None:
    client = await _connect(two_workers, spread_over_workers=False)
    try:
        assert client._channel._channel.target == two_workers.encode()
    finally:
        await client.close()


async def test_one_process_names_no_workers(server: RunningServer) -> None:
    async with await packetbus.Client.connect(f"127.0.0.1:{server.port}") as client:
        info = await client.server_info()
        assert not info.HasField("workers")


def test_a_crashed_worker_comes_back_on_its_port(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    process = _serve_workers(f"127.0.0.1:{port}", redis_url, tmp_path / "data")

    async def check() -> None:
        client = await _connect(f"127.0.0.1:{port}")
        try:
            before = await client.server_info()
            workers = worker_pids(process.pid)
            assert len(workers) == WORKERS
            # Kill every worker: the one this client uses among them. The supervisor
            # restarts each on the port it had, and the client's calls find it again.
            await asyncio.sleep(5.5)  # past the supervisor's minimum uptime
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            topic = unique("spread")
            results = await client.dispatch_batch([new_packet(topic)], timeout=60)
            assert results[0].WhichOneof("outcome") == "receipt"
            after = await client.server_info()
            assert after.workers.ports == before.workers.ports
            assert after.workers.serving == before.workers.serving
        finally:
            await client.close()

    try:
        asyncio.run(check())
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def _free_run(count: int) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1 now, below the
    kernel's ephemeral range (32768 and up here): parallel tests bind port 0, which
    never hands these out, so none can take them between this test's two servers."""
    for _ in range(50):
        first = random.randrange(20_000, 32_000 - count)
        try:
            with contextlib.ExitStack() as probes:
                for port in range(first, first + count):
                    probe = probes.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError("no run of free ports")


async def test_worker_ports_are_fixed_and_named(redis_url: str, tmp_path: Path) -> None:
    first = _free_run(1 + WORKERS)
    client_ports: list[int] = []
    for options in ([], ["--worker-ports", str(first + 1)]):
        server = await asyncio.to_thread(
            _serve_workers,
            f"127.0.0.1:{first}",
            redis_url,
            tmp_path / "data",
            *options,
            # Without the tests' PACKETBUS_WORKER_PORTS=0 (see conftest): the default.
            env={"PACKETBUS_WORKER_PORTS": ""} if not options else None,
        )
        try:
            client = await _connect(f"127.0.0.1:{first}")
            try:
                client_ports += list((await client.server_info()).workers.ports)
            finally:
                await client.close()
        finally:
            server.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(server.wait, 60) == 0
    assert client_ports == [first + 1, first + 2] * 2


def test_a_taken_worker_port_is_one_line(redis_url: str, tmp_path: Path) -> None:
    first = _free_run(1 + WORKERS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 2))
        taken.listen()
        done = run_cli(
            "serve",
            "--workers",
            str(WORKERS),
            "--listen",
            f"127.0.0.1:{first}",
            "--worker-ports",
            str(first + 1),
            "--redis-url",
            redis_url,
            "--data-dir",
            str(tmp_path / "data"),
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"packetbus: cannot start: worker port {first + 2} on 127.0.0.1: Address already in use "
        "(workers listen on --worker-ports FIRST and the ports after it; default: the port "
        "after --listen's)"
    ]


@pytest.mark.parametrize("offset", [0, -1])
def test_worker_ports_that_include_the_shared_port_are_one_line(
    redis_url: str, tmp_path: Path, offset: int
) -> None:
    # The shared port is every worker's: named as one worker's own, clients sent
    # there would land on any worker. Refused before anything starts.
    first = _free_run(1 + WORKERS) + 1
    done = run_cli(
        *("serve", "--workers", str(WORKERS), "--listen", f"127.0.0.1:{first}"),
        *("--worker-ports", str(first + offset), "--redis-url", redis_url),
        *("--data-dir", str(tmp_path / "data")),
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"packetbus: cannot start: --worker-ports {first + offset}: the workers' own ports "
        f"{first + offset}..{first + offset + 1} include the shared port {first} of --listen"
    ]


async def test_unreachable_worker_ports_leave_the_client_on_the_shared_port(
    redis_url: str, tmp_path: Path
) -> None:
    # The server on 127.0.0.2, reached through a forwarder on 127.0.0.1 (as through
    # a NAT or a published container port): the workers' ports are not reachable
    # on the host the client dialed.
    port = free_port()
    server = await asyncio.to_thread(
        _serve_workers, f"127.0.0.2:{port}", redis_url, tmp_path / "data"
    )
    try:
        async with _forwarder("127.0.0.2", port) as shared:
            client = await _connect(shared)
            try:
                assert client._channel._channel.target == shared.encode()
                info = await client.server_info()
                assert len(info.workers.ports) == WORKERS  # named, but not reached
                results = await client.dispatch_batch([new_packet(unique("spread"))])
                assert results[0].WhichOneof("outcome") == "receipt"
            finally:
                await client.close()
    finally:
        server.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 60) == 0


async def test_worker_ports_of_another_server_on_the_dialed_host_are_not_used(
    redis_url: str, tmp_path: Path
) -> None:
    # The server on 127.0.0.2 behind a forwarder on 127.0.0.1, and on 127.0.0.1 the
    # same worker ports are another server's (another replica, a dev server): the
    # client must not move its calls there, however well that server answers.
    first = _free_run(2 + WORKERS)
    servers = []
    for host, port, name in (("127.0.0.2", first, "a"), ("127.0.0.1", first + 1, "b")):
        servers.append(
            await asyncio.to_thread(
                _serve_workers,
                f"{host}:{port}",
                redis_url,
                tmp_path / name,
                *("--worker-ports", str(first + 2)),
            )
        )
    try:
        async with _forwarder("127.0.0.2", first) as shared:
            ids = []
            for target in (shared, f"127.0.0.1:{first + 1}"):
                direct = await _connect(target, spread_over_workers=False)
                try:
                    ids.append((await direct.server_info()).server_id)
                finally:
                    await direct.close()
            behind, other = ids
            assert behind != other  # two servers, each with its own data dir and key
            client = await _connect(shared, connections=2)
            try:
                assert client._channel._channel.target == shared.encode()
                for _ in range(3):
                    assert (await client.server_info()).server_id == behind
                # Dispatches go over the extra connections: sealed by the server behind.
                packet = new_packet(unique("spread"))
                await client.dispatch_batch([packet])
                stored = await client.get_packet(packet.tracking_id)
                actors = {
                    custody_pb2.CustodyRecord.FromString(e.record).actor
                    for e in stored.packet.chain_of_custody
                }
                assert actors == {behind}
            finally:
                await client.close()
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            assert await asyncio.to_thread(server.wait, 60) == 0
