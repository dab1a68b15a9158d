"""The server's settings (ServerConfig), where it keeps its data by default, and
the TLS credentials the settings name."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ._config_checks import check_server_config
from ._durability import Durability
from ._limits import Limits
from ._tls import ReloadingCredentials, TlsPaths
from ._worker_ports import WorkerPorts


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/packetbus, else ~/.local/share/packetbus."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "packetbus"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    # None: start the embedded Valkey in `data_dir`.
    redis_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    limits: Limits = field(default_factory=Limits)
    # How long in-flight RPCs may finish after SIGTERM.
    grace_seconds: float = 10.0
    # Upper bound on retrying one Redis operation when the RPC has no deadline.
    retry_budget_seconds: float = 10.0
    # How long a start waits for the store to be reached, each step (a cluster's
    # slot map, the probes, the clock); at least retry_budget_seconds. A short
    # retry budget is a latency bound on calls, no reason to give up on a store
    # that takes a second to answer while this process starts.
    store_start_seconds: float = 10.0
    health_interval_seconds: float = 1.0
    max_subscribers: int = 512
    # Beyond this many RPCs at once (subscriptions included) gRPC answers
    # RESOURCE_EXHAUSTED instead of queueing without bound.
    max_concurrent_rpcs: int = 4096
    # The actor name in this server's custody entries; None: the one stored
    # with its signing keys, so it stays the same across restarts.
    server_id: str | None = None
    # Where the server's Ed25519 signing keys live; None: in `data_dir`.
    signing_key_file: Path | None = None
    # Sign the server's custody entries; off only to measure what signing costs.
    custody_signing: bool = True
    # The governance policy (TOML), reloaded when it changes; None: allow everything.
    policy_file: Path | None = None
    # Dead peers: the server pings a connection that has been quiet this long and
    # closes it (ending its streams and freeing their slots) when the ping is not
    # answered within the timeout. A peer that vanished without FIN/RST is so
    # noticed within keepalive_seconds + keepalive_timeout_seconds (40 s).
    keepalive_seconds: float = 30.0
    keepalive_timeout_seconds: float = 10.0
    # On SIGTERM, health says NOT_SERVING this long before open streams end
    # (UNAVAILABLE: clients resume elsewhere) and the listener closes.
    drain_notice_seconds: float = 2.0
    # Open streams per server, by kind (Subscribe and Pull: max_subscribers each),
    # and per connection over all kinds; beyond them: RESOURCE_EXHAUSTED at once.
    max_watchers: int = 1024  # WatchTasks, WatchAgents, WatchContext (and Health.Watch)
    max_exports: int = 64  # ExportPackets
    max_transfers: int = 256  # GetContext, PutContext
    max_dispatch_streams: int = 512  # DispatchStream (a Client opens one per connection)
    max_streams_per_peer: int = 512
    # Redis connections for unary calls and health; waiting streams have their own.
    max_redis_connections: int = 1024
    # Serve even when the store's maxmemory-policy is not noeviction (see _eviction):
    # acknowledged packets may then be evicted. Off: such a store is refused.
    allow_store_eviction: bool = False
    # What a machine crash may take of acknowledged writes (see _durability):
    # everysec (~1 s of them) or always (nothing: acknowledged once fsynced).
    durability: Durability = Durability.EVERYSEC
    # Bind the port with SO_REUSEPORT: only the workers of one server (--workers)
    # share a port; any other server there would split the clients between them.
    share_port: bool = False
    # A worker of `serve --workers N`: its own port besides the shared one, and the
    # turns by which GetServerInfo spreads clients over the workers (_worker_ports).
    worker_ports: WorkerPorts | None = None
    # Identity at the door (README "Security"; see _access). TLS: this certificate
    # chain and key (PEM), reloaded when the files change; with a client CA, every
    # client must present a certificate it signed (mutual TLS) and the principal is
    # its SPIFFE ID URI SAN, else its subject CN.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Bearer tokens: JWTs verified against these public keys (a JWKS file and/or
    # PEM files; Ed25519, ES256, RS256), the issuer and audience checked; the
    # principal is the token's `sub`.
    jwt_jwks_file: Path | None = None
    jwt_public_key_files: tuple[Path, ...] = ()
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Trust the identity a mesh sidecar that terminated mTLS forwards in Envoy's
    # x-forwarded-client-cert header. Only when no one else can reach the port.
    trust_xfcc: bool = False
    # Listen beyond loopback without TLS and authentication (refused otherwise).
    insecure: bool = False
    # OpenTelemetry spans (README "Traces"; needs the otel extra): to the global
    # TracerProvider, or with otlp_export to an OTLP exporter this process sets up
    # from the standard OTEL_* environment variables. Off: no opentelemetry import.
    tracing: bool = False
    otlp_export: bool = False
    # Serve Prometheus /metrics on this HOST:PORT (port 0: any free one); beyond
    # loopback only with TLS (the tls_* files above) or `insecure`. None: off.
    metrics_listen: str | None = None

    def __post_init__(self) -> None:
        # Out of range: ValueError naming the field (_config_checks), as the CLI's
        # flags are refused, for a server embedded from Python too.
        check_server_config(self)


def tls_credentials(config: ServerConfig) -> ReloadingCredentials | None:
    """The TLS credentials `config` names (files checked now: TlsFilesError), or
    None for plaintext."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    return ReloadingCredentials(
        TlsPaths(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
    )
