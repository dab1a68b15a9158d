"""ReloadingCredentials without a server: how often it looks at the files, and what
it says about files that cannot be served (gRPC runs its fetcher on every
handshake; see _tls)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trustme

from packetbus_server._tls import ReloadingCredentials, TlsFilesError, TlsPaths
from tests._certs import write_server_cert

# Identity, not storage: one backend (see conftest).
pytestmark = pytest.mark.one_backend


def test_the_files_are_looked_at_once_per_interval(tmp_path: Path) -> None:
    files = write_server_cert(trustme.CA(), tmp_path)
    credentials = ReloadingCredentials(TlsPaths(files.cert, files.key), interval=3600)
    renewed = write_server_cert(trustme.CA(), tmp_path, name="new")
    files.cert.write_bytes(renewed.cert.read_bytes())
    files.key.write_bytes(renewed.key.read_bytes())
    assert credentials.reload_if_changed() is None  # not an hour yet
    eager = ReloadingCredentials(TlsPaths(files.cert, files.key), interval=0)
    assert eager.reload_if_changed() is None  # loaded what is there: nothing new


def test_a_renewal_is_served_and_then_kept(tmp_path: Path) -> None:
    files = write_server_cert(trustme.CA(), tmp_path)
    credentials = ReloadingCredentials(TlsPaths(files.cert, files.key), interval=0)
    renewed = write_server_cert(trustme.CA(), tmp_path, name="new")
    files.cert.write_bytes(renewed.cert.read_bytes())
    files.key.write_bytes(renewed.key.read_bytes())
    assert credentials.reload_if_changed() is not None
    assert credentials.serving.cert_chain == renewed.cert.read_bytes()
    assert credentials.reload_if_changed() is None


def test_a_missing_file_keeps_the_pair_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = write_server_cert(trustme.CA(), tmp_path)
    credentials = ReloadingCredentials(TlsPaths(files.cert, files.key), interval=0)
    served = credentials.serving
    files.key.unlink()
    with caplog.at_level(logging.WARNING, "packetbus.server"):
        for _ in range(3):
            assert credentials.reload_if_changed() is None
    assert credentials.serving is served
    assert [r.getMessage() for r in caplog.records] == [
        f"TLS: key {files.key}: No such file or directory; still serving the previous certificate"
    ]


def test_files_that_do_not_check_fail_the_start(tmp_path: Path) -> None:
    files = write_server_cert(trustme.CA(), tmp_path)
    with pytest.raises(TlsFilesError, match=f"client CA {tmp_path / 'absent'}: No such file"):
        ReloadingCredentials(TlsPaths(files.cert, files.key, tmp_path / "absent"))
