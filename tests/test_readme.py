"""The README, tried as a new user would: its exact commands and its quickstart code.

Only the address and data directory are moved (through the documented
PACKETBUS_* environment variables) so the test never collides with a server
already running on the default port.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import packetbus
from packetbus.v1 import record_service_pb2 as record_pb
from packetbus.v1 import task_service_pb2 as task_pb
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()


def block(name: str) -> str:
    match = re.search(rf"<!-- readme:{name} -->\n```\w+\n(.*?)```", README, re.S)
    assert match, f"README has no block marked readme:{name}"
    return match.group(1).strip()


def _env(port: int, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PACKETBUS_REDIS_URL", None)
    env.update(
        PACKETBUS_LISTEN=f"127.0.0.1:{port}",
        PACKETBUS_TARGET=f"127.0.0.1:{port}",
        PACKETBUS_DATA_DIR=str(data_dir),
    )
    return env


class Served:
    def __init__(self, command: str, env: dict[str, str], *, cwd: Path = REPO) -> None:
        assert Path(REPO / shlex.split(command)[0]).exists(), (
            f"{command!r}: run the README's install command first"
        )
        self.process = subprocess.Popen(
            shlex.split(command.replace(".venv/bin/", f"{REPO}/.venv/bin/")),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        for line in self.process.stdout:
            if "serving on" in line:
                return
            assert time.monotonic() < deadline, "server did not start in time"
        raise AssertionError(f"server exited with {self.process.wait()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        shlex.split(command), cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def run_block(name: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The README's Python block `name`, saved as a script and run as a user would."""
    script = tmp_path / f"{name}.py"
    script.write_text(block(name))
    return subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def served(tmp_path: Path) -> tuple[str, dict[str, str], Path]:
    port = free_port()
    data_dir = tmp_path / "data"
    env = _env(port, data_dir)
    return block("serve"), env, data_dir


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert block("install") in ci
    assert block("test") in ci


def test_serve_dispatch_get_survives_restart(
    served: tuple[str, dict[str, str], Path],
) -> None:
    serve, env, data_dir = served
    dispatch, get = block("cli").splitlines()[:2]

    server = Served(serve, env)
    valkey_pid = int((data_dir / "valkey.pid").read_text())
    try:
        stored = run(dispatch, env)
        assert stored.returncode == 0, stored.stderr
        result = json.loads(stored.stdout)
        tracking_id = result["trackingId"]
        assert result["receipt"]["topic"] == "research"

        fetched = run(get.replace("TRACKING_ID", tracking_id), env)
        assert fetched.returncode == 0, fetched.stderr
        first = json.loads(fetched.stdout)
        assert first["packet"]["finding"]["confidence"] == 0.92
    finally:
        assert server.stop() == 0

    # The embedded Valkey went down with the server: nothing is left running.
    assert not Path(f"/proc/{valkey_pid}").exists()

    server = Served(serve, env)
    try:
        again = run(get.replace("TRACKING_ID", tracking_id), env)
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        # The head is signed anew at every read; the packet and its chain are the same.
        assert second["custodyHead"]["keyId"] == first["custodyHead"]["keyId"]
        del first["custodyHead"], second["custodyHead"]
        assert second == first

        missing = run(get.replace("TRACKING_ID", "00000000-0000-4000-8000-000000000000"), env)
        assert missing.returncode == 1
        assert missing.stderr.startswith("packetbus: NOT_FOUND")
    finally:
        assert server.stop() == 0


def test_quickstart_and_cli_examples_run_as_written(
    served: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    serve, env, _ = served
    server = Served(serve, env)
    try:
        quickstart = run_block("quickstart", tmp_path, env)
        assert quickstart.returncode == 0, quickstart.stderr
        lines = quickstart.stdout.splitlines()
        assert lines[0].startswith("stored ")
        assert lines[-1].endswith("Q3 revenue follows the policy change")

        dispatch, _, tail, info, health = block("cli").splitlines()
        sent = [json.loads(run(dispatch, env).stdout)["trackingId"] for _ in range(10)]
        tailed = run(tail, env)  # --count 10: the quickstart's packet and 9 of the CLI's
        assert tailed.returncode == 0, tailed.stderr
        rows = [json.loads(line) for line in tailed.stdout.splitlines()]
        assert [r["packet"]["trackingId"] for r in rows[1:]] == sent[:9]
        healthy = run(health, env)
        assert (healthy.returncode, healthy.stdout.strip()) == (0, "SERVING")
        described = run(info, env)
        assert json.loads(described.stdout)["supportedSchemaVersions"] == ["1.0", "1.1"]
        assert json.loads(described.stdout)["limits"]["maxResponseBytes"] == 16 * 1024 * 1024
        # The stream caps and keepalive it says `info` prints, at their documented defaults.
        published = json.loads(described.stdout)["limits"]
        assert published["streams"]["maxWatchers"] == 1024
        assert published["streams"]["maxStreamsPerPeer"] == 512
        assert published["keepalive"]["minClientPingIntervalMs"] == 10_000

        identity = subprocess.run(
            [sys.executable, "-c", block("identity")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert identity.returncode == 0, identity.stderr
        assert identity.stdout.strip() == "1.1 True ['originated', 'received', 'dispatched']"
        assert (tmp_path / "haiku-2.key").stat().st_mode & 0o777 == 0o600

        verify, export, verify_file, keys_list, rotate = block("custody-cli").splitlines()
        checked = run(verify.replace("TRACKING_ID", sent[0]), env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        exported = run(export.replace("packets.jsonl", str(tmp_path / "packets.jsonl")), env)
        assert exported.returncode == 0, exported.stderr
        offline = run(verify_file.replace("packets.jsonl", str(tmp_path / "packets.jsonl")), env)
        assert offline.returncode == 0, offline.stdout
        assert "12 of 12 packets verified" in offline.stdout
        listed = json.loads(run(keys_list, env).stdout)
        assert [k["ownerKind"] for k in listed["keys"]] == [
            "KEY_OWNER_KIND_SERVER",
            "KEY_OWNER_KIND_AGENT",
        ]
        rotated = run(rotate, env)
        assert rotated.returncode == 0, rotated.stderr
        assert "now signing with" in rotated.stdout

        bad = run(
            ".venv/bin/packetbus dispatch --topic research --origin 'two words' --ttl 90000", env
        )
        assert bad.returncode == 1
        [message] = bad.stderr.splitlines()
        assert "origin:" in message
        assert "ttl_seconds:" in message
    finally:
        assert server.stop() == 0


def test_worker_example_and_carcel_cli_run_as_written(
    served: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    serve, env, _ = served
    server = Served(serve, env)
    try:
        worker = run_block("worker", tmp_path, env)
        assert worker.returncode == 0, worker.stderr
        assert worker.stdout.splitlines() == [
            f"worker-1 did job-{n} on delivery 1" for n in range(3)
        ]

        create, consume, listing, requeue, get = block("groups-cli").splitlines()
        created = run(create, env)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["maxDeliveryAttempts"] == 1
        consumed = run(consume, env)
        assert consumed.returncode == 0, consumed.stderr
        [delivery] = [json.loads(line) for line in consumed.stdout.splitlines()]
        assert delivery["packet"]["packet"]["task"]["id"] == "job-0"
        listed = run(listing, env)
        assert listed.returncode == 0, listed.stderr
        [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (entry["reason"], entry["detail"], entry["source"]) == (
            "max delivery attempts",
            "cannot parse it",
            "group:strict",
        )
        requeued = run(requeue.replace("CARCEL_ID", entry["id"]), env)
        assert requeued.returncode == 0, requeued.stderr
        assert run(listing, env).stdout == ""
        # The other two jobs, then the requeued one, each delivered once.
        again = run(
            consume.replace("--settle nack", "--settle ack").replace("--count 1", "--count 3"), env
        )
        rows = [json.loads(line) for line in again.stdout.splitlines()]
        assert [r["packet"]["packet"]["task"]["id"] for r in rows] == ["job-1", "job-2", "job-0"]
        assert {r["deliveryCount"] for r in rows} == {1}
        group = json.loads(run(get, env).stdout)
        assert (group["name"], group.get("outstanding", "0")) == ("strict", "0")
    finally:
        assert server.stop() == 0


def test_task_queue_cli_runs_as_written(served: tuple[str, dict[str, str], Path]) -> None:
    serve, env, _ = served
    server = Served(serve, env)
    try:
        post, claim, complete, results, queues = block("tasks-cli").splitlines()
        posted = run(post, env)
        assert posted.returncode == 0, posted.stderr
        assert json.loads(posted.stdout)["status"] == "TASK_STATUS_QUEUED"
        claimed = run(claim, env)
        assert claimed.returncode == 0, claimed.stderr
        state = json.loads(claimed.stdout)
        assert (state["taskId"], state["worker"]) == ("t-1", "worker-1")
        done = run(complete.replace("TOKEN", state["fencingToken"]), env)
        assert done.returncode == 0, done.stderr
        [result] = [json.loads(line) for line in run(results, env).stdout.splitlines()]
        assert (result["completed"], result["result"]) == (True, {"pages": 3})
        nothing = run(claim, env)
        assert (nothing.returncode, nothing.stdout.strip()) == (1, "{}")
        # Run again as written (a retry): the same outcome, completed once.
        again = run(complete.replace("TOKEN", state["fencingToken"]), env)
        assert again.returncode == 0, again.stderr
        assert len(run(results, env).stdout.splitlines()) == 1
        [listed] = [json.loads(line) for line in run(queues, env).stdout.splitlines()]
        assert listed == {
            "queue": "research",
            "tasks": 1,
            "counts": [{"status": "TASK_STATUS_COMPLETED", "priority": 5, "tasks": 1}],
        }
        other = run(
            complete.replace("TOKEN", state["fencingToken"]).replace('"pages": 3', '"pages": 4'),
            env,
        )
        assert other.returncode == 1
        assert other.stderr.startswith("packetbus: ALREADY_EXISTS")
    finally:
        assert server.stop() == 0


async def test_example_swarm_runs_as_written(served: tuple[str, dict[str, str], Path]) -> None:
    serve, env, _ = served
    server = Served(serve, env)
    try:
        ran = await asyncio.to_thread(
            subprocess.run,
            shlex.split(block("swarm")),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        report = json.loads(ran.stdout)
        assert report["ok"] is True
        assert (report["tasks"], report["chains_verified"]) == (12, 26)
        assert (report["wrong_answers"], report["chains_failed"]) == ([], [])
        swarm = report["swarm"]
        assert report["workers"] == [f"{swarm}.worker-{i}" for i in (1, 2, 3)]
        # Each worker process reported once; between them they completed every task.
        workers = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
        assert sorted(w["worker"] for w in workers) == report["workers"]
        assert sum(w["completed"] for w in workers) == 12

        async with await packetbus.Client.connect(env["PACKETBUS_TARGET"]) as client:
            queue = client.task_queue(f"{swarm}.work")
            tasks = await queue.tasks()
            assert len(tasks) == 12
            assert {t.status for t in tasks} == {task_pb.TASK_STATUS_COMPLETED}
            for task in tasks:
                [result] = await queue.results(task.task_id)
                assert result.completed
                assert result.worker in report["workers"]
            # Every agent of the swarm deregistered on its way out.
            assert await client.list_agents(parent_id="coordinator") == []
            assert [a.id for a in await client.list_agents()] == []
            summary = await client.get_record(
                record_pb.RECORD_KIND_SESSION_SUMMARY, report["session_record"]
            )
            assert summary.packet.session_summary.metrics["tasks_completed"] == 12
            assert summary.packet.session_summary.agents == ["coordinator", *report["workers"]]
            roster = await client.list_records(record_pb.RECORD_KIND_SWARM_REGISTRY)
            [registry] = [
                r.packet.swarm_registry
                for r in roster.records
                if r.packet.swarm_registry.swarm_id == swarm
            ]
            assert [m.agent_id for m in registry.members] == report["workers"]
            brief = await client.get_context("swarm", "brief")
            assert json.loads(brief.data)["queue"] == f"{swarm}.work"
            assert await client.get_global_context(f"{swarm}.done") == "1"
    finally:
        assert server.stop() == 0


def test_context_example_runs_as_written(
    served: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    serve, env, _ = served
    server = Served(serve, env)
    try:
        ran = run_block("context", tmp_path, env)
        assert ran.returncode == 0, ran.stderr
        aborted, record_id = ran.stdout.splitlines()
        assert aborted == "ABORTED"
        assert re.fullmatch(r"[0-9a-f-]{36}", record_id)
    finally:
        assert server.stop() == 0


def test_policy_cli_runs_as_written(
    served: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    """Run in a directory of its own, holding the README's policy file, as a user would."""
    _, env, _ = served
    (tmp_path / "policy.toml").write_text(block("policy"))
    lines = block("policy-cli").splitlines()
    check, serve = lines[:2]

    def here(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shlex.split(command.replace(".venv/bin/", f"{REPO}/.venv/bin/")),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    checked = here(check)
    assert checked.returncode == 0, checked.stderr
    assert serve.endswith(" &")
    server = Served(serve.removesuffix(" &"), env, cwd=tmp_path)
    try:
        new_key, dispatch, held, approve, stats, export, verify = lines[2:]
        for command in (new_key, dispatch):
            ran = here(command)
            assert ran.returncode == 0, ran.stdout + ran.stderr
        [waiting] = [json.loads(line) for line in here(held).stdout.splitlines()]
        tracking_id = waiting["packet"]["packet"]["trackingId"]
        assert waiting["ruleId"] == "spawn-needs-guardian"
        approved = here(approve.replace("TRACKING_ID", tracking_id))
        assert approved.returncode == 0, approved.stderr
        assert json.loads(approved.stdout)["topic"] == "ops"
        assert here(held).stdout == ""
        counts = json.loads(here(stats).stdout)
        assert counts["byRule"] == {"spawn-needs-guardian": "1"}  # int64 in JSON: a string
        exported = here(export)
        assert exported.returncode == 0, exported.stderr
        verified = here(verify)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        assert server.stop() == 0


def test_security_example_runs_as_written(tmp_path: Path) -> None:
    """The Security section's worked example: its PKI and tokens made by its own
    commands, its policy, its server (TLS and JWT on every interface) and each
    party's commands, in a directory of their own."""
    port = free_port()
    env = _env(port, tmp_path / "data")
    pki = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block("security-pki")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pki.returncode == 0, pki.stderr
    (tmp_path / "tokens.py").write_text(block("security-tokens"))
    tokens = subprocess.run(
        [sys.executable, "tokens.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert tokens.returncode == 0, tokens.stderr
    (tmp_path / "policy.toml").write_text(block("security-policy"))

    def here(command: str) -> subprocess.CompletedProcess[str]:
        command = command.replace("localhost:50051", f"localhost:{port}")
        return subprocess.run(
            shlex.split(command.replace(".venv/bin/", f"{REPO}/.venv/bin/")),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    serve = block("security-serve").replace("0.0.0.0:50051", f"0.0.0.0:{port}")
    server = Served(serve, env, cwd=tmp_path)
    try:
        lines = block("security-act").splitlines()
        (me, worker, post, claim, complete, sneaky, deploy, key, approve) = lines
        for command in (me, worker, post):
            done = here(command)
            assert done.returncode == 0, done.stderr
        # No token: UNAUTHENTICATED, nothing posted.
        outsider = here(post.replace(" --token-file coordinator.jwt", ""))
        assert outsider.returncode == 1
        assert outsider.stderr.startswith("packetbus: not authenticated: no credential")
        claimed = here(claim)
        assert claimed.returncode == 0, claimed.stderr
        task = json.loads(claimed.stdout)
        assert task["taskId"] == "build-1"
        completed = here(complete.replace("FENCING_TOKEN", str(task["fencingToken"])))
        assert completed.returncode == 0, completed.stderr
        refused = here(sneaky)
        assert refused.returncode == 1
        assert refused.stderr.startswith("packetbus: permission denied"), refused.stderr
        assert "tasks.post" in refused.stderr
        held = here(deploy)
        assert held.returncode == 0, held.stderr
        dispatched = json.loads(held.stdout)
        assert "held" in dispatched, dispatched
        # alice finds the held packet herself, as the README says (not without --topic).
        held_by = approve.split(" policy approve ")[0]
        listed = here(f"{held_by} policy held --topic deploys")
        assert listed.returncode == 0, listed.stderr
        assert [
            json.loads(line)["packet"]["packet"]["trackingId"]
            for line in listed.stdout.splitlines()
        ] == [dispatched["trackingId"]]
        assert here(f"{held_by} policy held").returncode == 1
        registered = here(key)
        assert registered.returncode == 0, registered.stderr
        approved = here(approve.replace("TRACKING_ID", dispatched["trackingId"]))
        assert approved.returncode == 0, approved.stderr
        # The same worker from Python: allowed to read, refused with the ErrorInfo.
        (tmp_path / "worker.py").write_text(
            block("security-python").replace("localhost:50051", f"localhost:{port}")
        )
        worker_py = subprocess.run(
            [sys.executable, "worker.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert worker_py.returncode == 0, worker_py.stderr
        assert worker_py.stdout.splitlines() == [
            "['build-1']",
            "PERMISSION_DENIED worker-1 tasks.post jobs",
        ]
        # The README's `policy can` line, and what it says it prints.
        can = re.search(r"`(\.venv/bin/packetbus policy can [^`]+)` prints\n?\s*`([^`]+)`", README)
        assert can, "README shows no `policy can` line"
        answered = here(can.group(1))
        assert answered.returncode == 1, answered.stderr
        assert answered.stdout.strip() == " ".join(can.group(2).split())
    finally:
        assert server.stop() == 0


def _permission_rows() -> list[str]:
    """The README's permission table rows as `Permission` declares them: each
    member's value and its comment (what it allows, on which resource), in order."""
    source = (REPO / "server/packetbus_server/_access/permissions.py").read_text()
    declared = re.findall(r'^    [A-Z_]+ = "([a-z_.]+)"  # (.+)$', source, re.M)
    return [f"| `{value}` | {meaning} |" for value, meaning in declared]


def test_the_readme_lists_every_permission_as_the_enum_declares_it() -> None:
    from packetbus_server._access import Permission

    rows = _permission_rows()
    assert [row.split("`")[1] for row in rows] == [p.value for p in Permission]
    table = re.search(r"<!-- readme:permissions -->\n((?:\|.*\n)+)", README)
    assert table, "README has no table marked readme:permissions"
    assert table.group(1).splitlines()[2:] == rows


def test_the_readme_authorization_examples_are_valid_policies() -> None:
    from packetbus_server._access import Permission, Principal
    from packetbus_server._policy_parse import parse

    section = parse(block("authorization").encode()).authorization
    assert section is not None
    coordinator = Principal("spiffe://example.org/agent/coordinator", "mtls", "coordinator")
    assert section.allows(coordinator, Permission.TASKS_POST, "jobs.build")
    assert section.allows(coordinator, Permission.AGENTS_ACT_FOR, "worker-3")
    assert not section.allows(coordinator, Permission.AGENTS_ACT_FOR, "planner")
    assert section.allows(coordinator, Permission.MEMORY_WRITE, "coordinator")
    assert not section.allows(coordinator, Permission.MEMORY_WRITE, "worker-3")
    assert parse(block("security-policy").encode()).authorization is not None


def test_security_example_with_mutual_tls_runs_as_written(tmp_path: Path) -> None:
    """The worked example's mutual TLS variant: a worker's certificate made by the
    README's commands, the policy matching SPIFFE IDs, the server with a client CA;
    a client without a certificate does not get through the handshake."""
    port = free_port()
    env = _env(port, tmp_path / "data")

    def bash(script: str) -> None:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    bash(block("security-pki"))
    *certificate, claim = block("security-mtls").splitlines()
    bash("\n".join(certificate))
    policy = block("security-policy").replace(
        'match = "worker-*"', 'match = "spiffe://example.org/agent/worker-*"'
    )
    (tmp_path / "policy.toml").write_text(policy)
    serve = block("security-serve").replace("0.0.0.0:50051", f"0.0.0.0:{port}")
    server = Served(f"{serve} --tls-client-ca ca.pem", env, cwd=tmp_path)

    def here(command: str) -> subprocess.CompletedProcess[str]:
        command = command.replace("localhost:50051", f"localhost:{port}")
        return subprocess.run(
            shlex.split(command.replace(".venv/bin/", f"{REPO}/.venv/bin/")),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        # Let in as worker-1: nothing to claim yet ("{}", exit 1), no refusal.
        claimed = here(claim)
        assert (claimed.returncode, claimed.stdout, claimed.stderr) == (1, "{}\n", "")
        # worker-1 may claim from jobs, not post to it; the refusal names its SPIFFE ID.
        post = claim.replace(
            "tasks claim jobs --worker worker-1", "tasks post jobs --id t-1 --origin worker-1"
        )
        refused = here(post)
        assert refused.returncode == 1
        assert refused.stderr.startswith("packetbus: permission denied"), refused.stderr
        assert "spiffe://example.org/agent/worker-1" in refused.stderr
        anonymous = here(claim.replace(" --tls-cert worker-1.pem --tls-key worker-1.key", ""))
        assert anonymous.returncode != 0
    finally:
        assert server.stop() == 0


def test_security_example_with_a_jwks_runs_as_written(tmp_path: Path) -> None:
    """The worked example's JWKS variant: jwks.json made by the README's script,
    tokens naming its kid as the README says, the server on --jwt-jwks; a token
    without a kid is refused with the message the README quotes."""
    port = free_port()
    env = _env(port, tmp_path / "data")

    def here(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    pki = here(["bash", "-euo", "pipefail", "-c", block("security-pki")])
    assert pki.returncode == 0, pki.stderr
    (tmp_path / "jwks.py").write_text(block("security-jwks"))
    made = here([sys.executable, "jwks.py"])
    assert made.returncode == 0, made.stderr
    named = 'jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "idp-1"})'
    assert f"`{named}`" in README
    tokens = block("security-tokens")
    (tmp_path / "tokens.py").write_text(
        tokens.replace('jwt.encode(claims, key, algorithm="EdDSA")', named)
    )
    assert here([sys.executable, "tokens.py"]).returncode == 0
    (tmp_path / "policy.toml").write_text(block("security-policy"))
    serve = (
        block("security-serve")
        .replace("0.0.0.0:50051", f"0.0.0.0:{port}")
        .replace("--jwt-public-key idp.pub", "--jwt-jwks jwks.json")
    )
    server = Served(serve, env, cwd=tmp_path)
    try:
        me = block("security-act").splitlines()[0].replace("localhost:50051", f"localhost:{port}")
        command = shlex.split(me.replace(".venv/bin/", f"{REPO}/.venv/bin/"))
        done = here(command)
        assert done.returncode == 0, done.stderr
        (tmp_path / "tokens.py").write_text(tokens)  # as first written: no kid
        assert here([sys.executable, "tokens.py"]).returncode == 0
        refused = here(command)
        assert refused.returncode == 1
        quoted = re.search(r"refused: `(packetbus: not authenticated: [^`]+)`", README)
        assert quoted, "README quotes no refusal of a token without a kid"
        assert refused.stderr.strip() == " ".join(quoted.group(1).split())
    finally:
        assert server.stop() == 0


def test_a2a_gateway_example_runs_as_written(
    served: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    serve, env, _ = served
    gateway_port = free_port()
    # Only the gateway's port moves (its env var); the example names the default one.
    env = {**env, "PACKETBUS_A2A_LISTEN": f"127.0.0.1:{gateway_port}"}
    server = Served(serve, env)
    try:
        gateway = Served(block("a2a-serve"), env)
        try:
            example = block("a2a-agent").replace("127.0.0.1:8080", f"127.0.0.1:{gateway_port}")
            script = tmp_path / "a2a_example.py"
            script.write_text(example)
            ran = subprocess.run(
                [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
            )
            assert ran.returncode == 0, ran.stderr
            assert ran.stdout == "HELLO A2A / summarized 9 characters\n"
            assert "It prints `HELLO A2A / summarized 9 characters`." in README
        finally:
            assert gateway.stop() == 0
    finally:
        assert server.stop() == 0


def test_console_example_runs_as_written(served: tuple[str, dict[str, str], Path]) -> None:
    serve, env, _ = served
    console_port = free_port()
    # Only the console's port moves (its env var); the example names the default one.
    env = {**env, "PACKETBUS_CONSOLE_LISTEN": f"127.0.0.1:{console_port}"}
    server = Served(serve, env)
    try:
        console = Served(block("console-serve"), env)
        try:
            assert "It prints `packetbus console serving on http://127.0.0.1:8090`" in README
            [curl] = block("console-me").splitlines()
            url = shlex.split(curl)[-1].replace(":8090/", f":{console_port}/")
            answer = httpx.get(url, timeout=10)
            assert answer.status_code == 200
            assert answer.json() == json.loads(block("console-me-answer"))
        finally:
            assert console.stop() == 0
    finally:
        assert server.stop() == 0
