"""The server's signing keys on disk and from the environment."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from packetbus import _custody
from packetbus_server import ServerConfig, start
from packetbus_server._keyring import Keyring, KeyringError, rotate


def test_first_start_creates_a_private_keyring(tmp_path: Path) -> None:
    path = tmp_path / "data" / "custody-keys.json"
    ring = Keyring.load(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert ring.active.key_id == _custody.key_id_for(ring.active.public_key)
    again = Keyring.load(path)
    assert again.active.key_id == ring.active.key_id
    assert again.server_id == ring.server_id


def test_rotation_retires_the_old_key_and_a_running_keyring_notices(tmp_path: Path) -> None:
    path = tmp_path / "custody-keys.json"
    ring = Keyring.load(path)
    old = ring.active.key_id
    assert not ring.reload_if_changed()
    fresh = rotate(path)
    assert ring.reload_if_changed()
    assert ring.active.key_id == fresh.signer.key_id != old
    retired = [e for e in ring.entries if e.signer.key_id == old]
    assert retired[0].retired_at_ms is not None
    assert path.stat().st_mode & 0o777 == 0o600
    assert ring.server_id == Keyring.load(path).server_id


def test_a_seed_from_the_environment_is_used_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = bytes(range(32))
    monkeypatch.setenv("PACKETBUS_SERVER_ID", "server-a")
    ring = Keyring.load(tmp_path / "unused.json", seed_b64=base64.b64encode(seed).decode())
    assert ring.active == _custody.Signer(seed)
    assert ring.server_id == "server-a"
    assert not (tmp_path / "unused.json").exists()


@pytest.mark.parametrize("seed", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_bad_seed_is_a_clear_error(tmp_path: Path, seed: str) -> None:
    with pytest.raises(KeyringError):
        Keyring.load(tmp_path / "k.json", seed_b64=seed)


def test_a_keyring_with_every_key_retired_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custody-keys.json"
    Keyring.load(path)
    doc = json.loads(path.read_text())
    doc["keys"][0]["retired_at_ms"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="no active signing key"):
        Keyring.load(path)


async def test_a_bad_key_file_fails_the_start_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "keys.json"
    bad.write_text('{"broken":')
    with pytest.raises(KeyringError):
        await start(
            ServerConfig(listen="127.0.0.1:0", data_dir=tmp_path / "data", signing_key_file=bad)
        )
    # The embedded Valkey was never started, so none is left running.
    assert not (tmp_path / "data" / "valkey.pid").exists()
