"""A channel that adds one bearer token to every call made over another channel.

`Client.with_token` builds a client view over it: same connection, same settings,
each call (unary and streaming) carrying ``authorization: Bearer <token>`` as call
metadata. For a service calling packetbus on behalf of many callers (the A2A
gateway): one gRPC connection, a principal per call, instead of a channel per token.
"""

from __future__ import annotations

from typing import Any

import grpc

from .._security import Token, check_token


class TokenChannel:
    """Wraps `channel`: every multicallable it hands out adds the token to the call's
    metadata (a callable token is asked on every call, as `_BearerToken` does).

    Only what gRPC stubs use is wrapped (the four multicallable factories); the rest
    (close, channel_ready, get_state) goes to `channel`, which this does not own.
    """

    def __init__(self, channel: grpc.aio.Channel, token: Token) -> None:
        self._channel = channel
        self._token = token

    def _metadata(self, given: Any) -> grpc.aio.Metadata:
        token = (self._token() if callable(self._token) else self._token).strip()
        metadata = grpc.aio.Metadata(*(given or ()))
        metadata.add("authorization", f"Bearer {token}")
        return metadata

    def _wrap(self, multicallable: Any) -> Any:
        def call(request: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["metadata"] = self._metadata(kwargs.get("metadata"))
            return multicallable(request, *args, **kwargs)

        return call

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.unary_unary(*args, **kwargs))

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.unary_stream(*args, **kwargs))

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.stream_unary(*args, **kwargs))

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._channel.stream_stream(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def checked(token: Token) -> Token:
    """`token` once it passed `check_token` (ValueError/OSError otherwise)."""
    check_token(token)
    return token
