"""Who is calling, and what they may do: the door every RPC passes.

- `principal`: the authenticated caller of the running call (`caller()`).
- `permissions`: the permissions, and the one table that says which one each RPC
  needs on which resource.
- `gate`: authenticates a call, authorizes it against that table, and keeps the
  caller for the rest of the call; services ask it (`require`, `allows`) for what
  only they can see (each packet of a batch, each message of a stream).

A call is authenticated by the first authenticator that finds its credential (a
bearer token, the client certificate of mutual TLS, or a trusted sidecar's
identity header); authorized by the `[authorization]` section of the policy file.
With neither configured (a server on loopback, the README's two commands) every
call is the local principal and everything is allowed, as before.

Where each step happens:

- TLS and the client certificate's check: `.._tls` (the handshake, before any
  call); a server exposed without them refuses to start: `.._exposure`.
- Authenticated: `gate.Gate.admit`, called before every servicer method by
  `.._handlers` (`add_servicer(..., gate=gate)`); the authenticators, in the order
  tried, come from `setup.authenticators`: `jwt_tokens` (keys: `jwt_keys`),
  `xfcc`, `mtls`; the result is a `principal.Principal`.
- Authorized: also in `gate.Gate.admit`, by the RPC's rule in
  `permissions.RULES` against the policy's `authorization.Authorization`
  (`allows`); rules marked `in_service` are checked by the service itself with
  `gate.require`/`gate.allows` (each packet of a Dispatch batch, each stream
  message; `gate.recheck` judges a stream again as it goes).
- A packet's origin (and every other field naming an agent: author, worker,
  memory agent, inbox) bound to the caller: `binding` (`require_acting`,
  `SenderCheck`, `inbox_refusal`), asking `gate.may_act_as`.
- Custody records the principal: `.._custodian.call_principal` puts the call's
  principal name in each hop the server signs (`CustodyRecord.principal`).
"""

from .gate import Gate, allows, caller, denial, may_act_as, require
from .permissions import Permission
from .principal import LOCAL, Principal, Unauthenticated

__all__ = [
    "LOCAL",
    "Gate",
    "Permission",
    "Principal",
    "Unauthenticated",
    "allows",
    "caller",
    "denial",
    "may_act_as",
    "require",
]
