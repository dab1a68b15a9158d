"""The server's TLS: its certificate files, checked, and reloaded while it serves.

`load_tls_files` reads a certificate chain, its private key and an optional client
CA (PEM files) and checks them: each parses, the key is the first certificate's
(a half-written renewal would otherwise serve a pair no client can verify). It
raises `TlsFilesError` (a ValueError) with one line naming the file.

`ReloadingCredentials` gives gRPC `dynamic_ssl_server_credentials` whose fetcher
(run by gRPC before each TLS handshake) reads the files again at most once per
`interval` seconds and, when their bytes changed, serves the new pair (and the new
client CA) to new connections without a restart. A new pair that does not check
keeps the old one in service and logs a warning once per content (file names and
the reason only: never a key's bytes).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

log = logging.getLogger("packetbus.server")

# The fetcher runs on every handshake: reading three small files at most this
# often keeps a burst of new connections cheap and a renewal seen within a second.
RELOAD_INTERVAL_SECONDS = 1.0


class TlsFilesError(ValueError):
    """The TLS files cannot be served: missing, unreadable, not PEM, or a key that
    is not the certificate's. The message names the file, never its contents."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The bytes of one checked set of TLS files (PEM)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.cert_chain)], root_certificates=self.client_ca
        )


@dataclass(frozen=True, slots=True)
class TlsPaths:
    """Where the server's TLS files are (ServerConfig's tls_* fields)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        ca = None if self.client_ca is None else _read(self.client_ca, "client CA")
        return _read(self.cert, "certificate"), _read(self.key, "key"), ca


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"{what} {path}: {exc.strerror or exc}") from None


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFilesError(f"{what} {path}: not a PEM certificate") from None
    return found


_PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


def _public_bytes(key: object) -> bytes | None:
    if not isinstance(key, _PublicKey):
        return None
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_tls_files(
    cert_chain: bytes, private_key: bytes, client_ca: bytes | None, paths: TlsPaths
) -> TlsFiles:
    """`TlsFiles` of these bytes once they check; raises TlsFilesError."""
    leaf = _certificates(cert_chain, paths.cert, "certificate")[0]
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError):
        # TypeError: an encrypted key (no password can be given to a server).
        raise TlsFilesError(
            f"key {paths.key}: not an unencrypted PEM private key (PKCS#8 or traditional)"
        ) from None
    mine = _public_bytes(key.public_key())
    if mine is None or mine != _public_bytes(leaf.public_key()):
        raise TlsFilesError(
            f"key {paths.key} is not the key of certificate {paths.cert} (its first certificate)"
        )
    if client_ca is not None and paths.client_ca is not None:
        _certificates(client_ca, paths.client_ca, "client CA")
    return TlsFiles(cert_chain, private_key, client_ca)


def load_tls_files(paths: TlsPaths) -> TlsFiles:
    """Read and check the files at `paths`; raises TlsFilesError."""
    return check_tls_files(*paths.read(), paths)


class ReloadingCredentials:
    """The server credentials of `paths`, renewed from the files while serving.

    Loads the files at once (TlsFilesError when they do not check, so a bad
    setting fails the start). With a client CA every client must present a
    certificate it signed (mutual TLS)."""

    def __init__(self, paths: TlsPaths, *, interval: float = RELOAD_INTERVAL_SECONDS) -> None:
        self._paths = paths
        self._interval = interval
        self._serving = load_tls_files(paths)
        # The contents last refused (checked once, not at every look) and the
        # last warning (logged once, not every second while a file is missing).
        self._refused: tuple[bytes, bytes, bytes | None] | None = None
        self._warned: tuple[object, str] | None = None
        self._next_check = time.monotonic() + interval
        # gRPC calls the fetcher from its own threads.
        self._lock = threading.Lock()

    @property
    def serving(self) -> TlsFiles:
        """The files new connections are served with."""
        return self._serving

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._serving.configuration(),
            self._fetch,
            require_client_authentication=self._paths.client_ca is not None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate configuration fetcher: a new configuration, or None
        to keep the one in service. Never raises (gRPC would only log it)."""
        try:
            return self.reload_if_changed()
        except Exception:  # a bug here must not fail every handshake
            log.exception("TLS: checking the certificate files failed; serving the old ones")
            return None

    def reload_if_changed(self) -> grpc.ServerCertificateConfiguration | None:
        """The configuration of the files' new contents when they changed and check
        (at most one look per interval); else None."""
        with self._lock:
            now = time.monotonic()
            if now < self._next_check:
                return None
            self._next_check = now + self._interval
            try:
                found = self._paths.read()
            except TlsFilesError as exc:  # mid-rename, or removed: keep serving
                self._warn_once(None, str(exc))
                return None
            serving = self._serving
            if found == (serving.cert_chain, serving.private_key, serving.client_ca):
                self._warned = None
                return None
            if found == self._refused:
                return None
            try:
                renewed = check_tls_files(*found, self._paths)
            except TlsFilesError as exc:
                self._refused = found
                self._warn_once(found, str(exc))
                return None
            self._serving, self._refused, self._warned = renewed, None, None
        log.info("TLS: new certificate files loaded from %s", self._paths.cert)
        return renewed.configuration()

    def _warn_once(self, found: object, reason: str) -> None:
        if self._warned == (found, reason):
            return
        self._warned = (found, reason)
        log.warning("TLS: %s; still serving the previous certificate", reason)
