"""packetbus: the Python client for the packetbus message bus.

    import asyncio
    from packetbus import Client, Packet, Finding, SpeechAct

    async def main() -> None:
        async with await Client.connect("127.0.0.1:50051") as bus:
            receipt = await bus.dispatch(Packet(topic="research", origin="haiku-1",
                                                speech_act=SpeechAct.SPEECH_ACT_INFORM))

The protobuf types live in ``packetbus.v1`` (generated from protos/packetbus/v1);
the most used ones are re-exported here.
"""

from packetbus.v1.agent_service_pb2 import Agent, MembershipEvent
from packetbus.v1.carcel_service_pb2 import CarcelEntry
from packetbus.v1.consumer_group_service_pb2 import ConsumerGroup, SettleResult
from packetbus.v1.contents_pb2 import (
    Context,
    Finding,
    RawContents,
    RemediationScan,
    RemediationViolation,
    SessionSummary,
    SwarmMember,
    SwarmRegistry,
    Task,
)
from packetbus.v1.custody_pb2 import CustodyEntry, CustodyHead, CustodyRecord, SigningKey
from packetbus.v1.packet_pb2 import Packet
from packetbus.v1.packet_service_pb2 import (
    DispatchResult,
    GetServerInfoResponse,
    Receipt,
    StoredPacket,
    SubscriptionGap,
)
from packetbus.v1.policy_service_pb2 import HeldPacket, PolicyDecisionRecord
from packetbus.v1.speech_act_pb2 import SpeechAct

from ._agents import LiveAgent
from ._client import EARLIEST, LATEST, Client, Subscription, fill_defaults
from ._config import AgentIdentity, BatchSettings, ClientConfig, RetrySettings
from ._consumer import Consumer, Delivery
from ._context import ContextValue, new_entry, verify_context_commit
from ._custody import ChainReport, EntryReport, Signer, verify_chain
from ._errors import ErrorReason, FieldViolation, PacketbusError, SubscriptionGapError
from ._inbox import Inbox, address_to, inbox_topic, reply_to
from ._security import TlsSettings, TokenFile
from ._settling import Settling
from ._sync import SyncClient, SyncSubscription
from ._tasks import ClaimedTask, TaskQueue
from ._tracing import context_of as trace_context_of
from ._tracing import link_to as trace_link

__version__ = "0.1.0"

__all__ = [
    "EARLIEST",
    "LATEST",
    "Agent",
    "AgentIdentity",
    "BatchSettings",
    "CarcelEntry",
    "ChainReport",
    "ClaimedTask",
    "Client",
    "ClientConfig",
    "Consumer",
    "ConsumerGroup",
    "Context",
    "ContextValue",
    "CustodyEntry",
    "CustodyHead",
    "CustodyRecord",
    "Delivery",
    "DispatchResult",
    "EntryReport",
    "ErrorReason",
    "FieldViolation",
    "Finding",
    "GetServerInfoResponse",
    "HeldPacket",
    "Inbox",
    "LiveAgent",
    "MembershipEvent",
    "Packet",
    "PacketbusError",
    "PolicyDecisionRecord",
    "RawContents",
    "Receipt",
    "RemediationScan",
    "RemediationViolation",
    "RetrySettings",
    "SessionSummary",
    "SettleResult",
    "Settling",
    "Signer",
    "SigningKey",
    "SpeechAct",
    "StoredPacket",
    "Subscription",
    "SubscriptionGap",
    "SubscriptionGapError",
    "SwarmMember",
    "SwarmRegistry",
    "SyncClient",
    "SyncSubscription",
    "Task",
    "TaskQueue",
    "TlsSettings",
    "TokenFile",
    "__version__",
    "address_to",
    "fill_defaults",
    "inbox_topic",
    "new_entry",
    "reply_to",
    "trace_context_of",
    "trace_link",
    "verify_chain",
    "verify_context_commit",
]
