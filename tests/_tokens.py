"""Real keys and real signed JWTs for tests of bearer tokens (PyJWT, cryptography)."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests._identity import Metadata

ISSUER = "https://issuer.example.org"
AUDIENCE = "packetbus"
SUBJECT = "spiffe://example.org/agent/planner-1"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def jwk(private: PrivateKey, kid: str) -> dict[str, Any]:
    """The public JWK of `private`, named `kid`."""
    public = private.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        fields = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        fields = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        fields = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    return {**fields, "kid": kid}


def pem(private: PrivateKey) -> bytes:
    """The public key of `private` as a PEM file holds it (SubjectPublicKeyInfo)."""
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwks(*entries: tuple[PrivateKey, str]) -> str:
    """A JWKS document of the public keys of `entries` (key, kid)."""
    return json.dumps({"keys": [jwk(key, kid) for key, kid in entries]})


def token(key: PrivateKey, algorithm: str, kid: str | None = None, **claims: Any) -> str:
    """A token signed by `key`: sub, iss, aud and a 5-minute exp unless `claims` say
    otherwise (None: the claim left out)."""
    now = int(time.time())
    body = {"sub": SUBJECT, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def bearer(value: str) -> Metadata:
    """Call metadata carrying `value` as a bearer token."""
    return (("authorization", f"Bearer {value}"),)
