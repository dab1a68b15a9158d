"""The JSON API: session, caller, agents, governance and carcel routes.

Every answer is a JSON object (errors: `errors`); messages are in protobuf's JSON
mapping (`shapes.as_json`: camelCase keys). State-changing requests (POST,
DELETE) need the header ``X-Packetbus-Console: 1`` (`app.Console.route`).
Parameters named "body or query" are read from a JSON object body, else from the
query string.

- ``POST /api/session`` ``{"token": "<JWT>"}`` -> ``{"caller": Caller}``, sets the
  session cookie. 401 ``UNAUTHENTICATED`` for a value that is not a JWT, an expired
  one, or one the packetbus server refuses (no cookie then); 409
  ``FAILED_PRECONDITION`` when the server authenticates nobody (nothing to sign in to).
- ``DELETE /api/session`` -> ``{"signedOut": bool}`` (whether a session ended);
  clears the cookie.
- ``GET /api/me`` -> ``Caller`` (GetServerInfoResponse.caller: ``principal``,
  ``authenticated``, ``source``, ``agentId``, ``roles``, ``grants``: [{``permission``,
  ``resource``}]).
- ``GET /api/agents?role=&capability=&parentId=&liveness=any|live|stale`` ->
  ``{"agents": [Agent]}`` (every ListAgents page, in id order).
- ``GET /api/held?topic=&limit=`` -> ``{"held": [HeldPacket], "truncated": bool}``
  (oldest first; at most `limit`, 1-1000).
- ``POST /api/held/{tracking_id}/approve`` (body or query: ``topic``, ``note``) ->
  ``{"receipt": Receipt}``; ``POST /api/held/{tracking_id}/deny`` (``topic``,
  ``reason``, required) -> ``{"carcelEntryId": str}``. Signed by the console's
  approver key (``--agent-key``; without one: 409 ``FAILED_PRECONDITION``). Without
  ``topic`` the held packet is looked up (404 when it is not held).
- ``GET /api/policy/stats?topic=`` -> GetPolicyStatsResponse (``byRule``,
  ``byReason``, ``byDecision``: name -> count).
- ``GET /api/carcel?topic=&reason=&limit=`` -> ``{"entries": [CarcelEntry],
  "truncated": bool}``.
- ``GET /api/held/events``, ``/api/policy/stats/events``, ``/api/carcel/events``: the
  three views above, live (same query, plus ``interval``): `live` pushes each as an SSE
  ``snapshot`` event when it changes.
- ``POST /api/carcel/{id}/requeue`` (``topic``; looked up when absent) ->
  ``{"cursor": str}``.
- ``POST /api/carcel/purge`` (``topic`` required, ``reason``) -> ``{"purged": int}``:
  every entry of the topic's carcel, or only those with ``reason``.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from packetbus import Client, PacketbusError

from .app import console_of
from .errors import ApiError, error_response
from .live import json_route, live_route
from .sessions import COOKIE, BadToken, token_expiry
from .shapes import MAX_LIMIT, as_json, body, first, limit, text

_LIVENESS = ("any", "live", "stale")


async def sign_in(request: Request, client: Client) -> Response:
    console = console_of(request)
    doc = await body(request)
    token = doc.get("token")
    if not isinstance(token, str) or not token:
        raise ApiError(400, "INVALID_ARGUMENT", 'the body must be {"token": "<JWT>"}')
    now = time.time()
    try:
        expires_at = token_expiry(token, now)
        view = console.base.with_token(token)
    except BadToken as exc:
        return error_response(401, "UNAUTHENTICATED", str(exc))
    except ValueError as exc:  # with_token: the connection may not carry tokens
        raise ApiError(409, "FAILED_PRECONDITION", str(exc)) from exc
    try:
        info = await view.server_info(timeout=10)
    except PacketbusError as exc:
        if exc.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return error_response(401, "UNAUTHENTICATED", f"packetbus refused: {exc.message}")
        raise
    if not info.caller.authenticated:
        raise ApiError(
            409,
            "FAILED_PRECONDITION",
            "the packetbus server authenticates nobody: use the console without signing in",
        )
    session_id = console.sessions.open(view, expires_at)
    response = JSONResponse({"caller": as_json(info.caller)})
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=max(1, int(expires_at - now)),
        path="/",
        httponly=True,
        samesite="strict",
        secure=console.secure,
    )
    return response


async def sign_out(request: Request, client: Client) -> Response:
    console = console_of(request)
    ended = console.sessions.close(request.cookies.get(COOKIE))
    response = JSONResponse({"signedOut": ended})
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=console.secure
    )
    return response


async def me(request: Request, client: Client) -> Response:
    info = await client.server_info(timeout=10)
    return JSONResponse(as_json(info.caller))


async def agents(request: Request, client: Client) -> Response:
    query = request.query_params
    liveness = query.get("liveness", "any")
    if liveness not in _LIVENESS:
        raise ApiError(400, "INVALID_ARGUMENT", f"liveness must be one of {list(_LIVENESS)}")
    found = await client.list_agents(
        role=query.get("role", ""),
        capability=query.get("capability", ""),
        parent_id=query.get("parentId", ""),
        liveness=liveness,  # type: ignore[arg-type]  # checked above
        timeout=10,
    )
    return JSONResponse({"agents": [as_json(agent) for agent in found]})


async def held(request: Request, client: Client) -> dict[str, Any]:
    found, truncated = await first(
        client.list_held_packets(request.query_params.get("topic", ""), timeout=10), limit(request)
    )
    return {"held": [as_json(packet) for packet in found], "truncated": truncated}


async def _held_topic(client: Client, tracking_id: str) -> str:
    """The topic of held packet `tracking_id`; ApiError 404 when it is not held."""
    seen = 0
    async for packet in client.list_held_packets(timeout=10):
        if packet.packet.packet.tracking_id == tracking_id:
            return packet.topic
        seen += 1
        if seen >= 100 * MAX_LIMIT:
            break
    raise ApiError(404, "NOT_FOUND", f"no held packet {tracking_id!r}: give its topic")


async def _decide(request: Request, client: Client, approve: bool) -> Response:
    console = console_of(request)
    doc = await body(request)
    tracking_id = request.path_params["tracking_id"]
    topic = text(doc, request, "topic")
    note = text(doc, request, "note" if approve else "reason", required=not approve)
    if console.approver is None:
        raise ApiError(
            409,
            "FAILED_PRECONDITION",
            "this console has no approver key: start it with --agent-key",
        )
    topic = topic or await _held_topic(client, tracking_id)
    if approve:
        receipt = await client.approve_packet(
            topic, tracking_id, identity=console.approver, note=note, timeout=10
        )
        return JSONResponse({"receipt": as_json(receipt)})
    entry_id = await client.deny_packet(
        topic, tracking_id, reason=note, identity=console.approver, timeout=10
    )
    return JSONResponse({"carcelEntryId": entry_id})


async def approve(request: Request, client: Client) -> Response:
    return await _decide(request, client, approve=True)


async def deny(request: Request, client: Client) -> Response:
    return await _decide(request, client, approve=False)


async def policy_stats(request: Request, client: Client) -> dict[str, Any]:
    stats = await client.policy_stats(request.query_params.get("topic", ""), timeout=10)
    return as_json(stats)


async def carcel(request: Request, client: Client) -> dict[str, Any]:
    query = request.query_params
    found, truncated = await first(
        client.carcel_entries(query.get("topic", ""), reason=query.get("reason", ""), timeout=10),
        limit(request),
    )
    return {"entries": [as_json(entry) for entry in found], "truncated": truncated}


async def requeue(request: Request, client: Client) -> Response:
    doc = await body(request)
    entry_id = request.path_params["entry_id"]
    topic = text(doc, request, "topic")
    if not topic:
        async for entry in client.carcel_entries(timeout=10):
            if entry.id == entry_id:
                topic = entry.topic
                break
        else:
            raise ApiError(404, "NOT_FOUND", f"no carcel entry {entry_id!r}: give its topic")
    cursor = await client.requeue_carcel_entry(topic, entry_id, timeout=10)
    return JSONResponse({"cursor": cursor})


async def purge(request: Request, client: Client) -> Response:
    doc = await body(request)
    topic = text(doc, request, "topic", required=True)
    reason = text(doc, request, "reason")
    if not reason:
        return JSONResponse({"purged": await client.purge_carcel(topic, timeout=10)})
    ids = [e.id async for e in client.carcel_entries(topic, reason=reason, timeout=10)]
    purged = 0
    for start in range(0, len(ids), MAX_LIMIT):
        purged += await client.purge_carcel(topic, ids[start : start + MAX_LIMIT], timeout=10)
    return JSONResponse({"purged": purged})


ROUTES = (
    ("/api/session", ("POST",), sign_in),
    ("/api/session", ("DELETE",), sign_out),
    ("/api/me", ("GET",), me),
    ("/api/agents", ("GET",), agents),
    ("/api/held", ("GET",), json_route(held)),
    ("/api/held/events", ("GET",), live_route(held)),
    ("/api/held/{tracking_id}/approve", ("POST",), approve),
    ("/api/held/{tracking_id}/deny", ("POST",), deny),
    ("/api/policy/stats", ("GET",), json_route(policy_stats)),
    ("/api/policy/stats/events", ("GET",), live_route(policy_stats)),
    ("/api/carcel", ("GET",), json_route(carcel)),
    ("/api/carcel/events", ("GET",), live_route(carcel)),
    ("/api/carcel/purge", ("POST",), purge),
    ("/api/carcel/{entry_id}/requeue", ("POST",), requeue),
)
