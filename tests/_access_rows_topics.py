"""The access table's rows for topics, consumer groups, the carcel, custody and
the policy service: one builder per RPC (`row`), returning a valid request on
fresh resources. `me` is the agent id of the principal holding the permission;
a request that names its author names it."""

from __future__ import annotations

import packetbus
from packetbus.v1 import (
    carcel_service_pb2,
    consumer_group_service_pb2,
    custody_service_pb2,
    packet_service_pb2,
    policy_service_pb2,
    topic_service_pb2,
)
from tests._access_calls import CA, CU, PO, TO, Call, G, P, row
from tests._access_setup import (
    carceled,
    data_packet,
    decision,
    dispatched,
    group_of,
    held,
    poisoned,
    unique,
)
from tests._access_world import Door


@row(CA + "ListCarcelEntries")
async def _list_carcel(door: Door, me: str) -> Call:
    topic, _ = await carceled(door)
    return Call(CA + "ListCarcelEntries", carcel_service_pb2.ListCarcelEntriesRequest(topic=topic))


@row(CA + "GetCarcelEntry")
async def _get_carcel(door: Door, me: str) -> Call:
    topic, entry = await carceled(door)
    request = carcel_service_pb2.GetCarcelEntryRequest(topic=topic, id=entry)
    return Call(CA + "GetCarcelEntry", request)


@row(CA + "RequeueCarcelEntry")
async def _requeue_carcel(door: Door, me: str) -> Call:
    topic, entry = await poisoned(door)
    request = carcel_service_pb2.RequeueCarcelEntryRequest(topic=topic, id=entry)
    return Call(CA + "RequeueCarcelEntry", request)


@row(CA + "PurgeCarcelEntries")
async def _purge_carcel(door: Door, me: str) -> Call:
    topic, entry = await carceled(door)
    request = carcel_service_pb2.PurgeCarcelEntriesRequest(topic=topic, ids=[entry])
    return Call(CA + "PurgeCarcelEntries", request)


@row(G + "CreateConsumerGroup")
async def _create_group(door: Door, me: str) -> Call:
    request = consumer_group_service_pb2.CreateConsumerGroupRequest(
        topic=unique("topic"), name="g", start_position=packet_service_pb2.START_POSITION_EARLIEST
    )
    return Call(G + "CreateConsumerGroup", request)


@row(G + "GetConsumerGroup")
async def _get_group(door: Door, me: str) -> Call:
    topic, group, _ = await group_of(door)
    request = consumer_group_service_pb2.GetConsumerGroupRequest(topic=topic, name=group)
    return Call(G + "GetConsumerGroup", request)


@row(G + "ListConsumerGroups")
async def _list_groups(door: Door, me: str) -> Call:
    topic, _, _ = await group_of(door)
    request = consumer_group_service_pb2.ListConsumerGroupsRequest(topic=topic)
    return Call(G + "ListConsumerGroups", request)


@row(G + "DeleteConsumerGroup")
async def _delete_group(door: Door, me: str) -> Call:
    topic, group, _ = await group_of(door)
    request = consumer_group_service_pb2.DeleteConsumerGroupRequest(topic=topic, name=group)
    return Call(G + "DeleteConsumerGroup", request)


@row(G + "Pull")
async def _pull(door: Door, me: str) -> Call:
    topic, group, _ = await group_of(door)
    first = consumer_group_service_pb2.PullRequest(
        subscription=consumer_group_service_pb2.PullSubscription(
            topic=topic, group=group, consumer=me, max_outstanding_packets=10
        )
    )
    return Call(G + "Pull", [first], resource=topic)


@row(G + "Acknowledge")
async def _ack(door: Door, me: str) -> Call:
    topic, group, ids = await group_of(door, deliveries=1)
    request = consumer_group_service_pb2.AcknowledgeRequest(
        topic=topic, group=group, delivery_ids=ids
    )
    return Call(G + "Acknowledge", request)


@row(G + "Nack")
async def _nack(door: Door, me: str) -> Call:
    topic, group, ids = await group_of(door, deliveries=1)
    nack = consumer_group_service_pb2.Nacked(delivery_id=ids[0], reason="later")
    request = consumer_group_service_pb2.NackRequest(topic=topic, group=group, nacks=[nack])
    return Call(G + "Nack", request)


@row(G + "ExtendLeases")
async def _extend(door: Door, me: str) -> Call:
    topic, group, ids = await group_of(door, deliveries=1)
    request = consumer_group_service_pb2.ExtendLeasesRequest(
        topic=topic, group=group, delivery_ids=ids
    )
    return Call(G + "ExtendLeases", request)


@row(CU + "GetSigningKeys")
async def _signing_keys(door: Door, me: str) -> Call:
    return Call(CU + "GetSigningKeys", custody_service_pb2.GetSigningKeysRequest())


@row(CU + "RegisterAgentKey")
async def _register_key(door: Door, me: str) -> Call:
    from packetbus import _custody

    identity = packetbus.AgentIdentity.generate(me)
    message = _custody.agent_key_message(me, identity.signer.public_key)
    request = custody_service_pb2.RegisterAgentKeyRequest(
        agent_id=me,
        public_key=identity.signer.public_key,
        proof=identity.signer.sign(b"", message),
    )
    return Call(CU + "RegisterAgentKey", request)


@row(CU + "VerifyCustody")
async def _verify(door: Door, me: str) -> Call:
    topic = unique("topic")
    result = await dispatched(door, topic)
    request = custody_service_pb2.VerifyCustodyRequest(tracking_id=result.tracking_id)
    return Call(CU + "VerifyCustody", request, resource=topic, hidden=True)


@row(CU + "ExportPackets")
async def _export(door: Door, me: str) -> Call:
    topic = unique("topic")
    await dispatched(door, topic)
    request = custody_service_pb2.ExportPacketsRequest(topic=topic)
    return Call(CU + "ExportPackets", request, resource=topic)


@row(P + "Dispatch")
async def _dispatch(door: Door, me: str) -> Call:
    topic = unique("topic")
    request = packet_service_pb2.DispatchRequest(packets=[data_packet(topic, me)])
    return Call(P + "Dispatch", request, resource=topic)


@row(P + "DispatchStream")
async def _dispatch_stream(door: Door, me: str) -> Call:
    topic = unique("topic")
    batch = packet_service_pb2.DispatchStreamRequest(batch_id=1, packets=[data_packet(topic, me)])
    return Call(P + "DispatchStream", [batch], resource=topic)


@row(P + "GetPacket")
async def _get_packet(door: Door, me: str) -> Call:
    topic = unique("topic")
    result = await dispatched(door, topic)
    request = packet_service_pb2.GetPacketRequest(tracking_id=result.tracking_id)
    return Call(P + "GetPacket", request, resource=topic, hidden=True)


@row(P + "Subscribe")
async def _subscribe(door: Door, me: str) -> Call:
    topic = unique("topic")
    await dispatched(door, topic)
    request = packet_service_pb2.SubscribeRequest(
        topic=topic, start_position=packet_service_pb2.START_POSITION_EARLIEST
    )
    return Call(P + "Subscribe", request)


@row(P + "GetServerInfo")
async def _server_info(door: Door, me: str) -> Call:
    return Call(P + "GetServerInfo", packet_service_pb2.GetServerInfoRequest())


@row(PO + "GetPolicy")
async def _get_policy(door: Door, me: str) -> Call:
    return Call(PO + "GetPolicy", policy_service_pb2.GetPolicyRequest())


@row(PO + "ListHeldPackets")
async def _list_held(door: Door, me: str) -> Call:
    topic, _ = await held(door)
    return Call(PO + "ListHeldPackets", policy_service_pb2.ListHeldPacketsRequest(topic=topic))


@row(PO + "GetHeldPacket")
async def _get_held(door: Door, me: str) -> Call:
    topic, tracking_id = await held(door)
    request = policy_service_pb2.GetHeldPacketRequest(topic=topic, tracking_id=tracking_id)
    return Call(PO + "GetHeldPacket", request)


@row(PO + "ApprovePacket")
async def _approve(door: Door, me: str) -> Call:
    topic, tracking_id, entry = await decision(door, me, "approved")
    request = policy_service_pb2.ApprovePacketRequest(
        topic=topic, tracking_id=tracking_id, approval=entry
    )
    return Call(PO + "ApprovePacket", request)


@row(PO + "DenyPacket")
async def _deny(door: Door, me: str) -> Call:
    topic, tracking_id, entry = await decision(door, me, "denied")
    request = policy_service_pb2.DenyPacketRequest(
        topic=topic, tracking_id=tracking_id, denial=entry
    )
    return Call(PO + "DenyPacket", request)


@row(PO + "GetPolicyStats")
async def _policy_stats(door: Door, me: str) -> Call:
    topic, _ = await held(door)
    return Call(PO + "GetPolicyStats", policy_service_pb2.GetPolicyStatsRequest(topic=topic))


@row(TO + "SetTopicRetention")
async def _set_retention(door: Door, me: str) -> Call:
    topic = unique("topic")
    await dispatched(door, topic)
    request = topic_service_pb2.SetTopicRetentionRequest(
        topic=topic, retention=topic_service_pb2.TopicRetention(max_packets=1000)
    )
    return Call(TO + "SetTopicRetention", request)


@row(TO + "GetTopicRetention")
async def _get_retention(door: Door, me: str) -> Call:
    topic = unique("topic")
    await dispatched(door, topic)
    request = topic_service_pb2.GetTopicRetentionRequest(topic=topic)
    return Call(TO + "GetTopicRetention", request)


@row(TO + "ListTopics")
async def _list_topics(door: Door, me: str) -> Call:
    topic = unique("topic")
    await dispatched(door, topic)
    request = topic_service_pb2.ListTopicsRequest(prefix=topic)
    # A first listing backfills the topic index (a write: _name_index) when no read
    # has yet: made here, so the store is the same before and after the calls judged.
    await door.stubs.topics.ListTopics(request, metadata=door.md(me))
    return Call(TO + "ListTopics", request, resource=topic, filtered=True)
