"""What a2a-sdk's routes would answer as an internal error or as plain text.

a2a-sdk parses an A2A request body with ``json.loads``: a body of arrays or
objects nested thousands deep (``[[[[...``) makes it raise RecursionError, which
its JSON-RPC and HTTP+JSON routes answer as an internal error (-32603, HTTP 500)
with a traceback in the log. `guard` reads the body first and answers such a
body itself as the parse error it is (JSON-RPC -32700 / HTTP 400
``INVALID_ARGUMENT``, reason ``INVALID_REQUEST``), nothing forwarded; any other body goes on to a2a-sdk
unchanged (replayed from memory: a2a-sdk reads the whole body as well, so memory
is what it was).

`route_error`: Starlette's own 404 (no A2A route) and 405 (wrong method) under
the agent's routes, answered in a2a-sdk's HTTP+JSON error shape
(``{"error": {"code", "status", "message"}}``) instead of Starlette's plain text.
"""

from __future__ import annotations

import json

from a2a.utils.error_handlers import build_rest_error_payload
from a2a.utils.errors import InvalidRequestError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

TOO_DEEP = "the body is not JSON a2a can parse: arrays or objects nested too deeply"


def _too_deep(body: bytes) -> bool:
    """Whether parsing `body` as JSON overflows the parser's recursion (any
    other parse error is a2a-sdk's to answer)."""
    try:
        json.loads(body)
    except RecursionError:
        return True
    except ValueError:
        return False
    return False


async def _read(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole request body, and the messages that carried it (to replay)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # http.disconnect: a2a-sdk sees it too
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


async def guard(scope: Scope, receive: Receive, send: Send, *, jsonrpc: bool) -> Receive | None:
    """For a request with a body: None when it was answered here (too deeply
    nested: see the module docstring), else the `receive` that replays its body.
    `jsonrpc`: the request is for the JSON-RPC route (else HTTP+JSON)."""
    if scope.get("method") not in ("POST", "PUT", "PATCH"):
        return receive
    body, messages = await _read(receive)
    if _too_deep(body):
        if jsonrpc:  # JSON-RPC's parse error (a2a-sdk's helper has no model for it)
            answer = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": TOO_DEEP}}
            response = JSONResponse(answer)
        else:  # HTTP+JSON: as a2a-sdk answers a body it cannot read
            payload = build_rest_error_payload(InvalidRequestError(message=TOO_DEEP))
            response = JSONResponse(payload, status_code=400)
        await response(scope, receive, send)
        return None

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


# HTTP status -> the gRPC status name a2a-sdk's error payloads carry.
_STATUS_NAMES = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}


async def route_error(request: Request, exc: Exception) -> Response:
    """A Starlette HTTPException raised under the agent's routes, as JSON (see
    the module docstring); its headers (a 405's ``Allow``) kept."""
    assert isinstance(exc, HTTPException)
    status = _STATUS_NAMES.get(exc.status_code, "INVALID_ARGUMENT")
    if exc.status_code == 404:
        message = "no such A2A route"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed here"
    else:
        message = str(exc.detail)
    payload = {"error": {"code": exc.status_code, "status": status, "message": message}}
    return JSONResponse(payload, status_code=exc.status_code, headers=exc.headers)
