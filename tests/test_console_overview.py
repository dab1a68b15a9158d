"""The console's Overview (issue 19): a real `packetbus serve --metrics-listen` and a real
`packetbus console --metrics-url` scraping it every half second; httpx against
/api/overview and its event stream. Dispatched packets show in the totals and rates, a
server restart (its counters reset) never gives a negative rate, an unreachable replica
is a gap (null) and not a zero, the URL's password is never shown, and a console
without --metrics-url answers 409. (The arithmetic alone: test_console_overview_series.)
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import packetbus
from tests._console import output, sse_events, start_console, stop
from tests.conftest import REPO, free_port, new_packet, run_cli, serve_process, serving, unique
from tests.test_readme import block

# A subprocess server and console: storage is not what is tested here.
pytestmark = pytest.mark.one_backend

INTERVAL = "0.5"  # seconds between the console's scrapes


class Replica:
    """One `packetbus serve` with its metrics endpoint, restartable on the same ports."""

    def __init__(self, redis_url: str, data_dir: Path) -> None:
        self.redis_url, self.data_dir = redis_url, data_dir
        self.port, self.metrics_port = free_port(), free_port()
        self.process = self._start()

    def _start(self) -> subprocess.Popen[str]:
        process = serve_process(
            self.port,
            self.redis_url,
            self.data_dir,
            "--metrics-listen",
            f"127.0.0.1:{self.metrics_port}",
        )
        # Read on, so its output never fills the pipe.
        assert process.stdout is not None
        threading.Thread(target=process.stdout.read, daemon=True).start()
        return process

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0

    def restart(self) -> None:
        self.stop()
        self.process = self._start()


@pytest.fixture(scope="module")
def replica(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    served = Replica(redis_url, tmp_path_factory.mktemp("overview-replica"))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def console(replica: Replica) -> Iterator[str]:
    # The replica's URL with credentials: a scraper behind Basic authentication (the
    # server ignores them) must never show them.
    url = replica.metrics_url.replace("http://", "http://scraper:s3cret-pw@")
    process, base = start_console(
        replica.target, "--metrics-url", url, "--metrics-interval", INTERVAL
    )
    yield base
    stop(process)


@pytest.fixture
async def http(console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console, timeout=20) as client:
        yield client


async def _samples(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await http.get("/api/overview")
    assert answer.status_code == 200, answer.text
    samples: list[dict[str, Any]] = answer.json()["samples"]
    return samples


async def _sample_after(http: httpx.AsyncClient, at: float, **wanted: Any) -> dict[str, Any]:
    """The first sample taken after `at` whose totals have `wanted`'s values (within 30 s)."""
    async with asyncio.timeout(30):
        while True:
            for candidate in await _samples(http):
                totals = candidate["totals"]
                if candidate["at"] > at and all(totals[k] == v for k, v in wanted.items()):
                    return candidate
            await asyncio.sleep(0.2)


async def _latest(http: httpx.AsyncClient, *, up: bool = True) -> dict[str, Any]:
    """The newest sample whose replicas are all `up` and have a rate (within 30 s)."""
    async with asyncio.timeout(30):
        while True:
            samples = await _samples(http)
            if samples:
                last = samples[-1]
                ready = last["values"]["dispatchedPerSecond"] is not None
                if all(r["up"] == up for r in last["replicas"]) and ready == up:
                    return last
            await asyncio.sleep(0.2)


def _dispatched_between(samples: list[dict[str, Any]], start: float, end: float) -> float:
    """The dispatch rate integrated over the samples in (start, end]: packets. A rate
    after a gap (null samples: the replica was down) spans the gap."""
    previous = start
    total = 0.0
    for s in samples:
        rate = s["values"]["dispatchedPerSecond"]
        if start < s["at"] <= end and rate is not None:
            total += rate * (s["at"] - previous)
            previous = s["at"]
    return total


async def test_dispatched_packets_show_in_the_totals_rates_and_latency(
    http: httpx.AsyncClient, replica: Replica
) -> None:
    base = await _latest(http)
    before = base["totals"]["dispatched"]
    assert isinstance(before, float)
    async with await packetbus.Client.connect(replica.target) as bus:
        for _ in range(7):
            await bus.dispatch(new_packet(unique("overview.in")))
    reached = await _sample_after(http, base["at"], dispatched=before + 7)
    samples = await _samples(http)
    # Rates over the scrapes between: they add up to the 7 packets (a rate is over the
    # scraper's monotonic clock, `at` the same instant on the wall clock, to the ms).
    assert _dispatched_between(samples, base["at"], reached["at"]) == pytest.approx(7, rel=0.02)
    latencies = [
        s["values"]["dispatchLatencyP99Ms"]
        for s in samples
        if base["at"] < s["at"] <= reached["at"]
    ]
    assert any(latency is not None and latency > 0 for latency in latencies)
    assert reached["replicas"] == [{"url": replica.metrics_url, "up": True, "error": None}]
    # The store's gauges, read by the server at scrape time.
    assert reached["values"]["storeMemoryBytes"] > 0
    assert reached["values"]["carcelPackets"] >= 0


async def test_a_restart_is_a_gap_then_counts_from_zero_never_negative(
    http: httpx.AsyncClient, replica: Replica
) -> None:
    base = await _latest(http)
    async with await packetbus.Client.connect(replica.target) as bus:
        await bus.dispatch(new_packet(unique("overview.restart")))
    counted = await _sample_after(http, base["at"], dispatched=base["totals"]["dispatched"] + 1)
    replica.stop()
    try:
        down = await _latest(http, up=False)
        # Unreachable: every series a gap, never a zero; the reason said.
        assert down["replicas"][0]["up"] is False
        # (cannot connect, or closed without an answer: it depends on when in its
        # shutdown the scrape came)
        assert down["replicas"][0]["error"]
        assert set(down["values"].values()) == {None}
        assert set(down["totals"].values()) == {None}
    finally:
        replica.restart()
    async with await packetbus.Client.connect(replica.target) as bus:
        for _ in range(3):
            await bus.dispatch(new_packet(unique("overview.restart")))
    # The new process counts from zero: its total is the 3 dispatched since.
    after = await _sample_after(http, down["at"], dispatched=3.0)
    samples = await _samples(http)
    rates = [
        s["values"]["dispatchedPerSecond"]
        for s in samples
        if s["at"] > counted["at"] and s["values"]["dispatchedPerSecond"] is not None
    ]
    assert rates
    assert min(rates) >= 0
    # Counted from zero across the restart: the rates since add up to the 3 dispatched
    # since (without the reset, the drop from the old total would be a negative rate).
    assert _dispatched_between(samples, counted["at"], after["at"]) == pytest.approx(3, rel=0.02)
    assert after["replicas"][0]["up"] is True


async def test_the_event_stream_sends_the_history_then_each_sample(
    http: httpx.AsyncClient, replica: Replica
) -> None:
    await _latest(http)
    async with http.stream("GET", "/api/overview/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = aiter(sse_events(stream))
        async with asyncio.timeout(20):
            _, event, history = await anext(events)
            assert event == "history"
            assert history["intervalSeconds"] == float(INTERVAL)
            assert history["windowSeconds"] == 600.0
            assert history["replicas"] == [replica.metrics_url]
            samples = history["samples"]
            assert isinstance(samples, list)
            assert samples
            last = samples[-1]["at"]
            for _ in range(2):
                _, event, data = await anext(events)
                assert event == "sample"
                assert isinstance(data["at"], float)
                assert data["at"] > last
                assert set(data) == {"at", "replicas", "values", "totals"}
                last = data["at"]


async def test_the_metrics_password_is_never_shown(http: httpx.AsyncClient, console: str) -> None:
    answer = await http.get("/api/overview")
    assert "s3cret" not in answer.text
    assert "s3cret" not in output(console)


async def test_an_unreachable_replica_is_a_gap_beside_a_reachable_one(replica: Replica) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/metrics"
    not_http = f"http://127.0.0.1:{replica.port}/metrics"  # the gRPC port: HTTP/2 only
    process, base = start_console(
        replica.target,
        "--metrics-url",
        replica.metrics_url,
        "--metrics-url",
        nowhere.replace("http://", "http://who:hunter22@"),
        "--metrics-url",
        not_http,
        "--metrics-interval",
        INTERVAL,
    )
    try:
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            async with asyncio.timeout(30):
                while len(samples := await _samples(http)) < 3:  # noqa: ASYNC110  (polling HTTP)
                    await asyncio.sleep(0.2)
            last = samples[-1]
            assert [r["url"] for r in last["replicas"]] == [replica.metrics_url, nowhere, not_http]
            assert [r["up"] for r in last["replicas"]] == [True, False, False]
            assert last["replicas"][0]["error"] is None
            assert last["replicas"][1]["error"].startswith("cannot connect: ")
            assert last["replicas"][2]["error"] == "not an HTTP/1.1 answer (BadStatusLine)"
            # The sum of the rates is unknown (a gap), the store's gauges are not.
            assert last["values"]["dispatchedPerSecond"] is None
            assert last["totals"]["dispatched"] is None
            assert last["values"]["storeMemoryBytes"] > 0
    finally:
        stop(process)
    printed = output(base)
    assert f"cannot scrape {nowhere}: cannot connect" in printed
    assert printed.count(f"cannot scrape {nowhere}") == 1  # said once, not at every scrape
    assert "hunter22" not in printed
    assert "Traceback" not in printed


async def test_without_metrics_url_the_overview_is_409_naming_the_option(
    replica: Replica,
) -> None:
    process, base = start_console(replica.target)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            for path in ("/api/overview", "/api/overview/events"):
                answer = await http.get(path)
                assert answer.status_code == 409
                assert answer.json()["code"] == "FAILED_PRECONDITION"
                assert "--metrics-url" in answer.json()["error"]
    finally:
        stop(process)


def test_cli_refuses_a_bad_metrics_url_or_interval(replica: Replica) -> None:
    for url, said in (
        ("ftp://me:pw-x9@host/metrics", "'ftp://host/metrics' is not an http(s)://"),
        ("http://host:port/metrics", "'http://host:port/metrics': the port is not a number"),
        ("http://[::1/metrics", "is not a URL"),
    ):
        bad = run_cli("console", "--target", replica.target, "--metrics-url", url)
        assert bad.returncode == 2, bad.stderr
        assert said in bad.stderr
        assert "pw-x9" not in bad.stderr
        assert bad.stderr.count("\n") == 1
    for interval in ("0.1", "61", "nan"):
        slow = run_cli("console", "--metrics-interval", interval)
        assert slow.returncode == 2
        assert "--metrics-interval must be 0.5-60 seconds" in slow.stderr


async def test_the_readme_overview_example_runs_as_written(tmp_path: Path) -> None:
    serve_line, console_line = block("console-overview").splitlines()
    grpc_port, metrics_port, console_port = free_port(), free_port(), free_port()
    env = {
        "PACKETBUS_LISTEN": f"127.0.0.1:{grpc_port}",
        "PACKETBUS_TARGET": f"127.0.0.1:{grpc_port}",
        "PACKETBUS_DATA_DIR": str(tmp_path),
        "PACKETBUS_CONSOLE_LISTEN": f"127.0.0.1:{console_port}",
    }
    started = []
    try:
        for line in (serve_line, console_line):
            argv = shlex.split(line.replace("9464", str(metrics_port)))
            argv[0] = str(REPO / argv[0])
            started.append(serving(argv, env=env))
            assert started[-1].stdout is not None
            threading.Thread(target=started[-1].stdout.read, daemon=True).start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{console_port}") as http:
            last = await _latest(http)
        assert last["replicas"] == [
            {"url": f"http://127.0.0.1:{metrics_port}/metrics", "up": True, "error": None}
        ]
        assert last["values"]["storeMemoryBytes"] > 0
    finally:
        for process in reversed(started):
            process.terminate()
            assert process.wait(timeout=60) == 0
