"""examples/grpc-js/agent.mjs, the README's agent written straight against the protos
(@grpc/grpc-js and @grpc/proto-loader, no packetbus client), run as the README says
against this session's server: each JSON line it prints, exactly.

Node is required (a missing `node` is a failure, as for the TypeScript client).
The example's node_modules come from `npm ci` in examples/grpc-js, which .ci/run does:
without them the test is skipped on a developer's machine and fails in CI ($CI set)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil

import pytest
import redis.asyncio as redis_asyncio

from packetbus_server._app import VERSION
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "grpc-js"
README = (REPO / "README.md").read_text()
CURSOR = re.compile(r"[0-9]+-[0-9]+")
SECONDS = re.compile(r"[0-9]+")


def require_node_modules() -> None:
    if (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return
    reason = "run `npm ci` in examples/grpc-js first"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (.ci/run does so in CI)", pytrace=False)
    pytest.skip(reason)


def readme_command(topic: str) -> list[str]:
    """The README's command for the example (its block readme:grpc-js), as run here:
    from the example's directory, on the node_modules `npm ci` installed (.ci/run runs
    it), the topic `topic` for its my-topic."""
    match = re.search(r"<!-- readme:grpc-js -->\n```sh\n(.*?)```", README, re.S)
    assert match, "README has no block marked readme:grpc-js"
    cd, install, run = match.group(1).strip().split(" && ")
    assert (cd, install) == ("cd examples/grpc-js", "npm ci")
    node, *argv = shlex.split(run)
    assert (node, argv) == ("node", ["agent.mjs", "my-topic"])
    found = shutil.which("node")
    assert found is not None, "node (20+) is required for the grpc-js example"
    return [found, "agent.mjs", topic]


async def run_agent(target: str, topic: str) -> list[dict[str, object]]:
    """The example's printed lines, each parsed; run as the README says, with
    PACKETBUS_TARGET pointing at `target`."""
    command = readme_command(topic)
    require_node_modules()
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=EXAMPLE,
        env={**os.environ, "PACKETBUS_TARGET": target},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stdout.decode() + stderr.decode()
    assert stderr == b""
    return [json.loads(line) for line in stdout.decode().splitlines()]


def timestamp_seconds(value: object) -> int:
    """A google.protobuf.Timestamp as proto-loader prints it with longs: String."""
    assert isinstance(value, dict)
    assert set(value) <= {"seconds", "nanos"}  # nanos 0 is left out
    seconds = value["seconds"]
    assert isinstance(seconds, str)
    assert SECONDS.fullmatch(seconds)
    return int(seconds)


async def test_grpc_js_agent_prints_each_step_as_the_readme_says(
    target: str, topic: str, raw_redis: redis_asyncio.Redis
) -> None:
    info, dispatched, invalid, empty, received = await run_agent(target, topic)

    assert info == {
        "step": "server_info",
        "version": VERSION,
        "supported_schema_versions": ["1.0", "1.1"],
        "max_response_bytes": 16 * 1024 * 1024,
    }

    assert set(dispatched) == {"step", "tracking_id", "receipt"}
    assert dispatched["step"] == "dispatch"
    tracking_id = dispatched["tracking_id"]
    assert isinstance(tracking_id, str)
    receipt = dispatched["receipt"]
    assert isinstance(receipt, dict)
    assert set(receipt) == {"topic", "cursor", "stored_at", "expires_at"}
    assert receipt["topic"] == topic
    assert CURSOR.fullmatch(receipt["cursor"])
    # ttl_seconds 0: the server's default TTL of an hour.
    stored_at = timestamp_seconds(receipt["stored_at"])
    assert timestamp_seconds(receipt["expires_at"]) - stored_at == 3600

    # The Value given as {number_value: 3}: dropped by protobufjs, refused as empty,
    # in the packet's own result, its path relative to the packet.
    assert invalid == {
        "step": "invalid_packet",
        "outcome": "error",
        "code": "INVALID_ARGUMENT",
        "field_violations": [
            {
                "field": "data",
                "reason": "VALUE_KIND",
                "description": 'the value at $["pages"] has no kind set; a JSON value is one '
                "of null_value, number_value, string_value, bool_value, struct_value, "
                "list_value (check that your protobuf library set the field you meant)",
            }
        ],
    }

    # The whole call refused: its status from grpc-status-details-bin, the path
    # relative to the request.
    assert empty == {
        "step": "empty_dispatch",
        "code": "INVALID_ARGUMENT",
        "message": "empty dispatch: packets: at least one packet is required",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "field_violations": [
                    {
                        "field": "packets",
                        "reason": "REQUIRED",
                        "description": "at least one packet is required",
                    }
                ],
            }
        ],
    }

    # protobufjs decodes a Value by its JSON names, with the oneof's name in `kind`.
    assert received == {
        "step": "subscribe",
        "tracking_id": tracking_id,
        "cursor": receipt["cursor"],
        "data": {
            "fields": {
                "pages": {"numberValue": 3, "kind": "numberValue"},
                "title": {"stringValue": "Q3 report", "kind": "stringValue"},
            }
        },
    }
    # The valid packet alone was stored.
    assert await raw_redis.xlen(f"pb:{{{topic}}}:log") == 1


def test_the_example_pins_exact_versions() -> None:
    """package.json names exact versions, the ones package-lock.json installs."""
    manifest = json.loads((EXAMPLE / "package.json").read_text())
    lock = json.loads((EXAMPLE / "package-lock.json").read_text())
    assert manifest["private"] is True
    for name, version in manifest["dependencies"].items():
        assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version), (name, version)
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
