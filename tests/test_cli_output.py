"""The CLI's machine output and progress: every printing command takes --json (one
JSON document, or JSON Lines for listings and streams), errors with --json are one
JSON object on stderr, and progress bars appear on a terminal's stderr only (not
with --quiet, not when stderr is a pipe, not for --json to a pipe)."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import IO, Any

import pytest
from tqdm import tqdm

import packetbus
from packetbus._cli import _parser
from packetbus._cli_progress import JSON_IS_INPUT, JSON_LINES, NO_OUTPUT_FLAGS, leaf_parsers
from tests.conftest import REPO, new_packet, run_cli, unique

MISSING = "7d3f3c1e-0b5e-4e8e-9a52-4c1f0c9d2a61"  # a tracking id nothing has


def _leaves() -> dict[str, Any]:
    return dict(leaf_parsers(_parser()))


def test_every_command_but_serve_takes_json_and_quiet_after_it() -> None:
    leaves = _leaves()
    assert len(leaves) > 50  # the walk found the nested commands too
    assert {"tasks list", "context memory list", "keys rotate", "verify"} <= set(leaves)
    for name, leaf in leaves.items():
        flags = leaf._option_string_actions
        if name in NO_OUTPUT_FLAGS:
            # serve prints no result, only its log (its format is a flag of its own).
            assert "--quiet" not in flags, name
            continue
        assert "--quiet" in flags, name
        assert "-q" in flags, name
        assert "--json" in flags, name
        if name in JSON_IS_INPUT:
            # dispatch --json is the packet's contents; its result is JSON already and
            # `packetbus --json dispatch ...` asks for JSON errors.
            assert flags["--json"].dest == "contents"
            continue
        shown = flags["--json"].help
        if name in JSON_LINES:
            assert shown.startswith("print JSON Lines"), name
        else:
            assert shown.startswith("print one JSON document"), name
    assert set(JSON_LINES) <= set(leaves)
    assert {"serve"} == NO_OUTPUT_FLAGS
    assert {"dispatch"} == JSON_IS_INPUT


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "tasks", "list", "q"],
        ["tasks", "list", "q", "--json"],
        ["-q", "--json", "tasks", "list", "q"],
        ["tasks", "list", "q", "-q", "--json"],
    ],
)
def test_json_and_quiet_before_or_after_the_command(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    assert args.json is True
    assert args.quiet is ("-q" in argv)


def test_a_global_json_is_not_undone_by_the_command_and_dispatch_keeps_its_contents() -> None:
    args = _parser().parse_args(["--json", "health"])
    assert args.json is True
    args = _parser().parse_args(["health"])
    assert args.json is False
    assert args.quiet is False
    args = _parser().parse_args(
        ["--json", "dispatch", "--topic", "t", "--origin", "a", "--json", '{"data": {}}']
    )
    assert args.json is True
    assert args.contents == '{"data": {}}'


def _run(target: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "packetbus._cli", "--target", target, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr
    return done


async def cli(
    target: str, *argv: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_run, target, *argv, stdin=stdin)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_representative_commands_print_json(
    target: str, client: packetbus.Client, topic: str, tmp_path: Path
) -> None:
    done = await cli(target, "info", "--json")
    assert done.returncode == 0
    assert "limits" in json.loads(done.stdout)
    done = await cli(target, "--json", "health")
    assert (done.returncode, json.loads(done.stdout)) == (0, {"status": "SERVING"})

    done = await cli(
        target,
        "--json",
        "dispatch",
        "--topic",
        topic,
        "--origin",
        "a-1",
        "--json",
        '{"data": {"n": 1}}',
    )
    assert done.returncode == 0, done.stderr
    tracking_id = json.loads(done.stdout)["trackingId"]
    done = await cli(target, "get", tracking_id, "--json")
    assert json.loads(done.stdout)["packet"]["data"] == {"n": 1}
    done = await cli(target, "verify", tracking_id, "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["verified"] is True

    queue = unique("q")
    for n in range(2):
        await client.task_queue(queue).post(
            packetbus.Task(id=f"job-{n}", description=f"job {n}"), origin="a-1"
        )
    done = await cli(target, "tasks", "list", queue, "--json")
    assert [t["taskId"] for t in _lines(done.stdout)] == ["job-0", "job-1"]

    absent = unique("agent")
    done = await cli(target, "agents", "deregister", absent, "--allow-missing", "--json")
    assert (done.returncode, json.loads(done.stdout), done.stderr) == (
        0,
        {"removed": []},
        f"packetbus: {absent} was not registered\n",
    )
    done = await cli(target, "-q", "agents", "deregister", unique("agent"), "--allow-missing")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")  # --quiet: no info line

    key = unique("k")
    await client.set_global_context(key, "blue")
    done = await cli(target, "context", "global", "get", key, "--json")
    assert json.loads(done.stdout) == {"key": key, "value": "blue"}

    scope = unique("s")
    done = await cli(
        target, "context", "put", scope, "doc", "--author", "a-1", "--json", stdin="hello"
    )
    assert done.returncode == 0
    assert json.loads(done.stdout)["size"] == "5"
    done = await cli(target, "context", "get", scope, "doc", "--json")
    got = json.loads(done.stdout)
    assert (got["name"], base64.b64decode(got["data"])) == ("doc", b"hello")

    out = tmp_path / "export.jsonl"
    done = await cli(target, "export", "--topic", topic, "--out", str(out), "--json")
    summary = json.loads(done.stdout)
    assert (done.returncode, done.stderr) == (0, "")
    assert summary == {
        "out": str(out),
        "packets": 1,
        "carcelEntries": 0,
        "decisions": 0,
        "keys": summary["keys"],
    }
    assert summary["keys"] >= 1
    done = await cli(target, "verify", "--file", str(out), "--json")
    assert json.loads(done.stdout)["verified"] == 1


async def test_errors_with_json_are_one_object_on_stderr(target: str, topic: str) -> None:
    done = await cli(target, "get", MISSING, "--json")
    assert (done.returncode, done.stdout) == (1, "")
    error = json.loads(done.stderr)
    assert set(error) == {"code", "message", "reason"}
    assert error["code"] == "NOT_FOUND"
    assert error["message"] == (f"no packet with tracking_id {MISSING} (never stored, or expired)")
    assert error["reason"] is None

    done = await cli(target, "--json", "carcel", "purge", topic)
    assert (done.returncode, done.stdout) == (2, "")
    assert json.loads(done.stderr) == {
        "code": "INVALID_ARGUMENT",
        "message": "carcel purge: name the entries (ID ...) or pass --all",
        "reason": None,
    }
    # Without --json, the same error is the usual line; --quiet never hides it.
    done = await cli(target, "-q", "carcel", "purge", topic)
    assert (done.returncode, done.stderr) == (
        2,
        "packetbus: carcel purge: name the entries (ID ...) or pass --all\n",
    )


def test_a_local_failure_and_serve_with_json(tmp_path: Path) -> None:
    done = run_cli("verify", "--file", str(tmp_path / "absent.jsonl"), "--json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = json.loads(done.stderr)
    assert error["code"] == "FAILED_PRECONDITION"
    assert "absent.jsonl" in error["message"]
    done = run_cli("--json", "serve")
    assert (done.returncode, done.stdout) == (2, "")
    assert json.loads(done.stderr)["code"] == "INVALID_ARGUMENT"
    assert "--json does not apply" in json.loads(done.stderr)["message"]


def test_policy_can_answers_in_json(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "allow"\n')
    done = run_cli(
        "policy", "can", str(policy), "--principal", "alice", "topics.publish", "t", "--json"
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["allowed"] is True
    assert "no [authorization] section" in answer["explanation"]


def _with_terminal_stderr(
    argv: list[str], *, terminal_stdout: bool = False
) -> tuple[int, str, str]:
    """`packetbus ARGV` with stderr a pseudo-terminal (120 columns) and stdout a pipe
    (or, `terminal_stdout`, a terminal of its own): its exit code, stdout, and what
    the stderr terminal received."""
    terminal, stderr = os.openpty()
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    out_terminal, stdout = os.openpty() if terminal_stdout else (-1, subprocess.PIPE)
    with subprocess.Popen(
        [sys.executable, "-m", "packetbus._cli", *argv],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    ) as process:
        os.close(stderr)
        if terminal_stdout:
            os.close(stdout)
        shown = _drain(terminal)
        out = _drain(out_terminal) if terminal_stdout else _read(process.stdout)
        code = process.wait(timeout=60)
    assert "Traceback" not in shown
    return code, out, shown


def _drain(terminal: int) -> str:
    """All a pseudo-terminal received until every writer closed it; then closed."""
    received = bytearray()
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: the process (every writer) closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(terminal)
    return received.decode(errors="replace")


def _read(pipe: IO[bytes] | None) -> str:
    assert pipe is not None
    return pipe.read().decode()


async def _exported(target: str, client: packetbus.Client, path: Path) -> str:
    topic = unique("export")
    await client.dispatch_batch([new_packet(topic) for _ in range(3)])
    done = await cli(target, "export", "--topic", topic, "--out", str(path))
    assert done.returncode == 0, done.stderr
    return topic


async def test_export_and_verify_show_a_bar_on_a_terminal(
    target: str, client: packetbus.Client, tmp_path: Path
) -> None:
    topic = await _exported(target, client, tmp_path / "first.jsonl")
    keys = len(await client.signing_keys())
    out = tmp_path / "export.jsonl"
    code, stdout, shown = await asyncio.to_thread(
        _with_terminal_stderr,
        ["--target", target, "export", "--topic", topic, "--out", str(out)],
    )
    assert (code, stdout) == (0, "")
    # A count and a rate (the server does not say how many will come), then the bar
    # cleared (spaces over it) and the result line (the terminal turns \n into \r\n).
    bar, rest = shown.removeprefix("\r").split("\r", 1)
    assert bar.startswith("exporting: 0 packets [00:00, ")
    assert bar.endswith(" packets/s]")
    result = f"packetbus: wrote 3 packets, 0 carcel entries, 0 decisions and {keys} keys to {out}"
    assert rest.endswith(f"\r{result}\r\n")
    assert set(rest.removesuffix(f"\r{result}\r\n")) == {" "}

    size = out.stat().st_size
    code, stdout, shown = await asyncio.to_thread(
        _with_terminal_stderr, ["verify", "--file", str(out)]
    )
    assert (code, stdout) == (0, "3 of 3 packets verified (0 carceled; 0 decisions)\n")
    # Bytes, with the file's size as the total (in KiB: tqdm's k with divisor 1024).
    assert shown.startswith("\rverifying export.jsonl:   0%|")
    total = tqdm.format_sizeof(size, divisor=1024)
    assert f"| 0.00/{total} [00:00<?, ?B/s]\r" in shown
    assert shown.endswith(" \r")


async def test_no_bar_with_quiet_a_pipe_or_json_to_a_pipe(
    target: str, client: packetbus.Client, tmp_path: Path
) -> None:
    out = tmp_path / "export.jsonl"
    topic = await _exported(target, client, out)
    export = ["--target", target, "export", "--topic", topic, "--out", str(out)]

    code, stdout, shown = await asyncio.to_thread(_with_terminal_stderr, ["-q", *export])
    assert (code, stdout, shown) == (0, "", "")
    code, stdout, shown = await asyncio.to_thread(_with_terminal_stderr, [*export, "--json"])
    assert (code, shown) == (0, "")  # stdout is JSON for a machine: no bar
    assert json.loads(stdout)["packets"] == 3
    code, stdout, shown = await asyncio.to_thread(
        _with_terminal_stderr, ["verify", "--file", str(out), "--quiet"]
    )
    assert (code, shown) == (0, "")

    # stderr a pipe: only the result line, no bar.
    keys = len(await client.signing_keys())
    done = await cli(target, *export[2:])
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr == (
        f"packetbus: wrote 3 packets, 0 carcel entries, 0 decisions and {keys} keys to {out}\n"
    )
    done = run_cli("verify", "--file", str(out))
    assert (done.returncode, done.stderr) == (0, "")


async def test_a_listing_shows_a_bar_only_when_its_output_goes_elsewhere(target: str) -> None:
    listing = ["--target", target, "carcel", "list", "--topic", unique("empty")]
    code, stdout, shown = await asyncio.to_thread(_with_terminal_stderr, listing)
    assert (code, stdout) == (0, "")
    bar, cleared = shown.removeprefix("\r").split("\r", 1)
    assert bar.startswith("carcel entries: 0 entries [00:00, ")
    assert set(cleared.removesuffix("\r")) == {" "}
    # Lines and a bar on the same screen would mangle each other: no bar then.
    code, stdout, shown = await asyncio.to_thread(
        _with_terminal_stderr, listing, terminal_stdout=True
    )
    assert (code, stdout, shown) == (0, "", "")


async def test_context_put_and_get_show_a_byte_bar_on_a_terminal(
    target: str, tmp_path: Path
) -> None:
    scope, document = unique("bars"), tmp_path / "doc.bin"
    document.write_bytes(os.urandom(300_000))
    put = ["--target", target, "context", "put", scope, "doc", "--author", "a-1"]
    code, stdout, shown = await asyncio.to_thread(
        _with_terminal_stderr, [*put, "--file", str(document)]
    )
    assert code == 0
    assert json.loads(stdout)["size"] == "300000"
    # The file's size is the bar's total (KiB: tqdm's k with divisor 1024); cleared after.
    total = tqdm.format_sizeof(300_000, divisor=1024)
    assert shown.startswith("\rputting doc:   0%|")
    assert f"| 0.00/{total} [00:00<?, ?B/s]\r" in shown
    assert shown.endswith(" \r")

    out = tmp_path / "got.bin"
    get = ["--target", target, "context", "get", scope, "doc", "--out", str(out)]
    code, stdout, shown = await asyncio.to_thread(_with_terminal_stderr, get)
    assert (code, out.read_bytes()) == (0, document.read_bytes())
    assert shown.startswith("\rgetting doc: 0.00B [00:00, ?B/s]\r")
    assert shown.endswith(" \r")

    for quiet in ([*put, "--file", str(document), "-q"], [*get, "--quiet"]):
        code, _, shown = await asyncio.to_thread(_with_terminal_stderr, quiet)
        assert (code, shown) == (0, "")
