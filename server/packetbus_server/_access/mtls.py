"""Who calls over mutual TLS: the identity in the client certificate.

gRPC has already checked the certificate during the handshake (signed by the
configured client CA, in its validity period; see _tls): here its identity is
only read. The principal is the certificate's SPIFFE ID, its one URI SAN
``spiffe://trust-domain/path`` (SPIFFE X.509-SVID, section 2: "An X.509 SVID MUST
contain exactly one URI SAN"), else its subject common name; source ``mtls``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from .principal import Principal, Unauthenticated, default_agent_id

SOURCE = "mtls"
# gRPC's auth context property holding the peer's leaf certificate (PEM).
PEER_CERT_PROPERTY = "x509_pem_cert"
# Distinct client certificates whose identity is kept parsed (a few hundred
# bytes each): a call costs a dictionary look-up, not an X.509 parse.
CACHED_CERTIFICATES = 4096
# Unauthenticated's reason when a certificate the CA signed names no usable identity.
BAD_IDENTITY = "CERTIFICATE_IDENTITY_INVALID"


@dataclass(frozen=True, slots=True)
class _Identity:
    principal: Principal | None
    problem: str = ""


def _spiffe_problem(uri: str) -> str | None:
    """Why `uri` is not a SPIFFE ID (SPIFFE-ID spec, section 2), or None."""
    parts = urlsplit(uri)
    if not parts.netloc or ":" in parts.netloc or "@" in parts.netloc:
        return "its trust domain is missing or has a port or user info"
    if parts.query or parts.fragment or uri.endswith("/"):
        return "it has a query, a fragment or a trailing '/'"
    return None


@functools.lru_cache(maxsize=CACHED_CERTIFICATES)
def _identity(pem: bytes) -> _Identity:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return _Identity(None, "the client certificate cannot be parsed")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        uris = []
    spiffe = [uri for uri in uris if uri.lower().startswith("spiffe://")]
    if spiffe:
        if len(uris) != 1:
            return _Identity(
                None,
                f"the client certificate has {len(uris)} URI SANs; an X.509-SVID has "
                "exactly one, its SPIFFE ID",
            )
        problem = _spiffe_problem(spiffe[0])
        if problem:
            return _Identity(None, f"the client certificate's SPIFFE ID is not valid: {problem}")
        name = spiffe[0]
    else:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
            return _Identity(
                None,
                "the client certificate has neither a SPIFFE ID URI SAN nor one subject CN",
            )
        name = names[0].value
    expires_at = cert.not_valid_after_utc.timestamp()
    return _Identity(Principal(name, SOURCE, default_agent_id(name), expires_at=expires_at))


class MtlsAuthenticator:
    """The principal of a call's client certificate (an Authenticator)."""

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """The principal the peer's certificate names; None for a call without one
        (plaintext, or TLS without a client certificate). Raises Unauthenticated
        (CERTIFICATE_IDENTITY_INVALID) for a certificate that names none."""
        pems = context.auth_context().get(PEER_CERT_PROPERTY)
        if not pems:
            return None
        found = _identity(pems[0])
        if found.principal is None:
            raise Unauthenticated(BAD_IDENTITY, found.problem)
        return found.principal
