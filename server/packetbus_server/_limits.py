"""What the server accepts, in one place, published through GetServerInfo."""

from __future__ import annotations

from dataclasses import dataclass

from packetbus.v1 import packet_service_pb2


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    max_packet_bytes: int = 1024 * 1024
    max_batch_packets: int = 1000
    # The gRPC receive limit; a larger request is refused by gRPC itself
    # (RESOURCE_EXHAUSTED) before any of it is parsed.
    max_request_bytes: int = 16 * 1024 * 1024
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

    def to_proto(self) -> packet_service_pb2.Limits:
        return packet_service_pb2.Limits(
            max_packet_bytes=self.max_packet_bytes,
            max_batch_packets=self.max_batch_packets,
            max_request_bytes=self.max_request_bytes,
            default_ttl_seconds=self.default_ttl_seconds,
            max_ttl_seconds=self.max_ttl_seconds,
            max_subscribe_batch_packets=self.max_subscribe_batch_packets,
            max_origin_length=self.max_origin_length,
            max_topic_length=self.max_topic_length,
            max_custody_entries=self.max_custody_entries,
        )
