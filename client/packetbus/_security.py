"""How the client proves who the server is and who it is: TLS, mTLS, bearer tokens.

`TlsSettings` turns a channel into TLS (the server's certificate checked against
a CA; with a certificate and key of its own, the client's for mutual TLS). A
token (a JWT string, or a callable returning a fresh one each call, e.g.
`TokenFile`) is sent as ``authorization: Bearer <token>`` metadata on every call,
streams included, through gRPC call credentials.

Call credentials are sent only over a channel gRPC deems secure: TLS, or a local
connection (`grpc.local_channel_credentials`: a loopback TCP address or a unix
socket, which never leaves the machine). A token with neither TLS nor a local
target is refused before connecting (`channel_credentials` raises ValueError):
a bearer token in clear text over a network is as good as published.

Environment (read when a `ClientConfig` is made without these fields):
PACKETBUS_TLS_CA, PACKETBUS_TLS_CERT, PACKETBUS_TLS_KEY, PACKETBUS_TLS_SERVER_NAME
(any one of them turns TLS on), PACKETBUS_TOKEN (the token itself) and
PACKETBUS_TOKEN_FILE (a file holding it, re-read when it changes).
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

TLS_CA_ENV = "PACKETBUS_TLS_CA"
TLS_CERT_ENV = "PACKETBUS_TLS_CERT"
TLS_KEY_ENV = "PACKETBUS_TLS_KEY"
TLS_SERVER_NAME_ENV = "PACKETBUS_TLS_SERVER_NAME"
TOKEN_ENV = "PACKETBUS_TOKEN"
TOKEN_FILE_ENV = "PACKETBUS_TOKEN_FILE"

# A token: the JWT itself, or a callable that returns the one to send now.
Token = str | Callable[[], str]


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS for the connection to the server.

    `ca_file`/`ca_pem`: the CA (PEM) the server's certificate must chain to;
    neither: the system's roots. `cert_file` + `key_file` (or `cert_pem` +
    `key_pem`): the client's own certificate chain and private key, for a server
    that requires mutual TLS; both or neither. `server_name`: the name the server's
    certificate must carry when it differs from the target's host (e.g. a target
    given as an IP address). Files are read on each `Client.connect`, so a renewed
    client certificate is used by the next connection. Raises ValueError on a
    contradictory combination; OSError (from connect) for a file it cannot read.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None
    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    # (The repr below shows no PEM content: a private key never lands in a log.)
    key_pem: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            if getattr(self, f"{name}_file") is not None and getattr(self, f"{name}_pem"):
                raise ValueError(f"TlsSettings: give {name}_file or {name}_pem, not both")
        has_cert = self.cert_file is not None or self.cert_pem is not None
        has_key = self.key_file is not None or self.key_pem is not None
        if has_cert != has_key:
            raise ValueError(
                "TlsSettings: a client certificate needs its key and a key its certificate "
                "(give both cert and key, or neither)"
            )

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials for these settings (files read now)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca_file, self.ca_pem),
            private_key=_pem(self.key_file, self.key_pem),
            certificate_chain=_pem(self.cert_file, self.cert_pem),
        )

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("ca_file", "cert_file", "key_file", "server_name")
            if getattr(self, name) is not None
        )
        pems = [name for name in ("ca_pem", "cert_pem", "key_pem") if getattr(self, name)]
        return f"TlsSettings({shown}{', ' if shown and pems else ''}{', '.join(pems)})"


def _pem(path: str | Path | None, pem: bytes | None) -> bytes | None:
    if pem is not None:
        return pem
    return None if path is None else Path(path).read_bytes()


class TokenFile:
    """A token kept in a file (e.g. one a sidecar rotates): calling it returns the
    file's content, stripped, re-read only when the file's mtime or size changed.

    Raises OSError when the file cannot be read, ValueError when it is empty.
    Thread-safe (gRPC asks for metadata from its own threads).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._token = ""

    def __call__(self) -> str:
        stat = self.path.stat()
        mark = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if mark != self._seen:
                token = self.path.read_text().strip()
                if not token:
                    raise ValueError(f"token file {self.path} is empty")
                self._token, self._seen = token, mark
            return self._token

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"


def tls_from_env() -> TlsSettings | None:
    """TlsSettings from PACKETBUS_TLS_* (None when none of them is set)."""
    ca, cert, key, name = (
        os.environ.get(env) or None
        for env in (TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV, TLS_SERVER_NAME_ENV)
    )
    if ca is None and cert is None and key is None and name is None:
        return None
    return TlsSettings(ca_file=ca, cert_file=cert, key_file=key, server_name=name)


def token_from_env() -> Token | None:
    """PACKETBUS_TOKEN (the token), else PACKETBUS_TOKEN_FILE (a TokenFile), else None."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = os.environ.get(TOKEN_FILE_ENV)
    return TokenFile(path) if path else None


class _BearerToken:  # a grpc.AuthMetadataPlugin (typed Any: not subclassed)
    """Adds ``authorization: Bearer <token>`` to each call; a token callable is
    asked on every call (it caches, if fetching is dear)."""

    def __init__(self, token: Token) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            # Stripped: a token read from a file (open(...).read()) ends in a newline.
            token = (self._token() if callable(self._token) else self._token).strip()
        except Exception as exc:  # the call fails with this (never the token) as its reason
            callback((), ValueError(f"no bearer token: {type(exc).__name__}: {exc}"))
            return
        callback((("authorization", f"Bearer {token}"),), None)


def check_token(token: Token) -> None:
    """Get the token once before connecting, so a missing token file or an empty
    token is said at once (OSError, ValueError) rather than by every call."""
    value = token() if callable(token) else token
    if not isinstance(value, str) or not value.strip():
        raise ValueError("the bearer token is empty")
    if any(ch in value.strip() for ch in "\r\n"):  # what is sent: see _BearerToken
        raise ValueError("the bearer token spans lines: it is not one token")


def channel_credentials(
    target: str, tls: TlsSettings | None, token: Token | None
) -> grpc.ChannelCredentials | None:
    """The credentials of a channel to `target`: None for plain text (no TLS, no
    token); TLS settings' credentials, composed with the token's when there is one;
    a token without TLS: local credentials (loopback or unix socket only).

    Raises ValueError for a token that would go in clear text over a network.
    """
    call = None if token is None else grpc.metadata_call_credentials(_BearerToken(token))
    if tls is not None:
        secure = tls.credentials()
        return secure if call is None else grpc.composite_channel_credentials(secure, call)
    if call is None:
        return None
    kind = local_kind(target)
    if kind is None:
        raise ValueError(
            f"a bearer token is sent only over TLS or to this machine, and {target} is "
            "neither: give TLS settings (--tls-ca / PACKETBUS_TLS_CA) or a loopback target"
        )
    return grpc.composite_channel_credentials(grpc.local_channel_credentials(kind), call)


def local_kind(target: str) -> grpc.LocalConnectionType | None:
    """UDS for a unix socket target, LOCAL_TCP for a loopback address or localhost,
    None for anything else (including a DNS name that may resolve elsewhere)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return grpc.LocalConnectionType.UDS
    host = target
    for scheme in ("ipv4:", "ipv6:", "dns:///", "dns:"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
            break
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() == "localhost":
        return grpc.LocalConnectionType.LOCAL_TCP
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    return grpc.LocalConnectionType.LOCAL_TCP if loopback else None
