"""A mesh sidecar's word for who calls: Envoy's ``x-forwarded-client-cert`` header.

Behind a mesh (Envoy, Istio) the sidecar terminates the caller's mutual TLS and
forwards what the caller's certificate said in this header. Anyone who reaches
the server's port directly can write the header too, so it is trusted only when
the operator says so (``--trust-xfcc``): when no one but the sidecar can reach
the port. Without that flag this module is not used and the header means nothing.

The format (Envoy's "x-forwarded-client-cert" header documentation): elements
separated by ``,``, one per proxy that appended one; each element is ``Key=Value``
pairs separated by ``;``; keys ``By``, ``Hash``, ``Cert``, ``Chain``, ``Subject``,
``URI``, ``DNS`` (case-insensitive; ``URI`` and ``DNS`` may repeat); a value holding
``,``, ``;`` or ``=`` is in double quotes (``Subject`` always is). Envoy writes the
subject between the quotes as OpenSSL prints it in RFC 2253 form, whose own
escapes (``\\,``, ``\\"``, ``\\\\``) stay in the value: a backslash only keeps the
next character from ending it, and `common_name` undoes them. Example (Istio)::

    By=spiffe://cluster.local/ns/bus/sa/packetbus;Hash=4f...;Subject="";URI=spiffe://cluster.local/ns/agents/sa/planner

The **last** element is the one the nearest sidecar (ours) appended; the earlier
ones were forwarded from farther away and are not trusted. Its principal is its
SPIFFE ID (a ``URI`` starting ``spiffe://``), else the ``CN`` of its ``Subject``
(RFC 4514 ``CN=a,O=b`` or OpenSSL's ``/O=b/CN=a``); source ``xfcc``. A header that
does not parse, or whose last element names neither, is Unauthenticated
(XFCC_INVALID).
"""

from __future__ import annotations

import grpc

from .principal import Principal, Unauthenticated, default_agent_id

HEADER = "x-forwarded-client-cert"
KEYS = ("by", "hash", "cert", "chain", "subject", "uri", "dns")
REPEATABLE = frozenset({"uri", "dns"})  # a certificate may hold several SANs
# A certificate chain URL-encoded is a few KiB per certificate.
MAX_HEADER_CHARS = 64 * 1024

Element = dict[str, list[str]]  # lower-case key -> its values, in order


class XfccError(ValueError):
    """A header that is not in Envoy's XFCC format; the message says where."""


def parse(header: str) -> list[Element]:
    """The elements of an XFCC header value, first to last. Raises XfccError."""
    if len(header) > MAX_HEADER_CHARS:
        raise XfccError(f"longer than {MAX_HEADER_CHARS} characters")
    elements: list[Element] = []
    element: Element = {}
    at = 0
    while True:
        at = _skip_spaces(header, at)
        equals = header.find("=", at)
        if equals < 0:
            raise XfccError(f"a pair without '=' at character {at}")
        key = header[at:equals].strip().lower()
        if key not in KEYS:
            raise XfccError(f"unknown key {header[at:equals].strip()[:32]!r} at character {at}")
        if key in element and key not in REPEATABLE:
            raise XfccError(f"{key} twice in one element")
        value, at = _value(header, equals + 1)
        element.setdefault(key, []).append(value)
        at = _skip_spaces(header, at)
        if at == len(header):
            elements.append(element)
            return elements
        if header[at] == ",":
            elements.append(element)
            element = {}
        elif header[at] != ";":
            raise XfccError(f"{header[at]!r} after a value at character {at}")
        at += 1


def _skip_spaces(text: str, at: int) -> int:
    # Proxies joining repeated header lines write ", " between them.
    while at < len(text) and text[at] in " \t":
        at += 1
    return at


def _value(text: str, at: int) -> tuple[str, int]:
    """The value starting at `at` (quoted or bare) and where it ends."""
    if at < len(text) and text[at] == '"':
        start = at + 1
        at = start
        while at < len(text):
            char = text[at]
            if char == "\\":
                at += 2  # the escape stays: it is the subject's (RFC 4514), not ours
            elif char == '"':
                return text[start:at], at + 1
            else:
                at += 1
        raise XfccError("a quoted value is not closed")
    end = at
    while end < len(text) and text[end] not in ",;":
        if text[end] == '"':
            raise XfccError(f"a quote inside an unquoted value at character {end}")
        end += 1
    return text[at:end].strip(" \t"), end


def common_name(subject: str) -> str | None:
    """The CN of a subject in RFC 4514 form (``CN=a,O=b``: the first CN, the most
    specific) or OpenSSL's one-line form (``/O=b/CN=a``: the last CN)."""
    if subject.startswith("/"):
        names = [part[3:] for part in subject.split("/") if part[:3].upper() == "CN="]
        return names[-1] if names else None
    for attribute in _rfc4514_attributes(subject):
        kind, _, value = attribute.partition("=")
        if kind.strip().upper() == "CN":
            return value.strip()
    return None


def _rfc4514_attributes(subject: str) -> list[str]:
    """`subject`'s attribute=value strings, split at unescaped ``,`` and ``+``, their
    escapes undone (``\\,``; ``\\2C``, a byte of the value's UTF-8)."""
    parts: list[str] = []
    current = bytearray()
    at = 0
    while at < len(subject):
        char = subject[at]
        if char == "\\" and at + 1 < len(subject):
            pair = subject[at + 1 : at + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                current.append(int(pair, 16))
                at += 3
            else:
                current += subject[at + 1].encode()
                at += 2
        elif char in ",+":
            parts.append(current.decode(errors="replace").strip())
            current = bytearray()
            at += 1
        else:
            current += char.encode(errors="surrogatepass")
            at += 1
    parts.append(current.decode(errors="replace").strip())
    return parts


def principal_of(element: Element) -> Principal:
    """The principal an element names: its SPIFFE ID, else its subject's CN."""
    spiffe = [uri for uri in element.get("uri", []) if uri.startswith("spiffe://")]
    if len(spiffe) > 1:
        raise XfccError("more than one SPIFFE ID in the last element")
    if spiffe:
        name = spiffe[0]
    else:
        subjects = element.get("subject", [])
        name = (common_name(subjects[0]) if subjects else None) or ""
        if not name:
            raise XfccError("the last element names no SPIFFE ID (URI) and no subject CN")
    return Principal(name, "xfcc", default_agent_id(name))


class ForwardedClientCert:
    """The Authenticator of the XFCC header (use only with --trust-xfcc)."""

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal | None:
        """The principal of the header's last element; None without the header.
        Raises Unauthenticated (XFCC_INVALID) for a header that does not parse or
        names no one."""
        values = [value for key, value in context.invocation_metadata() or () if key == HEADER]
        if not values:
            return None
        try:
            if not all(isinstance(value, str) for value in values):
                raise XfccError("not text")
            # Repeated header lines are one list (RFC 9110 5.3), in order.
            elements = parse(",".join(str(value) for value in values))
            return principal_of(elements[-1])
        except XfccError as exc:
            raise Unauthenticated("XFCC_INVALID", f"{HEADER} header: {exc}") from None
