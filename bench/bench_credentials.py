"""Credentials the access benchmark makes for one run: a CA, a server certificate for
127.0.0.1 and localhost, a client certificate whose one URI SAN is a SPIFFE ID (what
the server's mutual TLS reads as the principal), and a JWT bearer for the same name.

All are written as PEM files into a directory the caller owns (a temp dir): nothing
outlives the run. Made with `cryptography` (trustme cannot put a URI SAN in a
certificate) and PyJWT, the runtime dependencies the server itself uses.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The caller's identity on the guarded and token servers. Its last path segment is
# dispatch_bench.make_packet's origin: with authorization on, a packet's origin must be
# the caller's agent id (identity binding, _access/binding.py), so the bench sends as itself.
SPIFFE_ID = "spiffe://bench.packetbus.test/agent/bench-researcher-07"
AGENT_ID = "bench-researcher-07"
JWT_ISSUER = "https://issuer.bench.packetbus.test"
JWT_AUDIENCE = "packetbus"
# Long enough for a full run on a slow machine; the key dies with the temp dir anyway.
JWT_LIFETIME = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Credentials:
    """PEM files: a CA, a server certificate (127.0.0.1, localhost) and key, a client
    certificate (URI SAN SPIFFE_ID) and key, a JWT public key; `token`, a JWT for
    SPIFFE_ID signed by that key's private half."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    jwt_public_key: Path
    # A bearer credential: kept out of repr, so no log line or traceback shows it.
    token: str = field(repr=False)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    names: Sequence[x509.GeneralName] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A certificate for `key`; self-signed CA when `issuer` is None, else a leaf
    with `names` as SANs and `usage` as its one extended key usage."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        usage_bits = dict.fromkeys(
            ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"),
            False,
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
                **usage_bits,
            ),
            critical=True,
        )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def make_credentials(directory: Path) -> Credentials:
    """Write a fresh CA, server and client certificates and a JWT key to `directory`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("packetbus bench CA", ca_key, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        "packetbus bench server",
        server_key,
        (ca, ca_key),
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue(
        "packetbus bench client",
        client_key,
        (ca, ca_key),
        [x509.UniformResourceIdentifier(SPIFFE_ID)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    signer = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.UTC)
    # No kid: the server's --jwt-public-key key answers a token that names none.
    token = jwt.encode(
        {
            "sub": SPIFFE_ID,
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "iat": now,
            "exp": now + JWT_LIFETIME,
        },
        signer,
        algorithm="EdDSA",
    )
    files = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem_key(server_key),
        "client.pem": client.public_bytes(serialization.Encoding.PEM),
        "client.key": _pem_key(client_key),
        "jwt-public.pem": signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    return Credentials(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        jwt_public_key=directory / "jwt-public.pem",
        token=token,
    )
