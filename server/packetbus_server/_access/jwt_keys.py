"""The public keys bearer tokens are verified with: a JWKS file and PEM files.

Each key decides its one algorithm (RFC 7518 names), never the token's header:

| key | algorithm |
|---|---|
| Ed25519 (JWK ``kty: OKP, crv: Ed25519``) | ``EdDSA`` (RFC 8037) |
| EC P-256 (JWK ``kty: EC, crv: P-256``) | ``ES256`` |
| RSA, at least 2048 bits (JWK ``kty: RSA``) | ``RS256`` |

Any other key (``oct`` secrets, other curves, short RSA keys, private keys) is
not a verification key here: a JWK of that kind is skipped with a warning (an
identity provider's JWKS may hold keys for other uses); a PEM file of that kind
is an error. A JWK that names another ``alg`` than its key's, or ``use`` other
than ``sig``, is skipped too.

JWKS keys are found by their ``kid`` (RFC 7517 4.5). A PEM file carries no key
id: its key is named by its RFC 7638 JWK thumbprint (``packetbus serve`` logs them),
and a token without a ``kid`` is checked against every PEM key.

`KeyFiles` loads the files and reloads one when it changes (its size, mtime and
inode, then its SHA-256, looked at no more often than every `interval` seconds):
a file that no longer loads keeps its previous keys in force and is warned about
once per bad content.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .._file_changes import FileTooLargeError, Mark, read_if_changed

log = logging.getLogger("packetbus.server.access")

# A key file larger than this is refused (a JWKS of hundreds of RSA keys fits).
MAX_KEY_FILE_BYTES = 1 << 20
MIN_RSA_BITS = 2048

VerifyingKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyFileError(ValueError):
    """A key file that cannot be used: unreadable, not JSON/PEM, or without a usable key.
    The message names the file and the problem, never key material."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """One verification key: `algorithm` (EdDSA, ES256 or RS256) is the only one a
    token signed with it may use; `kid` is None for a PEM file's key."""

    key: VerifyingKey
    algorithm: str
    kid: str | None
    origin: str  # the file it came from, for messages


def algorithm_for(key: object) -> str:
    """The one algorithm `key` verifies; ValueError for a key that is not accepted."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        raise ValueError(f"EC curve {key.curve.name} is not accepted (only P-256, ES256)")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"a {key.key_size}-bit RSA key is shorter than {MIN_RSA_BITS} bits")
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("a private key: give the public key only")
    raise ValueError(f"a {type(key).__name__} is not accepted (Ed25519, EC P-256 or RSA)")


def thumbprint(key: VerifyingKey) -> str:
    """The RFC 7638 JWK thumbprint of `key`: base64url (no padding) of the SHA-256 of
    its required JWK members, sorted, without white space."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    required = {
        "OKP": ("crv", "kty", "x"),
        "EC": ("crv", "kty", "x", "y"),
        "RSA": ("e", "kty", "n"),
    }
    members = {name: jwk[name] for name in required[str(jwk["kty"])]}
    digest = hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode())
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def load_pem(path: Path, data: bytes) -> list[PublicKey]:
    """The public key of a PEM file (SubjectPublicKeyInfo, ``BEGIN PUBLIC KEY``)."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"JWT public key {path}: not a PEM public key") from None
    except Exception as exc:  # cryptography's unsupported-algorithm errors
        raise KeyFileError(f"JWT public key {path}: {type(exc).__name__}") from None
    try:
        algorithm = algorithm_for(key)
    except ValueError as exc:
        raise KeyFileError(f"JWT public key {path}: {exc}") from None
    return [PublicKey(key, algorithm, None, str(path))]  # type: ignore[arg-type]


def load_jwks(path: Path, data: bytes) -> list[PublicKey]:
    """The signing keys of a JWKS file (RFC 7517 5: ``{"keys": [JWK, ...]}``), each
    with a ``kid``; unusable keys are skipped with a warning, two with one ``kid``
    (which would make a token's key ambiguous) are an error."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"JWKS {path}: not JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFileError(f'JWKS {path}: not a JWK set (an object with a "keys" list)')
    found: list[PublicKey] = []
    skipped: list[str] = []
    for index, jwk in enumerate(document["keys"]):
        try:
            found.append(_jwk_key(jwk, str(path)))
        except ValueError as exc:
            skipped.append(f"key {index}: {exc}")
    kids = [key.kid for key in found]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1 and kid is not None})
    if duplicates:
        raise KeyFileError(f"JWKS {path}: more than one key with kid {duplicates[0]!r}")
    if not found:
        why = f" ({'; '.join(skipped[:3])})" if skipped else ""
        raise KeyFileError(f"JWKS {path}: no usable signing key (Ed25519, EC P-256, RSA){why}")
    for reason in skipped:
        log.warning("JWKS %s: %s: skipped", path, reason)
    return found


def _jwk_key(jwk: Any, origin: str) -> PublicKey:
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError('no "kid": a token could not name it')
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"kid {kid!r}: use {jwk.get('use')!r} is not sig")
    if "d" in jwk or "k" in jwk:
        raise ValueError(f"kid {kid!r}: a private or secret key: give public keys only")
    try:
        key = jwt.PyJWK(jwk).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ValueError(f"kid {kid!r}: {exc}") from None
    algorithm = algorithm_for(key)
    named = jwk.get("alg")
    if named is not None and named != algorithm:
        raise ValueError(f"kid {kid!r}: alg {named!r} is not {algorithm}, its key's")
    return PublicKey(key, algorithm, kid, origin)


class _WatchedFile:
    """One key file and the keys it last loaded."""

    def __init__(self, path: Path, is_jwks: bool) -> None:
        self.path = path
        self.is_jwks = is_jwks
        self.name = f"JWKS {path}" if is_jwks else f"JWT public key {path}"
        self.keys: list[PublicKey] = []
        self._seen: Mark | None = None
        self._digest = b""
        self._warned = b""

    def load(self) -> bool:
        """Read the file if it changed; True when its keys changed. KeyFileError for
        a file that cannot be used (the keys in force stay)."""
        try:
            found = read_if_changed(self.path, self._seen, MAX_KEY_FILE_BYTES)
        except FileTooLargeError as exc:
            raise KeyFileError(f"{self.name}: {exc}") from None
        except OSError as exc:
            raise KeyFileError(f"{self.name}: {exc.strerror or exc}") from None
        if found is None:
            return False
        seen, data = found
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            self._seen = seen
            return False
        keys = load_jwks(self.path, data) if self.is_jwks else load_pem(self.path, data)
        self._seen, self._digest, self.keys = seen, digest, keys
        return True

    def reload(self) -> bool:
        """`load`, a failure warned about (once per bad content) instead of raised."""
        try:
            return self.load()
        except KeyFileError as exc:
            mark = hashlib.sha256(str(exc).encode()).digest()
            if mark != self._warned:
                self._warned = mark
                log.warning("%s; the keys loaded before stay in force", exc)
            return False


class KeyFiles:
    """The verification keys of a JWKS file and PEM files, kept current.

    `by_kid`: every key by its name (a JWKS key's kid, a PEM key's thumbprint);
    `without_kid`: the PEM keys, for tokens that name none. `generation` grows by
    one whenever a reload changes the keys, so what was verified with the previous
    keys (a cached token) can tell it is stale."""

    def __init__(
        self, jwks_file: Path | None, pem_files: Sequence[Path], *, interval: float = 1.0
    ) -> None:
        self._files = [_WatchedFile(path, False) for path in pem_files]
        if jwks_file is not None:
            self._files.insert(0, _WatchedFile(jwks_file, True))
        self._interval = interval
        self._checked = -float("inf")
        self.generation = 0
        self.by_kid: dict[str, PublicKey] = {}
        self.without_kid: tuple[PublicKey, ...] = ()

    @classmethod
    def load(
        cls, jwks_file: Path | None, pem_files: Sequence[Path], *, interval: float = 1.0
    ) -> KeyFiles:
        """Load every file now; KeyFileError (a ValueError) for the first that cannot be
        used: a bad key file fails the start."""
        keys = cls(jwks_file, pem_files, interval=interval)
        for watched in keys._files:
            watched.load()
        keys._index()
        keys._checked = time.monotonic()
        return keys

    def refresh(self) -> None:
        """Reload the files that changed, at most every `interval` seconds (a call
        between costs one clock read)."""
        now = time.monotonic()
        if now - self._checked < self._interval:
            return
        self._checked = now
        changed = False
        for watched in self._files:
            changed = watched.reload() or changed
        if changed:
            self._index()
            self.generation += 1
            log.info("JWT keys reloaded: %s", self.describe())

    def describe(self) -> str:
        """The keys in force, for a log line: kid and algorithm, no key material."""
        named = [
            f"{kid} ({key.algorithm}{', ' + key.origin if key.kid is None else ''})"
            for kid, key in self.by_kid.items()
        ]
        return ", ".join(named) or "none"

    def _index(self) -> None:
        by_kid: dict[str, PublicKey] = {}
        without_kid: list[PublicKey] = []
        for watched in self._files:
            for key in watched.keys:
                if key.kid is None:
                    without_kid.append(key)
                    by_kid.setdefault(thumbprint(key.key), key)
                else:
                    by_kid[key.kid] = key
        self.by_kid, self.without_kid = by_kid, tuple(without_kid)
