"""The authenticators a server's settings ask for, in the order the gate tries them.

Order: a bearer token first (a call that carries one means it, even over mTLS),
then a trusted sidecar's XFCC header (behind a mesh the connection's client
certificate is the sidecar's own: the header names the caller behind it), then
the client certificate of mutual TLS. The first that finds its credential
decides; none configured: every call is the local principal (see gate.Gate).
Beyond loopback the header is trusted only together with mutual TLS, so only a
sidecar holding a certificate of the client CA can send it (see _exposure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .jwt_keys import KeyFiles, log
from .jwt_tokens import BearerTokens
from .mtls import MtlsAuthenticator
from .principal import Authenticator
from .xfcc import ForwardedClientCert

if TYPE_CHECKING:
    from .._app import ServerConfig


def bearer_tokens(config: ServerConfig) -> BearerTokens | None:
    """The JWT authenticator of `config`'s key files, or None when it names none.
    Raises ValueError for an issuer or audience missing, or a key file that cannot
    be used (a bad setting fails the start)."""
    if config.jwt_jwks_file is None and not config.jwt_public_key_files:
        return None
    if not config.jwt_issuer or not config.jwt_audience:
        raise ValueError("JWT keys need --jwt-issuer and --jwt-audience")
    keys = KeyFiles.load(
        config.jwt_jwks_file,
        config.jwt_public_key_files,
        interval=config.limits.policy_reload_seconds,
    )
    log.info(
        "bearer JWTs accepted from issuer %r for audience %r, signed by: %s",
        config.jwt_issuer,
        config.jwt_audience,
        keys.describe(),
    )
    return BearerTokens(keys, issuer=config.jwt_issuer, audience=config.jwt_audience)


def authenticators(config: ServerConfig) -> list[Authenticator]:
    """The authenticators `config` asks for, in the order they are tried."""
    found: list[Authenticator] = []
    tokens = bearer_tokens(config)
    if tokens is not None:
        found.append(tokens)
    if config.trust_xfcc:
        found.append(ForwardedClientCert())
    if config.tls_client_ca_file is not None:
        # Mutual TLS: the handshake already refused a certificate the client CA
        # did not sign; this names the caller from the one it accepted.
        found.append(MtlsAuthenticator())
    return found
