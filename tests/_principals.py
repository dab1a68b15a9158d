"""Callers with real credentials, for tests of what identity binds (issue 14).

`TokenIssuer` is an Ed25519 key pair: its public key goes to the server as a PEM
file (`jwt_public_key_files`), and it signs a bearer JWT per principal (``sub``
the principal's name, with issuer, audience and a one-hour expiry). The helpers
below read a refusal's google.rpc.ErrorInfo.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.rpc import error_details_pb2, status_pb2

from packetbus.rich_status import status_in

ISSUER = "https://issuer.test"
AUDIENCE = "packetbus"


class TokenIssuer:
    """Signs bearer JWTs the server verifies with the public key in `public_key_file`."""

    def __init__(self, directory: Path) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.public_key_file = directory / "jwt-issuer.pem"
        self.public_key_file.write_bytes(
            self._key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(self, subject: str, *, lifetime_s: int = 3600) -> str:
        now = int(time.time())
        claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now}
        claims["exp"] = now + lifetime_s
        return jwt.encode(claims, self._key, algorithm="EdDSA")

    def metadata(self, subject: str) -> tuple[tuple[str, str], ...]:
        """The call metadata that makes `subject` the caller."""
        return (("authorization", f"Bearer {self.token(subject)}"),)


def error_info(status: status_pb2.Status) -> dict[str, str]:
    """`status`'s ErrorInfo as {"reason": ..., **metadata}; {} when it has none."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return {"reason": info.reason, **info.metadata}
    return {}


def call_error_info(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The ErrorInfo of a failed call's status-details trailer; {} when none."""
    status = status_in(error.trailing_metadata())
    return error_info(status) if status is not None else {}
