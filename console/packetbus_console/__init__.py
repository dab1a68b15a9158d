"""The operator console's server side (`packetbus console`, extra ``packetbus[console]``).

An HTTP process that is a packetbus *client*: it serves a JSON API (and, later, the
browser front end) and makes every packetbus call through the Python `Client` over
gRPC, never to Redis. A person signs in with a packetbus bearer token (`sessions`);
each API call is then made under that token (`Client.with_token`), so the server
applies that principal's permissions. The routes and their JSON shapes: `api`.
"""

from .app import Console, build_app

__all__ = ["Console", "build_app"]
