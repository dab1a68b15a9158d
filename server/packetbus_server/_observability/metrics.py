"""Every Prometheus metric the server exports, defined once (prometheus-client).

Counters and histograms here are counted in the process that does the work and
live in prometheus-client's default registry; with `serve --workers N` each worker
writes them to PROMETHEUS_MULTIPROC_DIR and the supervisor's endpoint sums them
(prometheus-client's multiprocess mode). Gauges that describe the store (group
lag, task queues by status, agents by liveness, the carcel by reason, store
memory) are not counted here: they are read from the store when scraped
(`store_collector`), so every replica answers the same.

Names: the gRPC ones are go-grpc-prometheus's (`grpc_server_*`, labels
grpc_type, grpc_service, grpc_method, grpc_code); packetbus's own start with
`packetbus_`, are in base units (seconds, bytes) and counters end in `_total`
(Prometheus naming best practices). Labels are bounded: an RPC name, a status
code, a reason from a closed set, a policy rule's name (the operator's file), a
consumer group's or task queue's name (resources an operator creates), never a
tracking id, topic or free text.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets in seconds, from a loopback unary call (~0.2 ms) to a long
# stream: go-grpc-prometheus's defaults are too coarse below 5 ms.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)

_RPC = ("grpc_type", "grpc_service", "grpc_method")

# --- gRPC: one of each per call (go-grpc-prometheus's names and labels) ---
grpc_server_started = Counter("grpc_server_started_total", "RPCs started on the server.", _RPC)
grpc_server_handled = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by gRPC status code (OK, INVALID_ARGUMENT, ...).",
    (*_RPC, "grpc_code"),
)
grpc_server_handling_seconds = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's start to its status, in seconds.",
    _RPC,
    buckets=LATENCY_BUCKETS,
)
grpc_server_msg_received = Counter(
    "grpc_server_msg_received_total", "Request messages received (streams count each).", _RPC
)
grpc_server_msg_sent = Counter(
    "grpc_server_msg_sent_total", "Response messages sent (streams count each).", _RPC
)

# --- packets in ---
packets_dispatched = Counter(
    "packetbus_packets_dispatched_total",
    "Packets stored by Dispatch, PostTask, PostFinding and PutRecord (not resends).",
    ("kind",),  # "packet", "task", "finding", "record"
)
dispatch_seconds = Histogram(
    "packetbus_dispatch_seconds",
    "Time to answer one batch of a caller's packets, from its arrival to its answer, in "
    "seconds, by how it came: a Dispatch call (unary) or a DispatchStream batch (stream).",
    ("via",),
    buckets=LATENCY_BUCKETS,
)
packets_rejected = Counter(
    "packetbus_packets_rejected_total",
    "Packets refused and not stored, by the refusal's ErrorInfo reason and the "
    'policy rule that refused it ("" when no rule did: validation, custody, limits).',
    ("reason", "rule"),
)
packets_held = Counter(
    "packetbus_packets_held_total",
    "Packets governance held for approval, by the policy rule that held them.",
    ("rule",),
)
packets_deduplicated = Counter(
    "packetbus_packets_deduplicated_total",
    "Resends answered with the original result and not stored again (idempotency).",
)
stored_bytes = Counter(
    "packetbus_stored_bytes_total",
    "Bytes of packets written to the store (serialized StoredPacket), resends excluded.",
)
custody_entries_signed = Counter(
    "packetbus_custody_entries_signed_total",
    "Custody entries this server signed, by action (received, delivered, ...).",
    ("action",),
)

# --- delivery ---
open_streams = Gauge(
    "packetbus_open_streams",
    "Streams open now, by kind: subscribe, pull, watch, export, transfer, health_watch.",
    ("kind",),
    multiprocess_mode="livesum",
)
packets_delivered = Counter(
    "packetbus_packets_delivered_total",
    "Packets sent to subscribers and consumers, by how: subscribe or group.",
    ("via",),
)
group_redeliveries = Counter(
    "packetbus_group_redeliveries_total",
    "Deliveries of a group's packet after its first (a nack or a lease that ran out).",
    ("group",),
)
group_carceled = Counter(
    "packetbus_group_carceled_total",
    "A group's packets moved to the carcel (max delivery attempts, or a consumer's terminal nack).",
    ("group",),
)

# --- the store ---
store_retries = Counter(
    "packetbus_store_retries_total",
    "Store operations retried (_retry), by the error's class: connection, timeout, "
    "busy, loading, tryagain, moved, ask, readonly, oom, ...",
    ("error_class",),
)
store_round_trip_seconds = Histogram(
    "packetbus_store_round_trip_seconds",
    "One store round trip (a script, a command or a pipeline), in seconds, retries "
    "each counted alone.",
    ("operation",),
    buckets=LATENCY_BUCKETS,
)
