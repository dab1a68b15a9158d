"""grpc.health.v1 and server reflection (v1 and v1alpha), served like packetbus's own services.

The stock ``add_*Servicer_to_server`` helpers parse requests with ``FromString``:
bytes that do not parse surface as UNKNOWN. Registered through
`_handlers.add_servicer`, they get INVALID_ARGUMENT like every other method.
The stock health servicer also leaves ``List`` unimplemented (UNIMPLEMENTED
and an ERROR traceback in the log for a valid call); it is implemented here.
Health ``Watch`` streams and reflection streams are admitted and drained by
`_streams.Streams` like packetbus's own streams.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from . import _reflection_v1
from ._handlers import add_servicer
from ._streams import HEALTH_WATCH, Streams


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # untyped stock class
    """The stock asyncio health servicer, with ``List``; its Watch streams are
    admitted and ended on drain by `streams` (None: not counted)."""

    def __init__(self, streams: Streams | None = None) -> None:
        super().__init__()
        self._streams = streams

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """As the stock Watch (statuses written with context.write), inside a slot."""
        if self._streams is None:
            await super().Watch(request, context)
        else:
            await self._streams.call(HEALTH_WATCH, context, super().Watch(request, context))

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service whose status was set, with that status (a snapshot)."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in list(self._server_status.items())
            }
        )


def add_health_and_reflection(
    server: grpc.aio.Server,
    health_servicer: HealthServicer,
    streams: Streams | None,
    service_names: Iterable[str],
) -> None:
    """Serve health (`health_servicer`, which admits its own Watch streams) and
    reflection v1 and v1alpha over `service_names` (both reflection services are
    added to them), its streams admitted by `streams`."""
    names = (*service_names, _reflection_v1.SERVICE_NAME, reflection.SERVICE_NAME)
    add_servicer(server, health_pb2.DESCRIPTOR.services_by_name["Health"], health_servicer)
    add_servicer(
        server,
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        reflection.aio.ReflectionServicer(names),
        streams,
    )
    add_servicer(server, _reflection_v1.SERVICE, _reflection_v1.ReflectionServicer(names), streams)
