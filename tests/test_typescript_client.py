"""The TypeScript client's own tests (clients/typescript, Node's test runner), run from pytest:
`npm test` builds the package and runs it against a real `packetbus serve` it starts itself
(this venv's server, embedded Valkey). Node and `npm ci` in clients/typescript are required:
.ci/run installs them; a missing `node` is a failure, not a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "clients" / "typescript"


# About 2 minutes alone (64 tests, each starting real servers); more beside the other
# test processes: past pytest's default 300 s timeout.
@pytest.mark.timeout(900)
def test_typescript_client_npm_test() -> None:
    npm = shutil.which("npm")
    assert npm is not None, "npm (Node 20+) is required for the TypeScript client's tests"
    assert (PACKAGE / "node_modules").is_dir(), "run `npm ci` in clients/typescript first"
    done = subprocess.run(
        [npm, "test"], cwd=PACKAGE, capture_output=True, text=True, timeout=840, check=False
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout


def test_typescript_generated_code_is_fresh() -> None:
    npm = shutil.which("npm")
    assert npm is not None, "npm (Node 20+) is required for the TypeScript client's tests"
    done = subprocess.run(
        [npm, "run", "generate:check"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
