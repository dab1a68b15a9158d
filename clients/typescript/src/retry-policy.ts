/**
 * Which unary calls the client retries, and whether a failed call may have taken effect: the
 * Python client's rules (client/packetbus/_retry_policy.py), by method.
 *
 * - "read": changes nothing (the proto declares `idempotency_level = NO_SIDE_EFFECTS`). Retried.
 * - "idempotent": a repeat changes nothing more and answers as the first did (a tracking id,
 *   delivery id, fencing token or derived id makes it so). Retried.
 * - "once": a repeat would be refused although the first one was applied (a deregistered agent
 *   is unknown). Retried only when the request surely never left this process.
 */
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";

import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export type RetryPolicy = "read" | "idempotent" | "once";

/** By "<Service>.<Method>": every call that changes something and may still be repeated
 * (the reasons are the Python client's, in _retry_policy.py's `_LISTED`). */
const IDEMPOTENT: ReadonlySet<string> = new Set([
  "PacketService.Dispatch", // by tracking id: the same packet again answers the original result
  "CustodyService.RegisterAgentKey",
  "ConsumerGroupService.CreateConsumerGroup", // the same settings again answer the group
  "ConsumerGroupService.DeleteConsumerGroup", // a repeat answers `deleted` false
  "ConsumerGroupService.Acknowledge", // a replayed settlement answers OK
  "ConsumerGroupService.Nack",
  "ConsumerGroupService.ExtendLeases",
  "CarcelService.PurgeCarcelEntries",
  "TaskService.PostTask", // by (queue, task id)
  "TaskService.ClaimTask", // a claim's request id answers the same claim
  "TaskService.CompleteTask", // the same token and result answer OK
  "TaskService.HeartbeatTask",
  "TaskService.ReleaseTask",
  "TaskService.FailTask",
  "FindingService.PostFinding",
  "FindingService.Escalate",
  "AgentService.RegisterAgent", // an upsert
  "AgentService.HeartbeatAgent",
  "ContextService.DeleteContext",
  "ContextService.SetGlobalContext",
  "ContextService.DeleteGlobalContext",
  "ContextService.AppendMemory",
  "ContextService.AppendTrace",
  "RecordService.PutRecord",
  "PolicyService.ApprovePacket",
  "PolicyService.DenyPacket",
  "TopicService.SetTopicRetention",
]);

/** How `method` is retried; a method neither read nor listed (RequeueCarcelEntry,
 * DeregisterAgent, any new one) is "once", the safe side. */
export function policyOf(method: DescMethod): RetryPolicy {
  if (method.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS) {
    return "read";
  }
  return IDEMPOTENT.has(`${method.parent.name}.${method.name}`) ? "idempotent" : "once";
}

/** Node's error codes for a connection that could not be made: the request never left. */
const NOT_SENT_CODES: ReadonlySet<string> = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"]);

/** Whether `error` (UNAVAILABLE) came before the request reached any server. */
export function neverSent(error: ConnectError): boolean {
  if (error.code !== Code.Unavailable) {
    return false;
  }
  for (let cause: unknown = error.cause; cause !== undefined && cause !== null; ) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && NOT_SENT_CODES.has(code)) {
      return true;
    }
    cause = (cause as { cause?: unknown }).cause;
  }
  return [...NOT_SENT_CODES].some((code) => error.rawMessage.includes(code));
}

/** Codes that can end a call after the server ran it: the answer was lost (UNAVAILABLE), late
 * (DEADLINE_EXCEEDED), cut off (CANCELED), or not one the server chose (UNKNOWN, INTERNAL). Any
 * other code is a definite refusal made before the first write (DESIGN.md 2.2). */
const MAYBE_APPLIED: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Canceled,
  Code.Unknown,
  Code.Internal,
]);

/** ErrorInfo reasons (domain "packetbus") of a refusal made before the call ran anything. */
const NOT_APPLIED_REASONS: ReadonlySet<string> = new Set(["STORE_MAY_EVICT"]);

/** Whether the call that failed with `error` may have taken effect on the server. */
export function maybeApplied(error: ConnectError): boolean {
  if (error.code === Code.ResourceExhausted) {
    // The reply was larger than this client accepts (connect's readMaxBytes): the call ran.
    return error.rawMessage.includes("readMaxBytes");
  }
  if (!MAYBE_APPLIED.has(error.code) || neverSent(error)) {
    return false;
  }
  return !error
    .findDetails(ErrorInfoSchema)
    .some((info) => info.domain === "packetbus" && NOT_APPLIED_REASONS.has(info.reason));
}
