"""A2A agent cards built from packetbus's agent registry, and their HTTP answer.

One card per registered agent: name = the agent id, description from its role,
one skill per capability, and its interfaces at the gateway: JSON-RPC at
``<base>/agents/<id>/`` and HTTP+JSON at ``<base>/agents/<id>/rest`` (`<id>`
percent-encoded; no tenant: the path names the agent), and, when the gateway
serves gRPC, gRPC at ``host:port`` with tenant = the agent id (a2a-sdk's client
puts an interface's tenant in every request). Streaming is on; push
notifications are absent (the gateway refuses them). With ``require_auth`` a
card declares one HTTP bearer security scheme (``bearer``, format JWT) and
requires it.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from packetbus.v1 import agent_service_pb2

AGENTS_PREFIX = "/agents/"
REST_SUFFIX = "/rest"
CARD_PATH = "/.well-known/agent-card.json"
# Cards change when an agent registers again with other capabilities: a short
# max-age, and an ETag so a client revalidates for the price of a 304.
CACHE_CONTROL = "public, max-age=60"
BEARER_SCHEME = "bearer"  # the card's name for its HTTP bearer security scheme


def agent_base_url(base_url: str, agent_id: str) -> str:
    """The gateway's URL for `agent_id` (no trailing slash)."""
    return base_url.rstrip("/") + AGENTS_PREFIX + quote(agent_id, safe="")


def build_card(
    agent: agent_service_pb2.Agent,
    base_url: str,
    grpc_address: str = "",
    *,
    require_auth: bool = False,
) -> AgentCard:
    """The A2A card for one registered agent, served by the gateway at `base_url`
    (HTTP) and, unless "", at `grpc_address` (``host:port``, gRPC); `require_auth`:
    the card requires an HTTP bearer token (a packetbus JWT)."""
    url = agent_base_url(base_url, agent.id)
    role = agent.role or "agent"
    interfaces = [
        AgentInterface(
            url=url + "/",
            protocol_binding=TransportProtocol.JSONRPC.value,
            protocol_version=PROTOCOL_VERSION_CURRENT,
        ),
        AgentInterface(
            url=url + REST_SUFFIX,
            protocol_binding=TransportProtocol.HTTP_JSON.value,
            protocol_version=PROTOCOL_VERSION_CURRENT,
        ),
    ]
    if grpc_address:
        interfaces.append(
            AgentInterface(
                url=grpc_address,
                protocol_binding=TransportProtocol.GRPC.value,
                tenant=agent.id,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            )
        )
    card = AgentCard(
        name=agent.id,
        description=f"packetbus agent {agent.id} ({role}), reached through its inbox",
        version="1.0",
        supported_interfaces=interfaces,
        # push_notifications left unset: absent from the card, not false.
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id=capability,
                name=capability,
                description=f"{role}: {capability}",
                tags=[capability, role],
            )
            for capability in agent.capabilities
        ],
    )
    if require_auth:
        card.security_schemes[BEARER_SCHEME].CopyFrom(
            SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer",
                    bearer_format="JWT",
                    description="a JWT the packetbus server accepts; calls are made as its sub",
                )
            )
        )
        requirement = SecurityRequirement()
        requirement.schemes[BEARER_SCHEME].CopyFrom(StringList())
        card.security_requirements.append(requirement)
    return card


def card_response(card: AgentCard, request: Request) -> Response:
    """`card` as JSON with Cache-Control and a strong ETag; 304 when If-None-Match hits."""
    body = agent_card_to_dict(card)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    headers = {"ETag": f'"{digest}"', "Cache-Control": CACHE_CONTROL}
    asked = [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]
    if headers["ETag"] in asked or "*" in asked:
        return Response(status_code=304, headers=headers)
    return JSONResponse(body, headers=headers)
