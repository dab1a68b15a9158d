"""Strict Ed25519 (RFC 8032 with the checks lax verifiers skip), over libsodium via PyNaCl.

Verification rejects, before any curve arithmetic: signatures that are not
64 bytes, a non-canonical S (S >= L, which lax verifiers reduce mod L and so
accept a second signature for the same message), and small-order public keys
or R points (for which one signature verifies for many messages). libsodium
makes the same checks; they are repeated here so the guarantee does not rest
on the library's version.
"""

from __future__ import annotations

from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
# The order of the Ed25519 base point.
L = 2**252 + 27742317777372353535851937790883648493

# Encodings of the points of order 1, 2, 4 and 8, with the sign bit cleared
# (it is masked before comparing, as libsodium does): 0, 1, the two order-8
# points, p-1, and the non-canonical p and p+1.
_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def is_small_order(point: bytes) -> bool:
    masked = point[:31] + bytes([point[31] & 0x7F])
    return masked in _SMALL_ORDER


def is_canonical_scalar(s: bytes) -> bool:
    return int.from_bytes(s, "little") < L


def public_key_problem(public_key: bytes) -> str | None:
    """Why `public_key` cannot be accepted as a verification key, or None."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        return f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes; got {len(public_key)}"
    if is_small_order(public_key):
        return "a small-order point is not a usable public key"
    # libsodium's check: a canonical encoding (y < p, no "negative zero" x) of a curve
    # point in the prime-order subgroup, as every key RFC 8032 derives is. Anything else
    # would register and then never verify a signature (verify's own decoding refuses
    # it), or, for a mixed-order point, verify under rules other verifiers differ on.
    if not crypto_core_ed25519_is_valid_point(public_key):
        return (
            "not a valid Ed25519 public key: not the canonical encoding of a point of "
            "the prime-order subgroup"
        )
    return None


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True only for a valid, canonical signature by a usable key."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    if not is_canonical_scalar(signature[32:]):
        return False
    if is_small_order(public_key) or is_small_order(signature[:32]):
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


Key = SigningKey  # a derived key pair, for holders to keep (`signing_key`)


def signing_key(seed: bytes) -> Key:
    """`seed`'s key pair. Deriving it is a scalar multiplication
    (crypto_sign_seed_keypair), so a holder that signs often (`_custody.Signer`: the
    server's custody key, an agent's identity) keeps it and signs with `sign_with`."""
    return SigningKey(seed)


def sign_with(key: Key, message: bytes) -> bytes:
    return bytes(key.sign(message).signature)


def sign(seed: bytes, message: bytes) -> bytes:
    return sign_with(SigningKey(seed), message)


def public_key_of(seed: bytes) -> bytes:
    return bytes(SigningKey(seed).verify_key)


def new_seed() -> bytes:
    return bytes(SigningKey.generate())
