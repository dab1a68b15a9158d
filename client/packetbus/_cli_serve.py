"""The ``packetbus serve`` command: its flags, and running the server they describe."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ._cli_args import (
    authorization_preflight,
    fail,
    integer,
    number,
    security_preflight,
    serve_jwt_preflight,
    serve_preflight,
)
from ._cli_connection import add_store_tls_flags, store_url

# serve's stream caps (ServerConfig's fields of the same names, and their defaults).
_STREAM_CAPS = (
    ("max-subscribers", 512, "open Subscribe streams, and open Pull streams, each"),
    (
        "max-watchers",
        1024,
        "open WatchTasks, WatchAgents, WatchContext streams together; Health.Watch too",
    ),
    ("max-exports", 64, "open ExportPackets streams"),
    ("max-transfers", 256, "open GetContext and PutContext streams together"),
    ("max-dispatch-streams", 512, "open DispatchStream streams (a client's one per connection)"),
    ("max-streams-per-peer", 512, "open streams of all kinds on one client connection"),
    ("max-redis-connections", 1024, "Redis connections for unary calls and health"),
)


def add_parser(commands: Any) -> None:
    """serve, with its flags (each with an environment variable, where it has one)."""
    serve = commands.add_parser("serve", help="run a packetbus server")
    serve.add_argument(
        "--listen",
        default=os.environ.get("PACKETBUS_LISTEN", "127.0.0.1:50051"),
        help="address to listen on (env PACKETBUS_LISTEN; default 127.0.0.1:50051)",
    )
    serve.add_argument(
        "--redis-url",
        default=os.environ.get("PACKETBUS_REDIS_URL"),
        help="use this Redis 7+ or Redis Cluster instead of the embedded Valkey: redis://, "
        "rediss:// (TLS), with user:password@ for an ACL user (env PACKETBUS_REDIS_URL, "
        "better for a password: a command line is visible to every user in ps)",
    )
    add_store_tls_flags(serve)
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("PACKETBUS_DATA_DIR"),
        help="where the embedded Valkey keeps its data (env PACKETBUS_DATA_DIR; "
        "default ~/.local/share/packetbus)",
    )
    serve.add_argument(
        "--durability",
        choices=("everysec", "always"),
        default=os.environ.get("PACKETBUS_DURABILITY", "everysec"),
        help="what a machine crash may lose of acknowledged writes: everysec (the last "
        "~1 s) or always (nothing: each write is acknowledged once on disk; slower) "
        "(env PACKETBUS_DURABILITY; default everysec)",
    )
    serve.add_argument(
        "--grace", type=number(0), default=10.0, help="seconds to drain on SIGTERM (default 10)"
    )
    serve.add_argument(
        "--workers",
        type=integer(1, 1024),
        default=int(os.environ.get("PACKETBUS_WORKERS", "1")),
        help="server processes sharing the port, e.g. one per core (env PACKETBUS_WORKERS; "
        "default 1)",
    )
    serve.add_argument(
        "--worker-ports",
        type=integer(0, 65535),
        default=os.environ.get("PACKETBUS_WORKER_PORTS") or None,  # argparse converts it
        metavar="FIRST",
        help="with --workers N, worker i also listens on FIRST+i, where clients connect "
        "to spread evenly over the workers (env PACKETBUS_WORKER_PORTS; default: the ports "
        "after --listen's; 0: any free ports)",
    )
    serve.add_argument(
        "--otel",
        action="store_true",
        default=os.environ.get("PACKETBUS_OTEL", "") == "1",
        help="send OpenTelemetry traces to an OTLP endpoint, configured by the standard "
        "OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4317; "
        "OTEL_SERVICE_NAME, default packetbus); needs packetbus[otel] (env PACKETBUS_OTEL=1)",
    )
    serve.add_argument(
        "--signing-key-file",
        type=Path,
        default=os.environ.get("PACKETBUS_SIGNING_KEY_FILE"),
        help="the server's custody signing keys (env PACKETBUS_SIGNING_KEY_FILE; default "
        "DATA_DIR/custody-keys.json, created on first start)",
    )
    serve.add_argument(
        "--policy",
        type=Path,
        default=os.environ.get("PACKETBUS_POLICY"),
        metavar="FILE",
        help="governance policy (TOML): rules that allow, reject or hold packets; reloaded "
        "when the file changes, or on SIGHUP (env PACKETBUS_POLICY)",
    )
    serve.add_argument(
        "--jwt-jwks",
        type=Path,
        default=os.environ.get("PACKETBUS_JWT_JWKS"),
        metavar="FILE",
        help="accept bearer JWTs signed by the keys of this JWKS file (RFC 7517; keys by kid; "
        "reloaded when it changes) (env PACKETBUS_JWT_JWKS)",
    )
    serve.add_argument(
        "--jwt-public-key",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="accept bearer JWTs signed by this PEM public key (Ed25519, EC P-256 or RSA; "
        "a token names it by no kid or its RFC 7638 thumbprint, logged at start); repeatable",
    )
    serve.add_argument(
        "--jwt-issuer",
        default=os.environ.get("PACKETBUS_JWT_ISSUER"),
        metavar="ISSUER",
        help="the iss a bearer JWT must have (needed with JWT keys; env PACKETBUS_JWT_ISSUER)",
    )
    serve.add_argument(
        "--jwt-audience",
        default=os.environ.get("PACKETBUS_JWT_AUDIENCE"),
        metavar="AUDIENCE",
        help="the aud a bearer JWT must have or include (needed with JWT keys; env "
        "PACKETBUS_JWT_AUDIENCE)",
    )
    serve.add_argument(
        "--trust-xfcc",
        action="store_true",
        default=os.environ.get("PACKETBUS_TRUST_XFCC", "").lower() in ("1", "yes", "true"),
        help="take the caller's identity from a mesh sidecar's x-forwarded-client-cert header "
        "(Envoy); only when nothing but the sidecar can reach the port (env "
        "PACKETBUS_TRUST_XFCC=1)",
    )
    serve.add_argument(
        "--allow-store-eviction",
        action="store_true",
        default=os.environ.get("PACKETBUS_ALLOW_STORE_EVICTION", "").lower()
        in ("1", "yes", "true"),
        help="serve even when the store's maxmemory-policy is not noeviction: it may then "
        "delete acknowledged packets under memory pressure (env PACKETBUS_ALLOW_STORE_EVICTION=1)",
    )
    serve.add_argument(
        "--no-custody-signing",
        action="store_true",
        help="do not sign the server's custody entries (only to measure what signing costs)",
    )
    serve.add_argument(
        "--keepalive",
        type=number(0.001, 86400),
        default=os.environ.get("PACKETBUS_KEEPALIVE_SECONDS", "30"),
        metavar="SECONDS",
        help="ping a connection quiet this long (env PACKETBUS_KEEPALIVE_SECONDS; default 30)",
    )
    serve.add_argument(
        "--keepalive-timeout",
        type=number(0.001, 86400),
        default=os.environ.get("PACKETBUS_KEEPALIVE_TIMEOUT_SECONDS", "10"),
        metavar="SECONDS",
        help="close a connection whose ping is not answered within this, ending its "
        "streams (env PACKETBUS_KEEPALIVE_TIMEOUT_SECONDS; default 10)",
    )
    serve.add_argument(
        "--drain-notice",
        type=number(0, 86400),
        default=os.environ.get("PACKETBUS_DRAIN_NOTICE_SECONDS", "2"),
        metavar="SECONDS",
        help="on SIGTERM, report NOT_SERVING this long before ending open streams and "
        "closing the listener (env PACKETBUS_DRAIN_NOTICE_SECONDS; default 2)",
    )
    for flag, default, what in _STREAM_CAPS:
        env = "PACKETBUS_" + flag.upper().replace("-", "_")
        serve.add_argument(
            f"--{flag}",
            type=integer(1, 1_000_000),
            default=os.environ.get(env, str(default)),
            metavar="N",
            help=f"{what} (env {env}; default {default})",
        )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        default=os.environ.get("PACKETBUS_SERVER_TLS_CERT"),
        metavar="FILE",
        help="serve TLS with this certificate chain (PEM; reloaded when the file changes) "
        "(env PACKETBUS_SERVER_TLS_CERT)",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        default=os.environ.get("PACKETBUS_SERVER_TLS_KEY"),
        metavar="FILE",
        help="the certificate's private key (PEM, unencrypted) (env PACKETBUS_SERVER_TLS_KEY)",
    )
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        default=os.environ.get("PACKETBUS_SERVER_TLS_CLIENT_CA"),
        metavar="FILE",
        help="mutual TLS: every client must present a certificate this CA (PEM) signed; "
        "the caller is its SPIFFE ID, else its subject CN (env PACKETBUS_SERVER_TLS_CLIENT_CA)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("PACKETBUS_INSECURE", "").lower() in ("1", "yes", "true"),
        help="listen beyond loopback without TLS and authentication: anyone who reaches "
        "the port may do anything (env PACKETBUS_INSECURE=1)",
    )
    serve.add_argument(
        "--metrics-listen",
        default=os.environ.get("PACKETBUS_METRICS_LISTEN") or None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (https with --tls-cert); "
        "beyond loopback only with TLS or --insecure; with --workers, the sum of all "
        "workers (env PACKETBUS_METRICS_LISTEN; default off)",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="logging level (default INFO)",
    )
    serve.add_argument(
        "--log-format",
        default=os.environ.get("PACKETBUS_LOG_FORMAT", "text"),
        choices=("text", "json"),
        help="log lines as text, or as one JSON object each (time, level, logger, message "
        "and the record's fields) (env PACKETBUS_LOG_FORMAT; default text)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the server `args` describe until it stops; the exit status (1 or 2, with
    one line on stderr, when it cannot start)."""
    import logging

    from redis.exceptions import RedisError

    # The server side is imported only here, so the client library and the
    # other commands never load it.
    from packetbus_server import Durability, ServerConfig, default_data_dir, run
    from packetbus_server._embedded import EmbeddedStoreError
    from packetbus_server._exposure import authenticates
    from packetbus_server._observability import logs
    from packetbus_server._retry import (
        StoreFailedError,
        StoreRefusedError,
        StoreUnavailableError,
    )
    from packetbus_server._running import redacted

    problem = serve_jwt_preflight(
        args.jwt_jwks, args.jwt_public_key, args.jwt_issuer, args.jwt_audience
    )
    if problem:
        return fail(f"cannot start: {problem}", 2)
    if args.metrics_listen is not None:
        from packetbus_server._observability.endpoint import parse_address

        try:
            parse_address(args.metrics_listen)
        except ValueError as exc:
            return fail(f"cannot start: {exc}", 2)
    problem = serve_preflight(args.listen, args.policy, durability=args.durability)
    if problem:
        return fail(f"cannot start: {problem}")
    if args.otel:
        from packetbus_server._observability import otlp

        if not otlp.available():
            return fail(f"cannot start: {otlp.MISSING}", 2)
    try:
        args.redis_url = store_url(args)
    except ValueError as exc:
        return fail(f"cannot start: {exc}", 2)
    if args.log_format not in logs.FORMATS:  # argparse checks no default (the env's)
        return fail(
            f"cannot start: log format {args.log_format!r} is not text or json "
            f"(--log-format, env {logs.FORMAT_ENV})",
            2,
        )
    logs.configure(logs.LogSettings(getattr(logging, args.log_level), args.log_format))
    try:
        config = ServerConfig(
            listen=args.listen,
            redis_url=args.redis_url,
            data_dir=args.data_dir or default_data_dir(),
            grace_seconds=args.grace,
            keepalive_seconds=args.keepalive,
            keepalive_timeout_seconds=args.keepalive_timeout,
            drain_notice_seconds=args.drain_notice,
            signing_key_file=args.signing_key_file,
            custody_signing=not args.no_custody_signing,
            policy_file=args.policy,
            max_subscribers=args.max_subscribers,
            max_watchers=args.max_watchers,
            max_exports=args.max_exports,
            max_transfers=args.max_transfers,
            max_dispatch_streams=args.max_dispatch_streams,
            max_streams_per_peer=args.max_streams_per_peer,
            max_redis_connections=args.max_redis_connections,
            allow_store_eviction=args.allow_store_eviction,
            durability=Durability(args.durability),
            jwt_jwks_file=args.jwt_jwks,
            jwt_public_key_files=tuple(args.jwt_public_key),
            jwt_issuer=args.jwt_issuer,
            jwt_audience=args.jwt_audience,
            trust_xfcc=args.trust_xfcc,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_client_ca_file=args.tls_client_ca,
            insecure=args.insecure,
            tracing=args.otel,
            otlp_export=args.otel,
            metrics_listen=args.metrics_listen,
        )
    except ValueError as exc:  # a setting out of range (_config_checks): a usage error
        return fail(f"cannot start: {exc}", 2)
    problem, code = security_preflight(config)
    if problem:
        return fail(f"cannot start: {problem}", code)
    # Settings that contradict each other: a usage error.
    problem = authorization_preflight(args.policy, authenticated=authenticates(config))
    if problem:
        return fail(f"cannot start: {problem}", 2)
    try:
        run(config, workers=args.workers, worker_ports=args.worker_ports)
    # A bad key file or setting, no store, a data dir another server holds, a store
    # that may evict or refuses the first writes (full, a disk it cannot write): say so.
    except (RedisError, StoreFailedError, StoreUnavailableError) as exc:
        # The store's own state (full, a disk it cannot write) says what to do itself.
        if isinstance(exc, StoreRefusedError):
            return fail(f"cannot start: {exc}")
        # redis-py's own words may not say which store ("DB index is out of range"),
        # whether they come at once or through the start's retries.
        store = f" at {redacted(args.redis_url)}" if args.redis_url else ""
        cause = exc.__cause__ if isinstance(exc, StoreFailedError) else None
        words = cause if isinstance(cause, RedisError) else exc
        return fail(f"cannot start: the store{store} refused or did not answer: {words}")
    except (ValueError, EmbeddedStoreError) as exc:
        return fail(f"cannot start: {exc}")
    except OSError as exc:  # the port taken meanwhile, a data dir it cannot write
        # The path too: "Not a directory" alone does not say which one.
        where = f": {exc.filename}" if exc.filename else ""
        return fail(f"cannot start: {exc.strerror or exc}{where}")
    return 0
