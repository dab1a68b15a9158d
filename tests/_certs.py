"""Certificates made in the test: CAs and server certificates from trustme, client
certificates with the identities mTLS reads (SPIFFE ID URI SANs, a subject CN),
which trustme cannot put in a certificate, signed by a trustme CA with cryptography."""

from __future__ import annotations

import datetime
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerFiles:
    """A server certificate chain and key written as PEM files (ServerConfig's tls_*)."""

    cert: Path
    key: Path


def write_server_cert(ca: trustme.CA, directory: Path, *, name: str = "server") -> ServerFiles:
    """A certificate `ca` issues for 127.0.0.1 and localhost (subject CN `name`),
    written to DIRECTORY/NAME.crt and NAME.key; replaces files of the same name."""
    issued = ca.issue_cert("127.0.0.1", "localhost", common_name=name)
    files = ServerFiles(directory / f"{name}.crt", directory / f"{name}.key")
    files.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    files.key.write_bytes(issued.private_key_pem.bytes())
    return files


@dataclass(frozen=True)
class ClientCert:
    """A client certificate (PEM) and its key, as grpc.ssl_channel_credentials takes them."""

    cert: bytes
    key: bytes


def client_cert(
    ca: trustme.CA,
    *,
    common_name: str | None = None,
    uris: tuple[str, ...] = (),
    lifetime: datetime.timedelta = datetime.timedelta(days=1),
) -> ClientCert:
    """A client certificate signed by `ca` with subject CN `common_name` (none when
    None) and `uris` as its URI SANs (no SAN extension when empty), valid from 5
    minutes ago for `lifetime` from now."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            # RFC 5280 4.2.1.6: critical when the subject is empty.
            critical=common_name is None,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return ClientCert(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def served_certificate(port: int, *cas: trustme.CA) -> x509.Certificate:
    """The certificate a TLS server on 127.0.0.1:`port` presents to a new connection
    (verified against `cas`), read with Python's ssl (ALPN h2, as gRPC offers)."""
    context = ssl.create_default_context()
    for ca in cas:
        ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
