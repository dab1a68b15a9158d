"""Every CLI mistake is one line on stderr and a non-zero exit, never a traceback:
bad numbers, JSON, files, names and ids for every subcommand, with a server and
without one; Ctrl-C and a closed pipe too."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

import packetbus
from packetbus._cli import main
from packetbus._cli_args import serve_preflight
from tests.conftest import exec_after, free_port, new_packet

REPO = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent / "packetbus")]  # the console script, as users run it
ID = "7d3f3c1e-0b5e-4e8e-9a52-4c1f0c9d2a61"  # a task, packet... that does not exist

# {dir} a directory, {junk} a file of garbage, {empty} an empty file, {missing} a
# path that does not exist, {unwritable} a path that cannot be created (under a file).
_BAD: list[list[str]] = [
    [],
    ["no-such-command"],
    ["--timeout", "abc", "info"],
    ["--timeout", "-1", "info"],
    ["info", "extra"],
    ["health", "extra"],
    ["dispatch", "--topic", "t"],
    ["dispatch", "--topic", "t", "--origin", "a", "--json", "{bad"],
    ["dispatch", "--topic", "t", "--origin", "a", "--json", '{"finding": {"nope": 1}}'],
    ["dispatch", "--topic", "t", "--origin", "a", "--json", '{"task": 1}'],
    ["dispatch", "--topic", "t", "--origin", "a", "--ttl", "-1"],
    ["dispatch", "--topic", "t", "--origin", "a", "--ttl", "99999999999"],
    ["dispatch", "--topic", "t", "--origin", "a", "--ttl", "١٢"],
    ["dispatch", "--topic", "bad topic", "--origin", "a"],
    ["dispatch", "--topic", "t", "--origin", "a", "--tracking-id", "not-a-uuid"],
    ["dispatch", "--topic", "t", "--origin", "a", "--speech-act", "shout"],
    ["dispatch", "--topic", "t", "--origin", "a", "--agent-key", "{missing}"],
    ["dispatch", "--topic", "t", "--origin", "a", "--agent-key", "{dir}"],
    ["dispatch", "--topic", "t", "--origin", "a", "--agent-key", "{junk}"],
    ["dispatch", "--to", "", "--origin", "a"],
    ["dispatch", "--to", "x" * 300, "--origin", "a"],
    ["get", "not-a-uuid"],
    ["get", ID],
    ["tail", "bad topic", "--count", "1"],
    ["tail", "t", "--count", "-1"],
    ["tail", "t", "--after", "garbage", "--count", "1"],
    ["verify"],
    ["verify", "not-a-uuid"],
    ["verify", ID],
    ["verify", "--file", "{missing}"],
    ["verify", "--file", "{dir}"],
    ["verify", "--file", "{junk}"],
    ["verify", "--file", "{empty}"],
    ["verify", "--file", "{empty}", "--keys", "{missing}"],
    ["verify", "--json", "--file", "{junk}"],
    ["export", "--out", "{unwritable}"],
    ["export", "--out", "{dir}"],
    ["export", "--out", "{missing}", "--since", "yesterday"],
    ["export", "--out", "{missing}", "--topic", "bad topic"],
    ["keys"],
    ["keys", "new-agent", "--agent-id", "a", "--out", "{unwritable}"],
    ["keys", "new-agent", "--agent-id", "bad id!", "--out", "{missing}"],
    ["keys", "rotate", "--signing-key-file", "{unwritable}"],
    ["keys", "rotate", "--signing-key-file", "{junk}"],
    ["groups", "create", "jobs", "g", "--ack-deadline", "-5"],
    ["groups", "create", "t", "g", "--ack-deadline", "99999999999"],
    ["groups", "create", "t", "g", "--max-attempts", "-1"],
    ["groups", "create", "t", "g", "--ack-deadline", "9999"],
    ["groups", "create", "bad topic", "g"],
    ["groups", "create", "t", "g", "--after", "x"],
    ["groups", "get", "t", "nope"],
    ["groups", "delete", "t", "bad:name"],
    ["groups", "list", "bad topic"],
    ["consume", "t", "nope", "--consumer", "c", "--count", "1"],
    ["consume", "t", "g", "--consumer", "c", "--count", "-1"],
    ["consume", "t", "g"],
    ["inbox", ""],
    ["inbox", "a", "--wait", "-1"],
    ["inbox", "a", "--wait", "nan"],
    ["inbox", "x" * 300, "--count", "1"],
    ["carcel", "get", "t", "bogus"],
    ["carcel", "requeue", "t", "1-1"],
    ["carcel", "purge", "t"],
    ["carcel", "list", "--topic", "bad topic"],
    ["tasks", "post", "q", "--id", "x", "--origin", "a", "--priority", "5000"],
    ["tasks", "post", "q", "--id", "x", "--origin", "a", "--payload", "{bad"],
    ["tasks", "post", "q", "--id", "x", "--origin", "a", "--payload", "[1]"],
    ["tasks", "post", "q", "--id", "x", "--origin", "a", "--max-attempts", "-1"],
    ["tasks", "post", "bad queue", "--id", "x", "--origin", "a"],
    ["tasks", "claim", "q", "--worker", "w", "--lease", "-1"],
    ["tasks", "complete", "q", "t", "--token", "-1"],
    ["tasks", "complete", "q", "nope", "--token", "1", "--result", "{bad"],
    ["tasks", "complete", "q", "nope", "--token", "1"],
    ["tasks", "fail", "q", "nope", "--token", "1", "--error", "e"],
    ["tasks", "get", "q", "nope"],
    ["tasks", "list", "bad queue"],
    ["tasks", "watch", "q", "--count", "-1"],
    ["findings", "post", ID, "--origin", "a", "--claim", "c", "--confidence", "2"],
    ["findings", "post", ID, "--origin", "a", "--claim", "c", "--confidence", "nan"],
    ["findings", "list", "bad id"],
    ["findings", "conflicts", ID, "--threshold", "-1"],
    ["findings", "escalate", ID, "nope", "--origin", "a", "--reason", "r"],
    ["agents", "register", "bad id!"],
    ["agents", "register", "a", "--ttl", "-1"],
    ["agents", "register", "a", "--ttl", "100000"],
    ["agents", "register", "a", "--label", "nolabel"],
    ["agents", "register", "a", "--key-file", "{missing}"],
    ["agents", "register", "a", "--key-file", "{junk}"],
    ["agents", "heartbeat", "nobody-" + ID],
    ["agents", "get", "nobody-" + ID],
    ["agents", "deregister", "nobody-" + ID],
    ["agents", "watch", "--after", "garbage", "--count", "1"],
    ["agents", "watch", "--count", "-1"],
    ["agents", "list", "--liveness", "bogus"],
    ["context", "put", "s", "n", "--author", "a", "--file", "{missing}"],
    ["context", "put", "s", "n", "--author", "a", "--file", "{dir}"],
    ["context", "put", "s", "n", "--author", "a", "--expected-version", "-1"],
    ["context", "put", "s", "n", "--author", "a", "--ttl", "-1"],
    ["context", "put", "bad scope!", "n", "--author", "a", "--file", "{empty}"],
    ["context", "get", "s", "nope-" + ID],
    ["context", "get", "s", "n", "--out", "{unwritable}"],
    ["context", "get", "s", "n", "--version", "-1"],
    ["context", "delete", "bad scope!", "n"],
    ["context", "list", "bad scope!"],
    ["context", "watch", "s", "--after", "garbage", "--count", "1"],
    ["context", "global", "get", "nope-" + ID],
    ["context", "global", "set", "k-" + ID, "v", "--expected", "other"],
    ["context", "memory", "list", "a", "--limit", "-1"],
    ["context", "memory", "append", "", "x"],
    ["context", "trace", "list", "t", "a", "--limit", "-5"],
    ["records", "put", "remediation", '{"scanId":"x"}', "--origin", "a"],
    ["records", "put", "session", "{bad", "--origin", "a"],
    ["records", "put", "session", "[]", "--origin", "a"],
    ["records", "put", "session", "{}", "--origin", "a", "--retention", "-1"],
    ["records", "put", "session", "{}", "--origin", "bad origin!"],
    ["records", "put", "bogus", "{}", "--origin", "a"],
    ["records", "get", "session", "nope"],
    ["records", "list", "session", "--limit", "-1"],
    ["policy", "check", "{missing}"],
    ["policy", "check", "{junk}"],
    ["policy", "check", "{dir}"],
    ["policy", "can", "{missing}", "--principal", "p", "topics.publish", "t"],
    ["policy", "can", "{junk}", "--principal", "p", "topics.publish", "t"],
    ["policy", "can", "{dir}", "--principal", "p", "topics.publish", "t"],
    ["policy", "can", "{empty}", "--principal", "p", "topics.nope", "t"],
    ["policy", "can", "{empty}", "topics.publish", "t"],
    ["policy", "approve", "t", ID, "--agent-key", "{missing}"],
    ["policy", "approve", "t", ID, "--agent-key", "{junk}"],
    ["policy", "deny", "t", ID, "--agent-key", "{dir}", "--reason", "r"],
    ["policy", "held", "--topic", "bad topic"],
    ["policy", "stats", "--topic", "bad topic"],
    ["topic"],
    ["topic", "retention", "get"],
    ["topic", "retention", "get", "bad topic"],
    ["--json", "topic", "retention", "get", "bad topic"],
    ["topic", "retention", "set", "t", "--max-age", "-5"],
    ["topic", "retention", "set", "t", "--max-age", "99999999"],
    ["topic", "retention", "set", "t", "--max-packets", "18446744073709551616"],
    ["topic", "retention", "set", "t", "--max-bytes", "\u0663"],
    ["--json", "topic", "retention", "set", "t", "--max-bytes", "1"],
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    (root / "junk").write_bytes(b"\x00\xff not json, not toml [[\n{")
    (root / "empty").write_bytes(b"")
    return {
        "dir": str(root),
        "junk": str(root / "junk"),
        "empty": str(root / "empty"),
        "missing": str(root / "missing" / "file"),
        "unwritable": str(root / "junk" / "below-a-file"),
    }


def _run(argv: list[str]) -> tuple[int, str]:
    """main(argv) as the console script runs it: its exit status and stderr. A
    traceback it would print (an exception escaping main) fails the test."""
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors, --help
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            pytest.fail(f"packetbus {argv} raised:\n{traceback.format_exc()}")
    return code, stderr.getvalue()


def _check(argv: list[str], code: int, stderr: str) -> None:
    assert code != 0, (argv, stderr)
    assert "Traceback" not in stderr, (argv, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, (argv, stderr)
    if lines[0].startswith("{"):  # asked for --json: the error is one JSON object
        assert "--json" in argv, (argv, stderr)
        assert set(json.loads(lines[0])) == {"code", "message", "reason"}, (argv, stderr)
    else:
        assert lines[0].startswith("packetbus"), (argv, stderr)


def _argv(template: list[str], files: dict[str, str]) -> list[str]:
    return [
        a.format(**files) if "{" in a and "}" in a and a[1:-1] in files else a for a in template
    ]


@pytest.mark.parametrize("template", _BAD, ids=" ".join)
async def test_a_bad_invocation_is_one_line_and_a_failure_with_a_server(
    target: str, files: dict[str, str], template: list[str]
) -> None:
    # In a thread, so this test's event loop goes on serving the server.
    argv = ["--target", target, "--timeout", "5", *_argv(template, files)]
    code, stderr = await asyncio.wait_for(asyncio.to_thread(_run, argv), 30)
    _check(argv, code, stderr)


@pytest.mark.parametrize("template", _BAD, ids=" ".join)
def test_a_bad_invocation_is_one_line_and_a_failure_without_a_server(
    files: dict[str, str], template: list[str]
) -> None:
    argv = ["--target", f"127.0.0.1:{free_port()}", "--timeout", "0.3", *_argv(template, files)]
    code, stderr = _run(argv)
    _check(argv, code, stderr)


def test_usage_errors_exit_2_and_failed_calls_exit_1(target: str) -> None:
    assert _run(["groups", "create", "jobs", "g", "--ack-deadline", "-5"])[0] == 2
    assert _run(["--target", target, "records", "put", "remediation", '{"scanId":"x"}',
                 "--origin", "a"])[0] == 2  # fmt: skip
    assert _run(["--target", f"127.0.0.1:{free_port()}", "--timeout", "0.3", "info"])[0] == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize(
    "argv",
    [
        ["records", "put", "remediation", '{"scanId":"x"}', "--origin", "a"],
        ["groups", "create", "jobs", "g", "--ack-deadline", "-5"],
        ["serve", "--log-level", "bogus"],
        ["serve", "--workers", "0"],
        ["serve", "--grace", "-1"],
        ["serve", "--policy", "/nonexistent/policy.toml", "--listen", "127.0.0.1:0"],
        ["serve", "--policy", "{junk}", "--listen", "127.0.0.1:0"],
        ["serve", "--listen", "bogus"],
        ["serve", "--listen", "no-such-host.invalid:5000"],
        ["serve", "--redis-url", "redis://127.0.0.1:1", "--listen", "127.0.0.1:0"],
    ],
    ids=" ".join,
)
def test_the_console_script_prints_no_traceback(
    target: str, files: dict[str, str], argv: list[str]
) -> None:
    done = _cli("--target", target, *_argv(argv, files))
    _check(argv, done.returncode, done.stderr)


def _ctrl_c_as_in_a_terminal(argv: list[str]) -> list[str]:
    """`argv` run with SIGINT at its default, as a shell gives a foreground command. A
    test run started in the background (nohup, `&`, some CI runners) hands its children
    SIGINT ignored, and Python then leaves it ignored, so the Ctrl-C below was never
    seen (a disposition at its default stays so across exec)."""
    return exec_after("import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)", argv)


async def test_ctrl_c_ends_a_tail_quietly_with_130(
    target: str, topic: str, client: packetbus.Client
) -> None:
    await client.dispatch(new_packet(topic))

    def run() -> tuple[int, str]:
        process = subprocess.Popen(
            _ctrl_c_as_in_a_terminal(
                [*CLI, "--target", target, "tail", topic, "--from", "earliest"]
            ),
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert process.stdout is not None
        try:
            # Its first line: the tail is following (Ctrl-C during the interpreter's
            # own start-up is Python's business, not ours).
            first = process.stdout.readline()
            assert first, process.communicate(timeout=20)
            assert json.loads(first)["packet"]["topic"] == topic
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=20)
        finally:
            process.kill()
        return process.returncode, stderr

    code, stderr = await asyncio.to_thread(run)
    assert stderr.strip() == ""
    assert code == 130


async def test_a_closed_pipe_ends_the_output_quietly(
    target: str, topic: str, client: packetbus.Client
) -> None:
    await client.dispatch_batch([new_packet(topic) for _ in range(300)])
    reader, writer = os.pipe()

    def run() -> subprocess.CompletedProcess[str]:
        os.close(reader)  # nobody reads: the first write that fills the pipe breaks it
        try:
            return subprocess.run(
                [*CLI, "--target", target, "tail", topic, "--from", "earliest", "--count", "300"],
                stdout=writer,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                cwd=REPO,
            )
        finally:
            os.close(writer)

    done = await asyncio.to_thread(run)
    assert done.stderr.strip() == ""  # no traceback, no "Exception ignored"
    assert done.returncode == 141


async def test_verify_and_health_print_json_with_json(
    target: str, client: packetbus.Client, topic: str, files: dict[str, str]
) -> None:
    packet = new_packet(topic)
    await client.dispatch(packet)

    def cli_json(*argv: str) -> tuple[int, object]:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["--target", target, *argv])
        return code, json.loads(stdout.getvalue())

    code, health = await asyncio.to_thread(cli_json, "health", "--json")
    # The server calls its store down for a moment when a ping takes over a second (a
    # loaded machine, a cluster slot moving for another test): ask again then.
    for _ in range(20):
        if (code, health) == (1, {"status": "NOT_SERVING"}):
            await asyncio.sleep(0.5)
            code, health = await asyncio.to_thread(cli_json, "health", "--json")
    assert (code, health) == (0, {"status": "SERVING"})
    code, report = await asyncio.to_thread(cli_json, "verify", "--json", packet.tracking_id)
    assert code == 0
    assert isinstance(report, dict)
    assert report["verified"] is True
    assert [e["verdict"] for e in report["entries"]] == ["CUSTODY_VERDICT_OK"] * len(
        report["entries"]
    )
    out = str(Path(files["dir"]) / "export.jsonl")
    assert await asyncio.to_thread(main, ["--target", target, "export", "--out", out,
                                          "--topic", topic]) == 0  # fmt: skip
    code, offline = await asyncio.to_thread(cli_json, "verify", "--json", "--file", out)
    assert code == 0
    assert offline == {
        "ok": True,
        "packets": 1,
        "verified": 1,
        "carcelEntries": 0,
        "decisions": 0,
        "failures": [],
    }


def test_health_json_without_a_server_is_json_too() -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["--target", f"127.0.0.1:{free_port()}", "--timeout", "0.3", "health", "--json"]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    report = json.loads(stdout.getvalue())
    assert code == 1
    assert report["status"] == "UNREACHABLE"
    assert report["error"].startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))
    assert len(stderr.getvalue().strip().splitlines()) == 1


def test_serve_refuses_a_port_another_server_listens_on() -> None:
    # A listener with SO_REUSEPORT, as another server's workers bind: a second server
    # there (its own store or a shared one) would split the clients between them.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        listen = f"127.0.0.1:{other.getsockname()[1]}"
        done = _cli("serve", "--listen", listen, "--data-dir", str(REPO / ".no-such-dir"))
        _check(["serve"], done.returncode, done.stderr)
        assert "only the workers of one server (--workers) share a port" in done.stderr
        assert not (REPO / ".no-such-dir").exists()  # refused before anything started
        shared = _cli("serve", "--listen", listen, "--redis-url", "redis://127.0.0.1:1/0")
        _check(["serve"], shared.returncode, shared.stderr)
        assert "only the workers of one server (--workers) share a port" in shared.stderr
        assert serve_preflight(listen, None) is not None


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_data_dir_it_cannot_use_names_it(tmp_path: Path, workers: str) -> None:
    # "cannot start: File exists" alone does not say which file.
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    done = _cli(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--data-dir",
        str(not_a_dir / "data"),
        "--workers",
        workers,
    )
    _check(["serve"], done.returncode, done.stderr)
    assert str(not_a_dir) in done.stderr, done.stderr


def test_serve_on_a_store_that_refuses_names_the_store_without_its_password() -> None:
    # redis-py's words alone ("DB index is out of range") did not say which store.
    url = f"redis://app:s3cret@127.0.0.1:{free_port()}/0"
    done = _cli("serve", "--listen", f"127.0.0.1:{free_port()}", "--redis-url", url)
    _check(["serve"], done.returncode, done.stderr)
    assert done.returncode == 1
    store = url.replace(":s3cret@", ":***@")
    assert f"cannot start: the store at {store} refused or did not answer: " in done.stderr
    assert "s3cret" not in done.stderr
