"""GetServerInfo's `caller`: who the running call is and what it may do.

A user interface (the operator console) shows only what its user may use, so the
server says what its authorization gives the caller: the principal, whether a
credential proved it, its roles, and its grants as (permission, resource pattern)
pairs, the permission patterns of the policy expanded to permission names. With
no `[authorization]` section (or for the LOCAL principal of a server without
authentication) every call may do everything: one grant "*" on "*".
"""

from __future__ import annotations

from packetbus.v1 import packet_service_pb2

from .authorization import Authorization
from .gate import authorizer, caller
from .principal import LOCAL

ALL = "*"


def describe_caller() -> packet_service_pb2.Caller:
    """The running call's `Caller` message (LOCAL's, allowed everything, outside a call)."""
    principal = caller() or LOCAL
    judge = authorizer()
    message = packet_service_pb2.Caller(
        principal=principal.name,
        authenticated=principal is not LOCAL,
        source=principal.source,
        agent_id=principal.agent_id,
    )
    if principal is LOCAL or not isinstance(judge, Authorization):
        # No authorization: everything is allowed (gate.Gate.permits).
        message.grants.add(permission=ALL, resource=ALL)
        return message
    seen: set[tuple[str, str]] = set()
    for role in judge.roles_of(principal.name):
        message.roles.append(role)
        for grant in judge.roles[role].grants:
            for permission in sorted(grant.granted):
                for resource in grant.resources:
                    if (permission.value, resource) not in seen:
                        seen.add((permission.value, resource))
                        message.grants.add(permission=permission.value, resource=resource)
    return message
