"""Starting a real `packetbus console` process for the console API tests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping

import httpx

from tests.conftest import free_port, printed, serving

CHANGE = {"X-Packetbus-Console": "1"}  # the CSRF guard's header
APPROVER = "console-guardian"  # agents whose id starts so may approve held packets


def hold_spawns(topic_glob: str) -> str:
    """Policy rules holding a logistics.spawn packet on `topic_glob` for an approver."""
    return f"""
default = "allow"

[approval]
approvers = ["{APPROVER}*"]

[[rules]]
id = "spawn-needs-guardian"
decision = "hold"
reason = "spawning needs a guardian"
topic = "{topic_glob}"
fields = {{ primitive = "logistics.spawn" }}
"""


def output(url: str) -> str:
    """What the console at `url` has printed so far."""
    return printed(_CONSOLES[url])


# The console process serving each base URL.
_CONSOLES: dict[str, subprocess.Popen[str]] = {}


def start_console(
    target: str, *options: str, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """`packetbus console` for `target` on a free loopback port, once it serves:
    the process and its base URL. `env`: its whole environment (default: this one).
    Raises AssertionError when it exits first."""
    port = free_port()
    argv = [sys.executable, "-m", "packetbus._cli", "console", "--target", target]
    argv += ["--listen", f"127.0.0.1:{port}", *options]
    process = serving(argv, environ=env, ready="packetbus console serving on ", read_on=True)
    scheme = "https" if "--tls-cert" in options else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    ready = [line for line in printed(process).splitlines() if "console serving on" in line]
    assert ready == [f"packetbus console serving on {url}"], ready
    _CONSOLES[url] = process
    return process, url


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM `process` and assert it drained: exit 0 within 10 s."""
    process.terminate()
    assert process.wait(timeout=10) == 0


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str, dict[str, object]]]:
    """The (id, event, data) of each message of an SSE `response`, comments skipped."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if "data" in fields:
                yield (
                    fields.get("id", ""),
                    fields.get("event", "message"),
                    json.loads(fields["data"]),
                )
            fields = {}
            continue
        name, _, value = line.partition(": ")
        fields[name] = value
