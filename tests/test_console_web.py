"""The operator console's browser front end (console/web, issue 19): the committed bundle
is what its sources build (`scripts/build_console.py --check`), a real `packetbus
console` serves it (index.html at / and at the page's own routes, every asset it loads
with its content type and a long cache, the API as before), and the front end's unit
tests (vitest: grants -> buttons, the agents reducer, custody rows, API errors, queue counts
and claims, findings, the Overview's series and charts, the live-view hook) pass.
Node and `npm ci` in console/web are required for the last: .ci/run installs them; a
missing `node` is a failure, not a skip. The browser driver of the end-to-end tests
(console/web/e2e, run by test_console_e2e.py) type-checks (`npm run check:e2e`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests._console import start_console, stop
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import build_console

WEB = REPO / "console" / "web"
STATIC = REPO / "console" / "packetbus_console" / "static"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}


@pytest.fixture(scope="module")
def console(target: str) -> Iterator[str]:
    process, url = start_console(target)
    yield url
    stop(process)


@pytest.fixture
async def http(console: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=console, timeout=20) as client:
        yield client


async def test_the_console_serves_the_bundle_and_every_asset_it_loads(
    http: httpx.AsyncClient,
) -> None:
    index = (STATIC / "index.html").read_text()
    for path in (
        "/",
        "/overview",
        "/agents",
        "/topics",
        "/queues",
        "/findings",
        "/governance",
        "/carcel",
        "/custody",
        "/sign-in",
        "/no/such",
    ):
        page = await http.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"] == "text/html; charset=utf-8", path
        assert page.headers["cache-control"] == "no-cache", path
        assert page.text == index, path
    assets = build_console.referenced_assets(index)
    assert sorted(Path(asset).suffix for asset in assets) == [".css", ".js"]
    for asset in assets:
        answer = await http.get(f"/{asset}")
        assert answer.status_code == 200, asset
        kind = CONTENT_TYPES[Path(asset).suffix]
        assert answer.headers["content-type"].split(";")[0] == kind, asset
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert answer.content == (STATIC / asset).read_bytes()
    missing = await http.get("/assets/index-nothere.js")
    assert missing.status_code == 404
    assert missing.json() == {"error": "no page or file here", "code": "NOT_FOUND"}
    assert "cache-control" not in missing.headers


async def test_the_api_is_unchanged_beside_the_bundle(http: httpx.AsyncClient) -> None:
    me = await http.get("/api/me")
    assert (me.status_code, me.json()["principal"]) == (200, "local")
    unknown = await http.get("/api/no-such-route")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "no such API route", "code": "NOT_FOUND"}
    wrong_method = await http.get("/api/session")
    assert wrong_method.status_code == 405
    # A POST to a page route is no page: 404, not index.html.
    posted = await http.post("/agents", headers={"X-Packetbus-Console": "1"})
    assert posted.status_code == 404
    assert posted.json() == {"error": "no page or file here", "code": "NOT_FOUND"}


def test_the_committed_bundle_matches_its_sources() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/build_console.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "console bundle is fresh\n", "")
    assert (STATIC / "SOURCE_SHA256").read_text() == build_console.source_digest() + "\n"


def test_the_stamp_changes_with_any_source_and_not_with_tests(tmp_path: Path) -> None:
    copy = tmp_path / "web"
    for path in build_console.source_files():
        target = copy / path.relative_to(WEB)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    before = build_console.source_digest(copy)
    assert before == build_console.source_digest()
    (copy / "test").mkdir()
    (copy / "test" / "extra.test.ts").write_text("// not in the bundle\n")
    assert build_console.source_digest(copy) == before
    style = copy / "src" / "style.css"
    style.write_bytes(style.read_bytes() + b"\n")
    assert build_console.source_digest(copy) != before
    (copy / "package-lock.json").unlink()
    with pytest.raises(SystemExit, match="console sources missing"):
        build_console.source_digest(copy)


@pytest.mark.timeout(300)
def test_console_web_unit_tests() -> None:
    npm = shutil.which("npm")
    assert npm is not None, "npm (Node 20+) is required for the console's front-end tests"
    assert (WEB / "node_modules").is_dir(), "run `npm ci` in console/web first"
    done = subprocess.run(
        [npm, "test"],
        cwd=WEB,
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(r"Tests\s+57 passed \(57\)", done.stdout), done.stdout[-3000:]


@pytest.mark.timeout(120)
def test_the_browser_driver_type_checks() -> None:
    npm = shutil.which("npm")
    assert npm is not None, "npm (Node 20+) is required for the console's front-end tests"
    assert (WEB / "node_modules").is_dir(), "run `npm ci` in console/web first"
    done = subprocess.run(
        [npm, "run", "--silent", "check:e2e"],
        cwd=WEB,
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done.stdout + done.stderr
