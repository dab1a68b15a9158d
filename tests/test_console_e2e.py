"""The operator console end to end in a real browser (issue 19's acceptance).

A real `packetbus serve` (bearer JWTs from a JWKS file, a policy file whose hold rule
keeps spawn requests for an approver and whose `[authorization]` section grants each
principal its own), a real `packetbus console` with the approver's key, a scripted swarm
(tests/_console_e2e.Swarm: a coordinator and two workers, each its own principal), and
Debian's Chromium driven by playwright-core (console/web/e2e). Each scenario is checked
twice: in the page (the driver's answer) and in packetbus's own state (an admin client).

Screenshots of every page and of each scenario go to $PACKETBUS_ARTIFACTS/console-screenshots
(default <repo>/artifacts/console-screenshots). Without Chromium the tests skip on a
developer's machine and fail in CI (see `_console_e2e.require_browser`).
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import packetbus
from packetbus._export import verify_export
from packetbus.v1 import agent_service_pb2, custody_pb2
from tests._console import APPROVER as APPROVER_PREFIX
from tests._console import hold_spawns, start_console, stop
from tests._console_e2e import (
    HEALTHY_TTL,
    Driver,
    Swarm,
    artifacts,
    eventually,
    require_browser,
)
from tests._identities import AUDIENCE, ISSUER, Issuer, client_as, policy_text, spiffe
from tests.conftest import free_port, run_cli, serve_process, unique

# Who may call, not how the store behaves: one backend. Under pytest-xdist each worker
# that runs some of these tests starts its own server, console and browser.
pytestmark = [pytest.mark.one_backend, pytest.mark.slow]

APPROVER = unique(APPROVER_PREFIX)  # the console's --agent-key, one of the approvers
OPERATOR = spiffe(APPROVER)  # signs in to approve: the approver is its own agent id
VIEWER = spiffe("console-viewer")
ADMIN = spiffe("console-admin")
READS = [
    ("held.read", "*"),
    ("agents.read", "*"),
    ("carcel.read", "*"),
    ("audit.export", "*"),
    ("topics.subscribe", "*"),
    ("groups.read", "*"),
    ("tasks.read", "*"),
    ("findings.read", "*"),
]
GRANTS = {
    ADMIN: [("*", "*")],
    OPERATOR: [*READS, ("packets.approve", "e2e.*"), ("carcel.requeue", "e2e.*")],
    VIEWER: READS,
    # Every agent of the swarm: its own registration, anything on the e2e topics.
    spiffe("swarm-*"): [("agents.register", "{agent}"), ("agents.read", "*"), ("*", "e2e.*")],
}
PAGES = [
    "/overview",
    "/agents",
    "/topics",
    "/queues",
    "/findings",
    "/governance",
    "/carcel",
    "/custody",
]
OK = "CUSTODY_VERDICT_OK"


@pytest.fixture(scope="module", autouse=True)
def _browser_installed() -> None:
    require_browser()


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """The server's /metrics port: the console's Overview scrapes it."""
    return free_port()


@pytest.fixture(scope="module")
def target(
    redis_url: str, issuer: Issuer, metrics_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("console-e2e")
    (folder / "jwks.json").write_text(issuer.jwks())
    (folder / "policy.toml").write_text(policy_text(GRANTS, hold_spawns("e2e.*")))
    port = free_port()
    server = serve_process(
        port,
        redis_url,
        folder / "data",
        *("--jwt-jwks", str(folder / "jwks.json"), "--jwt-issuer", ISSUER),
        *("--jwt-audience", AUDIENCE, "--policy", str(folder / "policy.toml")),
        *("--metrics-listen", f"127.0.0.1:{metrics_port}"),
    )
    # Read on, so its log never fills the pipe.
    threading.Thread(target=server.stdout.read, daemon=True).start()  # type: ignore[union-attr]
    yield f"127.0.0.1:{port}"
    server.terminate()
    assert server.wait(timeout=20) == 0


@pytest.fixture(scope="module")
async def admin(target: str, issuer: Issuer) -> AsyncIterator[packetbus.Client]:
    async with await client_as(target, issuer.token(ADMIN)) as client:
        yield client


@pytest.fixture(scope="module")
async def approver(
    admin: packetbus.Client, tmp_path_factory: pytest.TempPathFactory
) -> tuple[packetbus.AgentIdentity, Path]:
    identity = packetbus.AgentIdentity.generate(APPROVER)
    await admin.register_identity(identity)
    path = tmp_path_factory.mktemp("console-e2e-keys") / "approver.key"
    identity.save(path)
    return identity, path


@pytest.fixture(scope="module")
def console(
    target: str, metrics_port: int, approver: tuple[packetbus.AgentIdentity, Path]
) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k != "PACKETBUS_TOKEN"}
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    options = ("--agent-key", str(approver[1]), "--metrics-url", metrics, "--metrics-interval", "1")
    process, url = start_console(target, *options, env=env)
    yield url
    stop(process)


@pytest.fixture(scope="module")
async def swarm(target: str, issuer: Issuer) -> AsyncIterator[Swarm]:
    async with Swarm.running(target, issuer) as running:
        yield running


@pytest.fixture(scope="module")
def screenshots() -> Path:
    # Not emptied first: another xdist worker may be writing its tests' screenshots.
    folder = artifacts()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
async def browser(
    console: str, screenshots: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Driver]:
    log = tmp_path_factory.mktemp("console-e2e-driver") / "driver.log"
    driver = await Driver.start(console, screenshots, log)
    yield driver
    await driver.close()


@pytest.fixture
def operator(issuer: Issuer) -> dict[str, str]:
    """The step arguments that act as the operator (who may approve and requeue)."""
    return {"who": OPERATOR, "token": issuer.token(OPERATOR)}


@pytest.fixture
def viewer(issuer: Issuer) -> dict[str, str]:
    """The step arguments that act as the viewer (who may only read)."""
    return {"who": VIEWER, "token": issuer.token(VIEWER)}


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of PNG file `path`; AssertionError when it is no PNG."""
    head = path.read_bytes()[:24]
    assert (head[:8], head[12:16]) == (b"\x89PNG\r\n\x1a\n", b"IHDR"), path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


async def held_ids(admin: packetbus.Client, topic: str) -> list[str]:
    return [h.packet.packet.tracking_id async for h in admin.list_held_packets(topic)]


async def test_every_page_renders_and_is_screenshotted(
    browser: Driver, operator: dict[str, str], screenshots: Path
) -> None:
    shown = await browser.step("smokeEveryPage", **operator)
    paths = [page["path"] for page in shown]
    assert [path for path in paths if path in PAGES] == PAGES
    for page in shown:
        shot = Path(page["screenshot"])
        assert shot.parent == screenshots
        assert shot.name == f"page{page['path'].replace('/', '-')}.png"
        width, height = png_size(shot)
        assert (width, height >= 800) == (1280, True), (shot, width, height)


async def test_an_agent_going_stale_shows_stale_live_without_a_reload(
    browser: Driver, operator: dict[str, str], swarm: Swarm, admin: packetbus.Client
) -> None:
    agent = unique("swarm-helper")
    async with swarm.fading_agent(agent) as die:
        seen = await browser.step("watchAgent", agent=agent, **operator)
        assert seen["cells"][:6] == [agent, "live", "helper", "—", swarm.coordinator, "—"]
        assert (await admin.get_agent(agent)).liveness == agent_service_pb2.AGENT_LIVENESS_LIVE
        die()

        async def stale() -> bool:
            found = await admin.list_agents(liveness="stale")
            return agent in [a.id for a in found]

        await eventually(stale, f"agent {agent} never went stale", timeout=30)
        shown = await browser.step(
            "expectAgentStale",
            agent=agent,
            healthy=[swarm.coordinator, *swarm.workers],
            healthyAfterMs=(HEALTHY_TTL + 1) * 1000,
            **operator,
        )
    assert shown["cells"][:6] == [agent, "stale", "helper", "—", swarm.coordinator, "—"]
    # The workers heartbeat (no event says so) past the deadlines the page first listed.
    assert shown["healthy"] == dict.fromkeys([swarm.coordinator, *swarm.workers], "live")
    assert shown["rowClass"] == "stale"
    assert re.fullmatch(r"Updates: live\. \d+ agents, [1-9]\d* stale\.", shown["status"])
    # The swarm's live members are live on the same page.
    listed = {a.id: a.liveness for a in await admin.list_agents()}
    assert listed[swarm.coordinator] == agent_service_pb2.AGENT_LIVENESS_LIVE


async def test_a_held_packet_approved_from_the_page_is_delivered_signed(
    browser: Driver,
    operator: dict[str, str],
    swarm: Swarm,
    admin: packetbus.Client,
    approver: tuple[packetbus.AgentIdentity, Path],
) -> None:
    topic = unique("e2e.spawn")
    packet = await swarm.hold_spawn(topic)
    assert await held_ids(admin, topic) == [packet.tracking_id]

    shown = await browser.step("approveHeld", trackingId=packet.tracking_id, **operator)
    assert shown["cells"][:5] == [
        packet.tracking_id,
        topic,
        swarm.coordinator,
        "spawn-needs-guardian",
        "spawning needs a guardian",
    ]
    assert await held_ids(admin, topic) == []
    delivered = await swarm.receive(topic, "workers")
    assert delivered.packet.tracking_id == packet.tracking_id
    verdict = await admin.verify_custody(packet.tracking_id)
    assert verdict.verified
    [approval] = [e for e in verdict.entries if e.action == "approved"]
    identity = approver[0]
    assert (approval.actor, approval.key_id, approval.verdict) == (
        APPROVER,
        identity.signer.key_id,
        custody_pb2.CUSTODY_VERDICT_OK,
    )
    stats = await admin.policy_stats(topic)
    assert dict(stats.by_decision) == {"held": 1, "approved": 1}


async def test_a_carceled_packet_requeued_from_the_page_is_back_on_its_topic(
    browser: Driver, operator: dict[str, str], swarm: Swarm, admin: packetbus.Client
) -> None:
    topic = unique("e2e.jobs")
    packet, entry_id = await swarm.carcel_job(topic)
    assert [e.id async for e in admin.carcel_entries(topic)] == [entry_id]

    shown = await browser.step("requeueCarcel", entryId=entry_id, topic=topic, **operator)
    cells = shown["cells"]
    assert cells[:6] == [
        entry_id,
        packet.tracking_id,
        topic,
        "max delivery attempts",
        "cannot parse it",
        "1",
    ]
    assert [e.id async for e in admin.carcel_entries(topic)] == []
    again = await swarm.receive(topic, "jobs")
    assert again.packet.tracking_id == packet.tracking_id


async def test_a_custody_chain_renders_with_every_hop_verified(
    browser: Driver,
    operator: dict[str, str],
    swarm: Swarm,
    admin: packetbus.Client,
    approver: tuple[packetbus.AgentIdentity, Path],
    target: str,
    issuer: Issuer,
    tmp_path: Path,
) -> None:
    topic = unique("e2e.spawn")
    packet = await swarm.hold_spawn(topic)
    async with await client_as(target, issuer.token(OPERATOR)) as approving:
        await approving.approve_packet(topic, packet.tracking_id, identity=approver[0])
    await swarm.receive(topic, "workers")

    saved = tmp_path / "downloaded.jsonl"
    shown = await browser.step(
        "custodyChain", trackingId=packet.tracking_id, saveAs=str(saved), **operator
    )
    verdict = await admin.verify_custody(packet.tracking_id)
    assert verdict.verified
    assert "approved" in [e.action for e in verdict.entries]
    assert shown["status"] == f"✓ verified: {len(verdict.entries)} hops, head ok"
    hops: list[dict[str, Any]] = shown["hops"]
    assert [h["verdictAttr"] for h in hops] == ["ok"] * len(verdict.entries)
    for hop, entry in zip(hops, verdict.entries, strict=True):
        index, action, actor, key_id, time, said = hop["cells"]
        assert (index, action, actor, key_id, said) == (
            str(entry.index),
            entry.action,
            entry.actor or "—",
            entry.key_id or "—",
            "✓ ok",
        )
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", time), time
    assert shown["filename"] == f"{packet.tracking_id}.jsonl"
    report = await asyncio.to_thread(verify_export, saved)
    assert (report.ok, report.packets, report.verified) == (True, 1, 1)
    checked = await asyncio.to_thread(run_cli, "verify", "--file", str(saved))
    assert checked.returncode == 0, checked.stderr


async def test_a_principal_without_the_grant_sees_no_approve_button_and_is_refused(
    browser: Driver, viewer: dict[str, str], swarm: Swarm, admin: packetbus.Client
) -> None:
    topic = unique("e2e.spawn")
    packet = await swarm.hold_spawn(topic)

    shown = await browser.step(
        "refusedApproval", trackingId=packet.tracking_id, topic=topic, **viewer
    )
    assert (shown["buttons"], shown["actions"]) == (0, "not permitted")
    answer = shown["answer"]
    assert answer["status"] == 403
    assert answer["body"]["code"] == "PERMISSION_DENIED"
    assert "packets.approve" in answer["body"]["error"]
    assert await held_ids(admin, topic) == [packet.tracking_id]
    assert dict((await admin.policy_stats(topic)).by_decision) == {"held": 1}


async def test_the_navigation_and_the_main_actions_work_by_keyboard(
    browser: Driver, operator: dict[str, str], swarm: Swarm, admin: packetbus.Client
) -> None:
    topic = unique("e2e.spawn")
    packet = await swarm.hold_spawn(topic)
    jobs = unique("e2e.jobs")
    job, entry_id = await swarm.carcel_job(jobs)

    shown = await browser.step(
        "keyboardActions", trackingId=packet.tracking_id, entryId=entry_id, **operator
    )
    # Tab by Tab: the skip link first, then the navigation's links in order.
    assert shown["toNav"][:2] == ["Skip to content", "Overview"]
    assert shown["toNav"][-1] == "Governance"
    assert shown["toApprove"][-1] == f"Approve {packet.tracking_id}"
    assert shown["toRequeue"][-1] == f"Requeue {entry_id}"
    assert shown["toCustody"][-1] == "Tracking id"
    assert await held_ids(admin, topic) == []
    # The chain as the page showed it: approved, not delivered yet.
    hops = len((await admin.verify_custody(packet.tracking_id)).entries)
    assert shown["custody"] == f"✓ verified: {hops} hops, head ok"
    delivered = await swarm.receive(topic, "workers")
    assert delivered.packet.tracking_id == packet.tracking_id
    assert [e.id async for e in admin.carcel_entries(jobs)] == []
    assert (await swarm.receive(jobs, "jobs")).packet.tracking_id == job.tracking_id
