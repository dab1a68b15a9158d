"""The server's Ed25519 signing keys: one signs, the retired ones still verify.

Kept in a JSON file (mode 0600) in the data directory, created with a fresh key
on first start with a server id (the actor name in its entries), or given as
one base64 seed in $PACKETBUS_SIGNING_KEY (and the id in $PACKETBUS_SERVER_ID).
`packetbus keys rotate` adds a key and retires the previous one; a running
server notices the file changed and signs with the new key from then on.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from packetbus._custody import Signer

KEYRING_FILE = "custody-keys.json"
SEED_ENV = "PACKETBUS_SIGNING_KEY"
SERVER_ID_ENV = "PACKETBUS_SERVER_ID"


class KeyringError(ValueError):
    """The keyring file or the key in the environment cannot be used."""


@dataclass(frozen=True)
class KeyringEntry:
    signer: Signer
    created_at_ms: int
    retired_at_ms: int | None = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _new_server_id() -> str:
    return f"packetbus-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def _parse(path: Path) -> tuple[str, list[KeyringEntry]]:
    try:
        doc = json.loads(path.read_text())
        return str(doc["server_id"]), [
            KeyringEntry(
                Signer(base64.b64decode(k["seed"], validate=True)),
                int(k["created_at_ms"]),
                None if k.get("retired_at_ms") is None else int(k["retired_at_ms"]),
            )
            for k in doc["keys"]
        ]
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise KeyringError(f"cannot read signing keys from {path}: {exc}") from exc


def _write(path: Path, server_id: str, entries: list[KeyringEntry]) -> None:
    doc = {
        "version": 1,
        # The actor name in this server's custody entries: kept with its keys so
        # that it stays the same across restarts, as its key ids do.
        "server_id": server_id,
        "keys": [
            {
                "key_id": e.signer.key_id,
                "seed": base64.b64encode(e.signer.seed).decode(),
                "created_at_ms": e.created_at_ms,
                "retired_at_ms": e.retired_at_ms,
            }
            for e in entries
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside with 0600 from the start, then renamed: a reader never sees
    # half a file, and the private keys are never readable by others.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rotate(path: Path) -> KeyringEntry:
    """Retire the signing key in `path` and add a new one; returns the new key."""
    server_id, entries = _parse(path) if path.exists() else (_new_server_id(), [])
    now = _now_ms()
    entries = [
        e if e.retired_at_ms is not None else KeyringEntry(e.signer, e.created_at_ms, now)
        for e in entries
    ]
    fresh = KeyringEntry(Signer.generate(), now)
    _write(path, server_id, [*entries, fresh])
    return fresh


class Keyring:
    def __init__(self, server_id: str, entries: list[KeyringEntry], path: Path | None) -> None:
        if not any(e.retired_at_ms is None for e in entries):
            raise KeyringError("no active signing key (every key is retired)")
        self.server_id = server_id
        self.entries = entries
        self.path = path
        self._mtime = path.stat().st_mtime_ns if path is not None else 0

    @classmethod
    def load(cls, path: Path, *, seed_b64: str | None = None) -> Keyring:
        """The key from `seed_b64` (env) if given, else the file at `path`, created if missing."""
        if seed_b64:
            try:
                signer = Signer(base64.b64decode(seed_b64, validate=True))
            except (ValueError, binascii.Error) as exc:
                raise KeyringError(f"${SEED_ENV} is not a base64 32-byte seed: {exc}") from exc
            server_id = os.environ.get(SERVER_ID_ENV) or f"packetbus-{signer.key_id[8:20]}"
            return cls(server_id, [KeyringEntry(signer, _now_ms())], None)
        if not path.exists():
            _write(path, _new_server_id(), [KeyringEntry(Signer.generate(), _now_ms())])
        return cls(*_parse(path), path)

    @property
    def active(self) -> Signer:
        return next(e.signer for e in reversed(self.entries) if e.retired_at_ms is None)

    def reload_if_changed(self) -> bool:
        """Pick up a rotation made by `packetbus keys rotate`; True when the keys changed."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        _, entries = _parse(self.path)
        if not any(e.retired_at_ms is None for e in entries):
            raise KeyringError(f"{self.path}: no active signing key")
        self.entries, self._mtime = entries, mtime
        return True
