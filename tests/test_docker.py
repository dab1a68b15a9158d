"""docker/ uses the CLI's real flags (no Docker engine runs here, so the files are checked)."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from packetbus._cli import _parser
from tests.conftest import REPO

DOCKERFILE = (REPO / "docker/Dockerfile").read_text()
COMPOSE = (REPO / "docker/compose.yaml").read_text()


def _parses(argv: list[str]) -> None:
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on unknown flags
        pytest.fail(f"packetbus {' '.join(argv)}: not a valid command line ({exc})")


def test_dockerfile_runs_as_non_root_with_a_cli_healthcheck() -> None:
    assert re.search(r"^USER packetbus$", DOCKERFILE, re.M)
    health = re.search(r'CMD \["packetbus", (.*)\]$', DOCKERFILE, re.M)
    assert health
    _parses(json.loads(f"[{health.group(1)}]"))
    assert json.loads(re.findall(r"^CMD (\[.*\])$", DOCKERFILE, re.M)[-1]) == ["serve"]


def test_compose_server_command_uses_real_flags_and_redis_7_with_aof() -> None:
    assert "image: redis:7.2-alpine" in COMPOSE
    assert '"--appendonly", "yes"' in COMPOSE
    [server_command] = [
        json.loads(line.split("command:", 1)[1])
        for line in COMPOSE.splitlines()
        if "command:" in line and '"serve"' in line
    ]
    _parses(server_command)
    assert "--redis-url" in server_command


def test_dockerfile_copies_every_package_directory() -> None:
    # `pip install .` in the image installs what pyproject's package search finds:
    # a directory left out of the image is a package silently missing from it.
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    where = found["find"]["where"]
    assert where
    for directory in where:
        assert re.search(rf"^COPY {directory} \./{directory}$", DOCKERFILE, re.M), directory
