"""_file_changes.read_if_changed: the one way the server notices that a file it
reloads (the policy, JWT key files) changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from packetbus_server._file_changes import FileTooLargeError, read_if_changed


def test_a_file_is_read_again_only_when_it_changed(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"one")
    first = read_if_changed(path, None, 100)
    assert first is not None
    mark, data = first
    assert data == b"one"
    assert read_if_changed(path, mark, 100) is None  # one stat, no read
    # Replaced by a rename with the same size and mtime: another inode, read again.
    other = tmp_path / "new.toml"
    other.write_bytes(b"two")
    os.utime(other, ns=(mark[0], mark[0]))
    other.replace(path)
    second = read_if_changed(path, mark, 100)
    assert second is not None
    assert second[1] == b"two"
    assert second[0] != mark


def test_a_file_over_the_bound_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(b"x" * 101)
    with pytest.raises(FileTooLargeError, match="larger than 100 bytes"):
        read_if_changed(path, None, 100)
    with pytest.raises(FileNotFoundError):
        read_if_changed(tmp_path / "missing", None, 100)
