"""A client interceptor that counts calls and their status codes, to observe batching and retries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc


class CountingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.codes: Counter[grpc.StatusCode] = Counter()

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        self.calls[method.decode() if isinstance(method, bytes) else method] += 1
        call = await continuation(client_call_details, request)
        self.codes[await call.code()] += 1
        return call
