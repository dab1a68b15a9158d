/** @packetbus/client: the packetbus client for TypeScript (Node 20+). */
export { Client, DEFAULT_SCHEMA_VERSION, fillDefaults } from "./client.js";
export type {
  ConnectOptions,
  CreateConsumerGroupOptions,
  DispatchOutcome,
  PacketInit,
} from "./client.js";
export { START_CURSOR_HEADER } from "./subscription.js";
export type { SubscribeOptions, SubscribeStart } from "./subscription.js";
export { isLocalTarget, tlsFromEnv, tokenFile, tokenFromEnv } from "./security.js";
export type { TlsSettings, Token } from "./security.js";
export type { CallSettings } from "./calls.js";
export { ClaimedTask, TaskQueue } from "./tasks.js";
export type { ClaimOptions, PostTaskOptions } from "./tasks.js";
export { AgentIdentity, Agents, LiveAgent, agentKeyMessage } from "./agents.js";
export type { ListAgentsOptions, LiveAgentOptions, RegisterOptions } from "./agents.js";
export { INBOX_GROUP, Inbox, addressTo, inboxTopic, replyTo } from "./inbox.js";
export { ConsumedDelivery, Consumer } from "./consumer.js";
export type { ConsumeOptions, NackOptions } from "./consumer.js";
export type { BatchSettings } from "./batcher.js";
export type { RetrySettings } from "./retrying.js";
export { Code, PacketbusError, SubscriptionGapError, grpcCodeName } from "./errors.js";
export type { ErrorReason, FieldViolation } from "./errors.js";
export * from "./gen/packetbus/v1/packet_pb.js";
export * from "./gen/packetbus/v1/packet_service_pb.js";
export * from "./gen/packetbus/v1/consumer_group_service_pb.js";
export * from "./gen/packetbus/v1/contents_pb.js";
export * from "./gen/packetbus/v1/speech_act_pb.js";
export * from "./custody/index.js";
export * from "./gen/packetbus/v1/custody_pb.js";
export * from "./gen/packetbus/v1/custody_service_pb.js";
export * from "./gen/packetbus/v1/task_service_pb.js";
export * from "./gen/packetbus/v1/agent_service_pb.js";
