"""Bearer tokens: ``authorization: Bearer <JWT>`` call metadata (RFC 6750 2.1).

A token is accepted when (RFC 7519, checked by PyJWT):

- its signature verifies with a configured public key (see `jwt_keys`: the key its
  ``kid`` names, or without a ``kid`` each PEM key) under that key's one algorithm
  (EdDSA, ES256 or RS256): the header's ``alg`` must name it, so ``none`` or
  ``HS256`` with a public key as its secret never verifies;
- it has ``sub``, ``exp``, ``iss`` and ``aud``; ``iss`` is the configured issuer,
  ``aud`` is or contains the configured audience;
- ``exp`` is not past and ``nbf``/``iat`` are not ahead, each allowed `LEEWAY_SECONDS`
  of clock difference between the issuer and this server (wall clock).

The principal is the token's ``sub`` (source ``jwt``). A refusal is Unauthenticated
with an ErrorInfo reason (TOKEN_EXPIRED, TOKEN_NOT_YET_VALID, TOKEN_INVALID,
TOKEN_WRONG_AUDIENCE, TOKEN_WRONG_ISSUER, TOKEN_UNKNOWN_KEY) and a message that
never holds the token.

Verifying costs ~0.1-1 ms (RS256 more than EdDSA); an agent sends the same token
on every call until it renews it, so a verified token is kept (a bounded LRU keyed
by the SHA-256 of its authorization header) until it expires or the keys are
reloaded: a call with a kept token costs one hash and one dict look-up (~2 µs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections import OrderedDict
from typing import Any

import grpc
import jwt

from .jwt_keys import KeyFiles, PublicKey
from .principal import Principal, Unauthenticated, default_agent_id

# Clock difference allowed between the token's issuer and this server, on exp,
# nbf and iat (as most verifiers allow: Envoy's jwt_authn and Istio use 60 s).
LEEWAY_SECONDS = 30
# Verified tokens kept; beyond this the least recently used is forgotten.
CACHE_ENTRIES = 4096
# A longer authorization value is no token this server issued a key for.
MAX_TOKEN_CHARS = 16 * 1024
MAX_SUBJECT_CHARS = 1024
REQUIRED_CLAIMS = ("sub", "exp", "iss", "aud")
MAX_EXP = 253_402_300_800  # 10000-01-01T00:00:00Z, in seconds since the epoch

# RFC 6750 2.1: the scheme is case-insensitive; a JWS compact serialization is three
# base64url parts (RFC 7515 7.1).
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated("TOKEN_INVALID", message)


def _shown(value: object) -> str:
    """An attacker-chosen header value (alg, kid) as a message may show it: short."""
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The call's ``authorization`` metadata value; None without one. Raises
    Unauthenticated (TOKEN_INVALID) for more than one."""
    values = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise _invalid("more than one authorization header")
    value = values[0]
    if not isinstance(value, str) or len(value) > MAX_TOKEN_CHARS + 8:
        raise _invalid("the authorization header is not 'Bearer <JWT>' of a usual size")
    return value


def bearer_token(value: str) -> str:
    """The JWT of an ``authorization`` value ``Bearer <JWT>``. Raises Unauthenticated
    (TOKEN_INVALID) for a value that is not one bearer JWT."""
    match = _BEARER.fullmatch(value.strip())
    if match is None:
        raise _invalid("the authorization header is not 'Bearer <JWT>' (a JWS compact token)")
    return match.group(1)


class BearerTokens:
    """The Authenticator of bearer JWTs signed by `keys`, for `issuer` and `audience`."""

    def __init__(
        self,
        keys: KeyFiles,
        *,
        issuer: str,
        audience: str,
        leeway: float = LEEWAY_SECONDS,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._cache_entries = cache_entries
        # SHA-256 of an authorization value -> (its principal, the wall time it is good
        # until, the key generation it was verified with)
        self._cache: OrderedDict[bytes, tuple[Principal, float, int]] = OrderedDict()

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """The principal of the call's bearer token; None when it has none.
        Raises Unauthenticated for a token that is not good."""
        value = authorization(context)
        if value is None:
            return None
        self.keys.refresh()
        # Looked up before the value is even parsed: it was, before it was kept.
        digest = hashlib.sha256(value.encode(errors="surrogatepass")).digest()
        kept = self._cache.get(digest)
        if kept is not None:
            principal, until, generation = kept
            if generation == self.keys.generation and time.time() < until:
                self._cache.move_to_end(digest)
                return principal
            del self._cache[digest]
        principal, until = self._verify(bearer_token(value))
        self._cache[digest] = (principal, until, self.keys.generation)
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        """The principal of `token` and the wall time (s) it is good until."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("not a JWT: its header does not decode") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid("the token's kid is not a string")
        candidates = self._candidates(kid)
        matching = [key for key in candidates if key.algorithm == algorithm]
        if not matching:
            accepted = " or ".join(sorted({key.algorithm for key in candidates}))
            raise _invalid(f"the token's alg {_shown(algorithm)} is not its key's ({accepted})")
        for key in matching:
            try:
                claims = self._decode(token, key)
            except jwt.InvalidSignatureError:
                continue  # another PEM key may have signed it
            principal = self._principal(claims)  # checks exp is a number
            until = float(claims["exp"]) + self._leeway
            return dataclasses.replace(principal, expires_at=until), until
        raise _invalid("the token's signature does not verify with its key")

    def _candidates(self, kid: str | None) -> list[PublicKey]:
        """The keys that may have signed a token naming `kid`: the one it names, or
        for none every PEM key. Raises Unauthenticated (TOKEN_UNKNOWN_KEY)."""
        keys = self.keys
        if kid is None:
            if keys.without_kid:
                return list(keys.without_kid)
            raise Unauthenticated(
                "TOKEN_UNKNOWN_KEY",
                "the token names no key (no kid) and every configured key has a kid",
            )
        key = keys.by_kid.get(kid)
        if key is None:
            raise Unauthenticated(
                "TOKEN_UNKNOWN_KEY",
                f"the token's kid {_shown(kid)} names no configured key (a JWKS kid, or a "
                "PEM key's RFC 7638 thumbprint)",
            )
        return [key]

    def _decode(self, token: str, key: PublicKey) -> dict[str, Any]:
        """The claims of `token`, its signature verified by `key` first, then its
        claims; raises Unauthenticated for every failure but a bad signature."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.InvalidSignatureError:
            raise
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                "TOKEN_EXPIRED", f"the token has expired (exp, {self._leeway:g} s leeway)"
            ) from None
        except jwt.ImmatureSignatureError as exc:
            claim = "iat" if "iat" in str(exc) else "nbf"
            raise Unauthenticated(
                "TOKEN_NOT_YET_VALID",
                f"the token is not valid yet ({claim}, {self._leeway:g} s leeway)",
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "TOKEN_WRONG_AUDIENCE",
                f"the token's audience (aud) does not include {self._audience!r}",
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                "TOKEN_WRONG_ISSUER", f"the token's issuer (iss) is not {self._issuer!r}"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the token has no {exc.claim} claim") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # Malformed parts or claims; PyJWT's words may quote the payload.
            raise _invalid(f"the token is malformed ({type(exc).__name__})") from None
        return claims

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_CHARS:
            raise _invalid(f"the token's sub is not a name of 1-{MAX_SUBJECT_CHARS} characters")
        exp = claims["exp"]
        # A JSON number may be any size: 1e400 is no float (OverflowError, which
        # would end the call UNKNOWN), and no token lives past the year 10000.
        if not isinstance(exp, int | float) or isinstance(exp, bool) or not 0 < exp < MAX_EXP:
            raise _invalid("the token's exp is not a time (seconds since 1970, before 10000)")
        return Principal(subject, "jwt", default_agent_id(subject))
