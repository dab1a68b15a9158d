"""The asyncio client agents use to dispatch, fetch and follow packets.

`Client` is composed of one class per group of calls (``*_calls`` modules, each
on a `core.ClientCore`); `Subscription` follows a topic; `packet_defaults`
fills what a sender may leave out of a packet.
"""

from .client import KEEPALIVE_MS, Client
from .packet_defaults import DEFAULT_SCHEMA_VERSION, DEFAULT_TTL_SECONDS, fill_defaults, sign_as
from .subscription import EARLIEST, LATEST, GapHandler, StartPosition, Subscription

__all__ = [
    "DEFAULT_SCHEMA_VERSION",
    "DEFAULT_TTL_SECONDS",
    "EARLIEST",
    "KEEPALIVE_MS",
    "LATEST",
    "Client",
    "GapHandler",
    "StartPosition",
    "Subscription",
    "fill_defaults",
    "sign_as",
]
