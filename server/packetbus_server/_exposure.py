"""Secure by default: who can reach the port decides what a server must demand.

On loopback (or a Unix socket) only this machine's processes reach the server,
and with no settings it serves them as the README's two commands always have.
Beyond loopback anyone on the network may: then the server must encrypt (TLS)
and know who calls (a client CA, JWT keys, or a trusted mesh header), or the
operator must say ``--insecure`` (like Redis's protected mode, which refuses
outside clients until a password is set or protected mode is turned off).
TLS alone is not enough: it hides the traffic, it does not say who sent it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._app import ServerConfig

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class InsecureListenError(ValueError):
    """The server would listen beyond loopback without TLS and authentication."""


class TlsSettingsError(ValueError):
    """The TLS settings do not go together (a key without a certificate, ...)."""


def is_loopback(listen: str) -> bool:
    """Whether only this machine can reach `listen` ("HOST:PORT", "[V6]:PORT", or a
    gRPC ``unix:`` address). An empty host, 0.0.0.0 and :: are every interface; a
    host name other than localhost may resolve to anything, so it is not."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    if listen.startswith("["):
        host = listen[1:].partition("]")[0]
    elif listen.count(":") > 1:
        # Unbracketed IPv6: gRPC reads it all as the host (port 443), so "::1:5005"
        # is the address ::1:5005 (::0.1.19.149), not ::1 port 5005.
        host = listen
    else:
        host = listen.partition(":")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authenticates(config: ServerConfig) -> bool:
    """Whether `config` names a way to prove who calls."""
    return bool(
        config.tls_client_ca_file is not None
        or config.jwt_jwks_file is not None
        or config.jwt_public_key_files
        or config.trust_xfcc
    )


def tls_settings_problem(config: ServerConfig) -> str | None:
    """Why `config`'s TLS fields do not go together, or None."""
    cert, key = config.tls_cert_file is not None, config.tls_key_file is not None
    if cert != key:
        return "TLS needs both --tls-cert and --tls-key"
    if config.tls_client_ca_file is not None and not cert:
        return "--tls-client-ca needs TLS: give --tls-cert and --tls-key too"
    return None


def exposure_problem(config: ServerConfig) -> str | None:
    """Why `config` must not serve as it is (one line naming the flags), or None."""
    return _grpc_exposure_problem(config) or metrics_exposure_problem(config)


def metrics_exposure_problem(config: ServerConfig) -> str | None:
    """Why `config.metrics_listen` must not serve, or None. Metrics name the
    server's methods, groups and queues, so beyond loopback they are served over
    TLS (the gRPC port's certificate, and its client CA when set) or with
    ``--insecure``; a scraper proves who it is with a client certificate, if any."""
    listen = config.metrics_listen
    if listen is None or config.insecure or is_loopback(listen):
        return None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        return None
    return (
        f"refusing to serve metrics on {listen} (beyond loopback) without TLS: give "
        "--tls-cert and --tls-key (and --tls-client-ca to require a client certificate), "
        "serve them on loopback only, or --insecure"
    )


def _grpc_exposure_problem(config: ServerConfig) -> str | None:
    if config.insecure or is_loopback(config.listen):
        return None
    tls = config.tls_cert_file is not None
    if tls and config.trust_xfcc and config.tls_client_ca_file is None:
        # Beyond loopback anyone could send the header: it is trusted only from a
        # connection whose client certificate proves it is a sidecar.
        return (
            f"refusing to trust x-forwarded-client-cert on {config.listen} (beyond "
            "loopback) from any caller: give --tls-client-ca (the CA of the mesh's "
            "sidecars), listen on loopback only, or --insecure"
        )
    if tls and authenticates(config):
        return None
    missing = "authentication" if tls else "TLS and authentication"
    return (
        f"refusing to listen on {config.listen} (beyond loopback) without {missing}: "
        "give --tls-cert and --tls-key, and a way to authenticate callers "
        "(--tls-client-ca, --jwt-jwks or --jwt-public-key, or --trust-xfcc behind a mesh); "
        "or --insecure to serve anyone who reaches the port"
    )


def require_safe_listen(config: ServerConfig) -> None:
    """Raise TlsSettingsError or InsecureListenError when `config` must not serve."""
    problem = tls_settings_problem(config)
    if problem:
        raise TlsSettingsError(problem)
    problem = exposure_problem(config)
    if problem:
        raise InsecureListenError(problem)
