"""The packetbus server: validation, persistence and delivery of packets over gRPC.

Where things happen:

- ``_validation.py``       the rules every packet must pass ("no schema, no dispatch")
- ``_ingest.py``           validate -> normalize -> fingerprint, per packet
- ``_store.py``            every Redis read and write (Lua scripts in ``scripts/``)
- ``_keys.py``             the Redis key layout
- ``_retry.py``            which Redis failures are retried, and how
- ``_custodian.py``        signs the server's custody entries and heads; checks signed origins
- ``_keyring.py``          the server's signing keys on disk, and their rotation
- ``_key_store.py``        the public key registry in Redis (servers' and agents' keys)
- ``_packet_service.py``   the PacketService RPCs (dispatch, get, subscribe, info)
- ``_custody_service.py``  the CustodyService RPCs (keys, agent keys, verify, export)
- ``_policy.py``           governance rules: parse, validate, evaluate (pure)
- ``_policy_watch.py``     the policy file in force, reloaded when it changes
- ``_policy_store.py``     rejected and held packets, approvals, counts, decision log
- ``_policy_service.py``   judging at dispatch (Governor) and the PolicyService RPCs
- ``_app.py``              assembly, health, reflection and drain on SIGTERM
"""

from ._app import VERSION, RunningServer, ServerConfig, default_data_dir, run, running, serve, start
from ._keyring import rotate as rotate_signing_key
from ._limits import Limits

__all__ = [
    "VERSION",
    "Limits",
    "RunningServer",
    "ServerConfig",
    "default_data_dir",
    "rotate_signing_key",
    "run",
    "running",
    "serve",
    "start",
]
