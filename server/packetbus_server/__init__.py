"""The packetbus server: validation, persistence and delivery of packets over gRPC.

Where things happen:

- ``_validation.py``       the rules every packet must pass ("no schema, no dispatch");
                           its contents and custody entries ``_content_rules.py``,
                           JSON data's rules ``_json_data.py`` (its nesting ``_struct_depth.py``)
- ``_field_rules.py``      the rules for fields every request shares: topics, ids, names, timestamps
- ``_ingest.py``           validate -> normalize -> fingerprint, per packet
- ``_store.py``            PacketStore: a topic's packets written, read, followed (Lua ``scripts/``)
- ``_packet_writes.py``    a packet ready to store (PacketWrite) and the outcome of storing it
- ``_log_pages.py``        what reading a topic's log gives: entries, pages, horizon, found packet
- ``_cursors.py``          log cursors (stream ids): their time and order
- ``_cluster_claims.py``   on a Redis Cluster: a dispatch's tracking ids claimed before its script
- ``_redis_connect.py``    connecting to a single Redis or a Redis Cluster (connect_redis)
- ``_keys.py``             the Redis key layout
- ``_key_types.py``        a WRONGTYPE's key named: the store clients look it up against ``_keys``
- ``_retry.py``            which Redis failures are retried, and how
- ``_refusals.py``         the store's refusals (full memory, disk, replica...): retried or not, and the status
- ``_eviction.py``         the store must not evict: its policy checked at start and with health
- ``_custodian.py``        signs the server's custody entries and heads; checks signed origins
- ``_sealed_batch.py``     a signed ingest batch stored once; the records it signs, rebuilt per packet
- ``_batch_refs.py``       log entries that refer to a sealed batch, expanded for every reader
- ``_keyring.py``          the server's signing keys on disk, and their rotation
- ``_key_store.py``        the public key registry in Redis (servers' and agents' keys)
- ``_packet_service.py``   the PacketService RPCs (dispatch, get, subscribe, info)
- ``_subscription.py``     Subscribe's stream: its start, the follow loop, replies packed
                           (written as bytes around the stored packets: ``_subscribe_wire.py``)
- ``_stored_packets.py``   a stored packet as a reply (Receipt, StoredPacket), for every service
- ``_storage_errors.py``   the store's failures as an RPC's status (storage_errors, store_state)
- ``_name_listing.py``     ListTopics' and ListTaskQueues' prefix and page token rules
- ``_stream_ends.py``      a streaming RPC's start made known, its caller gone
- ``_dispatch_stream.py``  DispatchStream: Dispatch's batches over one long-lived stream
- ``_custody_service.py``  the CustodyService RPCs (keys, agent keys, verify, export)
- ``_placed_packets.py``   where task, finding and record packets live, by tracking id
- ``_policy.py``           governance rules: the policy file's format, a policy and its
                           evaluate (pure); its [authorization] section: ``_access/authorization.py``
- ``_policy_parse.py``     the policy file parsed and checked, its rules compiled (parse)
- ``_policy_matchers.py``  a rule's match keys as checks: origin, topic, speech act, content type
- ``_policy_fields.py``    a rule's content fields: dotted paths and their operators
- ``_policy_watch.py``     the policy file in force, reloaded when it changes
- ``_policy_store.py``     rejected and held packets, approvals, counts, decision log
- ``_policy_service.py``   judging at dispatch (Governor) and the PolicyService RPCs
- ``_policy_decisions.py`` a decided packet's dispatch result (rejected, held) and counts
- ``_policy_approvals.py`` the approval queue: approver's signed entry verified, approve/deny
- ``_policy_replies.py``   GetPolicy's reply and held packets as replies
- ``_context_service.py``  the ContextService RPCs (documents, global map, memory, traces)
- ``_context_checks.py``   context request validation (names, sizes, TTLs, entry ids)
- ``_context_upload.py``   PutContext: chunks staged, size and digest checked, signed, committed
- ``_context_reads.py``    GetContext's chunked read and ListContexts' pages
- ``_context_watch.py``    the WatchContext stream of change events
- ``_context_logs.py``     memory and trace appends, once per entry id
- ``_context_replies.py``  documents and change events as replies
- ``_app.py``              assembly and lifecycle: start, drain on SIGTERM, entry points
- ``_server_config.py``    the server's settings (ServerConfig) and TLS credentials
- ``_config_checks.py``    the ranges ServerConfig and Limits take, checked when either is made
- ``_store_connection.py`` the store: embedded or external, connected and probed at start
- ``_service_wiring.py``   every servicer on its store, behind the gate; health, reflection
- ``_task_service.py``     the TaskService RPCs; checks ``_task_requests.py``, settlements
                           ``_task_settling.py``, replies ``_task_states.py``, listings
                           ``_task_listing.py``, the watch ``_task_watch.py``
- ``_finding_service.py``  the FindingService RPCs: findings and their conflicts (``_conflicts.py``);
                           Escalate and ListEscalations ``_finding_escalations.py``
- ``_group_service.py``    the ConsumerGroupService RPCs; a Pull stream's loop ``_group_pull.py``,
                           deliveries ``_group_delivery.py``, settlements ``_group_settling.py``
                           (asked and answered: ``_settle_requests.py``), Redis ``_group_store.py``
- ``_agent_service.py``    the AgentService RPCs; checks and key proofs ``_agent_requests.py``,
                           replies and liveness ``_agent_states.py``
- ``_timestamps.py``      protobuf Timestamps of unix ms, for every service's replies
- ``_reflection_v1.py``    server reflection grpc.reflection.v1 beside the stock v1alpha
- ``_durability.py``       durability modes: fsync per write (WAITAOF) or per second
- ``_embedded.py``         the embedded Valkey: one owner per data dir, a private socket
- ``_waits.py``            blocking XREAD waits, and identical calls under way shared (SharedCalls)
"""

from ._app import VERSION, RunningServer, ServerConfig, default_data_dir, run, running, serve, start
from ._durability import Durability
from ._keyring import rotate as rotate_signing_key
from ._limits import Limits

__all__ = [
    "VERSION",
    "Durability",
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
