"""What the server accepts, in one place, published through GetServerInfo."""

from __future__ import annotations

from dataclasses import dataclass

from packetbus.v1 import packet_service_pb2

from ._config_checks import check_limits


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    max_packet_bytes: int = 1024 * 1024
    max_batch_packets: int = 1000
    # The gRPC receive limit; a larger request is refused by gRPC itself
    # (RESOURCE_EXHAUSTED) before any of it is parsed.
    max_request_bytes: int = 16 * 1024 * 1024
    # Batches served at once on one DispatchStream; the stream is not read
    # further meanwhile (gRPC flow control holds its client back), so a stream
    # holds at most this many requests.
    max_dispatch_stream_batches: int = 8
    # The largest reply message the server sends: its gRPC send limit, and the
    # receive limit every client must set (grpc-python and grpc-js default to
    # 4 MiB). Replies are packed to reply_budget_bytes; only one item larger than
    # that (at most a 1 MiB packet twice, with its chain: about 2.1 MiB) goes alone.
    max_response_bytes: int = 16 * 1024 * 1024
    # Streams and pages carrying many items are cut at this many bytes: it keeps
    # ordinary replies within the 4 MiB receive default of most gRPC clients and
    # bounds what one stream holds in memory.
    reply_budget_bytes: int = 4 * 1024 * 1024 - 64 * 1024
    default_ttl_seconds: int = 3600
    max_ttl_seconds: int = 86400
    default_subscribe_batch_packets: int = 100
    max_subscribe_batch_packets: int = 1000
    max_origin_length: int = 255
    max_topic_length: int = 200
    max_custody_entries: int = 64
    default_ack_deadline_seconds: int = 30
    # Shorter leases only make sense in tests: a real consumer needs time to work.
    min_ack_deadline_seconds: int = 10
    max_ack_deadline_seconds: int = 600
    default_max_delivery_attempts: int = 5
    default_pull_batch_packets: int = 100
    # Carceled packets (and their chains) are kept this long unless purged.
    carcel_retention_seconds: int = 7 * 86400
    # How often the server looks at its policy file for changes (SIGHUP: at once).
    policy_reload_seconds: float = 1.0
    # Shared context documents: moved in chunks, so a document may be far larger
    # than one gRPC message (Redis holds at most 512 MiB in one string).
    max_context_bytes: int = 256 * 1024 * 1024
    max_context_chunk_bytes: int = 1024 * 1024
    default_context_ttl_seconds: int = 86400
    max_context_ttl_seconds: int = 30 * 86400
    # An upload abandoned midway is dropped after this long without a chunk.
    context_upload_ttl_seconds: int = 600
    # A replaced or deleted version stays readable this long, so a reader that
    # started on it can finish.
    context_replaced_grace_seconds: int = 60
    # Upload ids remembered per document (its newest commits'), so a put retried
    # late, after newer versions, answers its own commit instead of writing again.
    context_upload_memos: int = 100
    # Change events kept per scope for watchers to resume from.
    max_context_events: int = 10000
    max_context_page: int = 1000
    # The global context map, memory logs and traces: small values, capped.
    max_global_entries: int = 10000
    max_global_value_bytes: int = 64 * 1024
    max_log_entries: int = 1000
    max_log_entry_bytes: int = 64 * 1024
    default_log_ttl_seconds: int = 7 * 86400
    # Swarm records: kept for their kind's retention unless the writer asks
    # for another (at most max_record_ttl_seconds).
    session_summary_ttl_seconds: int = 30 * 86400
    swarm_registry_ttl_seconds: int = 7 * 86400
    remediation_scan_ttl_seconds: int = 7 * 86400
    max_record_ttl_seconds: int = 90 * 86400
    max_record_page: int = 1000
    # The agent registry. An agent missing its heartbeat TTL turns stale (its
    # claimed tasks are released) and is removed after another TTL.
    default_agent_ttl_seconds: int = 30
    min_agent_ttl_seconds: int = 1
    max_agent_ttl_seconds: int = 3600
    max_agents: int = 10000
    max_agent_capabilities: int = 64
    max_agent_labels: int = 64
    # How often each replica sweeps for missed heartbeats (one script a sweep).
    agent_reaper_interval_seconds: float = 1.0
    # Membership events kept for watchers to resume from: count and age.
    max_agent_events: int = 10000
    agent_event_retention_seconds: int = 86400
    default_agent_page: int = 100
    max_agent_page: int = 1000

    def __post_init__(self) -> None:
        # Out of range: ValueError naming the field (_config_checks), however made.
        check_limits(self)

    def to_proto(self) -> packet_service_pb2.Limits:
        return packet_service_pb2.Limits(
            max_packet_bytes=self.max_packet_bytes,
            max_batch_packets=self.max_batch_packets,
            max_dispatch_stream_batches=self.max_dispatch_stream_batches,
            max_request_bytes=self.max_request_bytes,
            default_ttl_seconds=self.default_ttl_seconds,
            max_ttl_seconds=self.max_ttl_seconds,
            max_subscribe_batch_packets=self.max_subscribe_batch_packets,
            max_origin_length=self.max_origin_length,
            max_topic_length=self.max_topic_length,
            max_custody_entries=self.max_custody_entries,
            max_response_bytes=self.max_response_bytes,
        )
