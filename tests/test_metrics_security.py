"""The /metrics endpoint is secure by default (issue 15, item 1): beyond loopback
only with TLS (the server's certificate, and its client CA when set) or an
explicit --insecure; over TLS with certificates made in the test."""

from __future__ import annotations

import ssl
import urllib.error
from pathlib import Path

import pytest
import trustme

from packetbus_server import ServerConfig, start
from packetbus_server._exposure import InsecureListenError, exposure_problem
from packetbus_server._observability.endpoint import parse_address
from tests._certs import client_cert, write_server_cert
from tests._scrape import parse, scrape_text
from tests.conftest import free_port, run_cli

# The endpoint's rules, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

REFUSAL = (
    "packetbus: cannot start: refusing to serve metrics on 0.0.0.0:{port} (beyond loopback) without "
    "TLS: give --tls-cert and --tls-key (and --tls-client-ca to require a client "
    "certificate), serve them on loopback only, or --insecure\n"
)


def test_serve_refuses_metrics_beyond_loopback_without_tls(tmp_path: Path) -> None:
    port = free_port()
    done = run_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path),
        "--metrics-listen",
        f"0.0.0.0:{port}",
        env={"PACKETBUS_INSECURE": ""},
    )
    assert done.returncode == 2
    assert done.stderr == REFUSAL.format(port=port)
    assert done.stdout == ""
    assert not (tmp_path / "valkey").exists()  # refused before anything started


def test_serve_refuses_an_address_that_is_not_host_port(tmp_path: Path) -> None:
    done = run_cli(
        "serve", "--data-dir", str(tmp_path), env={"PACKETBUS_METRICS_LISTEN": "localhost"}
    )
    assert done.returncode == 2
    assert done.stderr == (
        "packetbus: cannot start: metrics address 'localhost' must be HOST:PORT (or [IPv6]:PORT)\n"
    )


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9464", ("::1", 9464)),
        (":9464", ("", 9464)),
    ],
)
def test_addresses_that_parse(listen: str, parsed: tuple[str, int]) -> None:
    assert parse_address(listen) == parsed


@pytest.mark.parametrize("listen", ["9464", "::1:9464", "[nope]:1", "host:", "h:65536", "h:-1"])
def test_addresses_that_do_not(listen: str) -> None:
    with pytest.raises(ValueError, match="metrics address"):
        parse_address(listen)


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"metrics_listen": "127.0.0.1:9464"}, False),
        ({"metrics_listen": "[::1]:9464"}, False),
        ({"metrics_listen": "localhost:9464"}, False),
        ({"metrics_listen": "0.0.0.0:9464"}, True),
        ({"metrics_listen": ":9464"}, True),
        ({"metrics_listen": "10.1.2.3:9464"}, True),
        ({"metrics_listen": "0.0.0.0:9464", "insecure": True}, False),
        (
            {
                "metrics_listen": "0.0.0.0:9464",
                "tls_cert_file": Path("c.pem"),
                "tls_key_file": Path("k.pem"),
            },
            False,
        ),
    ],
)
def test_the_rule(fields: dict[str, object], refused: bool) -> None:
    problem = exposure_problem(ServerConfig(**fields))  # type: ignore[arg-type]
    assert (problem is not None) == refused
    if refused:
        assert problem is not None
        assert problem.startswith("refusing to serve metrics on ")


async def test_start_refuses_it_too(tmp_path: Path) -> None:
    config = ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path, metrics_listen="0.0.0.0:0")
    with pytest.raises(InsecureListenError, match=r"refusing to serve metrics on 0\.0\.0\.0:0 "):
        await start(config)


async def test_metrics_over_tls_and_mutual_tls(redis_url: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    files = write_server_cert(ca, tmp_path)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    config = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        tls_cert_file=files.cert,
        tls_key_file=files.key,
        metrics_listen="127.0.0.1:0",
    )
    srv = await start(config)
    try:
        assert srv.metrics is not None
        assert srv.metrics.scheme == "https"
        url = f"https://127.0.0.1:{srv.metrics_port}/metrics"
        samples = parse(scrape_text(url, context=trusting))
        assert ("process_cpu_seconds_total", ()) in samples
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            scrape_text(f"http://127.0.0.1:{srv.metrics_port}/metrics")
    finally:
        await srv.stop(grace=0)

    # With a client CA: the scraper must present a certificate it signed.
    mutual = ServerConfig(
        listen="127.0.0.1:0",
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        tls_cert_file=files.cert,
        tls_key_file=files.key,
        tls_client_ca_file=tmp_path / "ca.pem",
        metrics_listen="127.0.0.1:0",
    )
    srv = await start(mutual)
    try:
        url = f"https://127.0.0.1:{srv.metrics_port}/metrics"
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            scrape_text(url, context=trusting)
        issued = client_cert(ca, common_name="prometheus")
        (tmp_path / "client.pem").write_bytes(issued.cert + issued.key)
        presenting = ssl.create_default_context()
        ca.configure_trust(presenting)
        presenting.load_cert_chain(tmp_path / "client.pem")
        assert ("process_cpu_seconds_total", ()) in parse(scrape_text(url, context=presenting))
    finally:
        await srv.stop(grace=0)
