"""The README's "Metrics endpoint" subsection, tried as written: its commands, and
its table against what a scrape really shows."""

from __future__ import annotations

import re
import shlex

import grpc
import pytest

from packetbus.v1 import packet_service_pb2, packet_service_pb2_grpc
from tests._scrape import parse, scrape_text
from tests.conftest import REPO, free_port, serving
from tests.test_readme import README, block

# The README's example, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend

# The table of every metric, under "### Metrics" (tests/test_metrics_readme.py checks
# it against the definitions; here, against a real scrape).
SECTION = README.partition("\n### Metrics\n")[2].partition("\n### ")[0]


def _table_names() -> set[str]:
    return set(re.findall(r"^\| `(\w+)` \|", SECTION, re.M))


async def test_the_metrics_example_runs_as_written_and_shows_the_table(tmp_path: object) -> None:
    serve, scrape = block("metrics").splitlines()
    port, grpc_port = free_port(), free_port()
    argv = shlex.split(serve.replace("9464", str(port)))
    argv[0] = str(REPO / argv[0])
    process = serving(
        argv,
        env={"PACKETBUS_LISTEN": f"127.0.0.1:{grpc_port}", "PACKETBUS_DATA_DIR": str(tmp_path)},
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = packet_service_pb2_grpc.PacketServiceStub(channel)
            await stub.GetServerInfo(packet_service_pb2.GetServerInfoRequest())
        url = re.search(r"http://\S+", scrape)
        assert url is not None
        samples = parse(scrape_text(url.group(0).replace("9464", str(port))))
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
    # A counter's or histogram's *_created sample is its start time, not a metric.
    shown = {name for name, _ in samples if not name.endswith("_created")}
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in shown}
    # Every metric family a scrape shows (but the process's own, python_* and
    # process_*, which prometheus-client adds) is in the table.
    ours = {f for f in families if not f.startswith(("python_", "process_"))}
    assert ours <= _table_names(), ours - _table_names()
    assert {
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "packetbus_open_streams",
        "packetbus_store_up",
    } <= ours
    handled = {labels for name, labels in samples if name == "grpc_server_handled_total"}
    assert (
        ("grpc_code", "OK"),
        ("grpc_method", "GetServerInfo"),
        ("grpc_service", "packetbus.v1.PacketService"),
        ("grpc_type", "unary"),
    ) in handled
    # The README's serve runs its own embedded Valkey: its memory is reported as such.
    memory = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "packetbus_store_used_memory_bytes"
    }
    assert set(memory) == {(("store", "embedded"),)}
    assert memory[(("store", "embedded"),)] > 0
