/**
 * Typed errors: every failure of a packetbus call is a `PacketbusError` carrying the gRPC status
 * code, the server's message and the details it sent (google.rpc.BadRequest field violations,
 * google.rpc.ErrorInfo), decoded from the `grpc-status-details-bin` trailer by connect-es.
 *
 * Mirrors the Python client's `PacketbusError` (client/packetbus/_errors.py).
 */
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";

import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

export { Code } from "@connectrpc/connect";

/** One broken rule of a request: the field path (e.g. "packets[0].ttl_seconds"), the rule id
 * and a sentence for a person. */
export interface FieldViolation {
  readonly field: string;
  readonly reason: string;
  readonly description: string;
}

/** The server's machine-readable reason (a google.rpc.ErrorInfo), e.g. reason
 * "POLICY_REJECTED" with metadata rule_id, carcel_entry_id. */
export interface ErrorReason {
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Readonly<Record<string, string>>;
}

/** Codes after which a request that may have reached the server may have taken effect. */
const UNKNOWN_OUTCOME: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Canceled,
  Code.Unknown,
  Code.Internal,
]);

/** What the retrying interceptor (retrying.ts) concluded about a unary call's final error:
 * whether the call may have taken effect over all its attempts. Keyed by the error object. */
const OUTCOMES = new WeakMap<object, boolean>();

/** Record whether the call that ended with `error` may have taken effect (retrying.ts). */
export function markOutcome(error: object, unknown: boolean): void {
  OUTCOMES.set(error, unknown);
}

/**
 * A failed packetbus call, or one packet's failure inside a batch.
 *
 * `code` is the gRPC status code (connect-es `Code`, numerically equal to the gRPC codes:
 * 3 INVALID_ARGUMENT, 6 ALREADY_EXISTS, ...); `codeName` its gRPC name ("INVALID_ARGUMENT");
 * `fieldViolations` every rule the request broke; `errorInfo` the server's reason, when sent;
 * `outcomeUnknown` whether the call may have taken effect anyway (then send the same packet,
 * with the same tracking id, again: dispatch is idempotent).
 */
export class PacketbusError extends Error {
  readonly code: Code;
  readonly fieldViolations: readonly FieldViolation[];
  readonly errorInfo: ErrorReason | undefined;
  readonly outcomeUnknown: boolean;

  constructor(
    code: Code,
    message: string,
    options: {
      fieldViolations?: readonly FieldViolation[];
      errorInfo?: ErrorReason;
      outcomeUnknown?: boolean;
      cause?: unknown;
    } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "PacketbusError";
    this.code = code;
    this.fieldViolations = options.fieldViolations ?? [];
    this.errorInfo = options.errorInfo;
    this.outcomeUnknown = options.outcomeUnknown ?? false;
  }

  /** The gRPC name of `code`, e.g. "INVALID_ARGUMENT". */
  get codeName(): string {
    return grpcCodeName(this.code);
  }

  /** The error a google.rpc.Status stands for (a per-packet error in a batch's results). */
  static fromStatus(status: Status): PacketbusError {
    const fieldViolations: FieldViolation[] = [];
    let errorInfo: ErrorReason | undefined;
    for (const detail of status.details) {
      const bad = anyUnpack(detail, BadRequestSchema);
      if (bad !== undefined) {
        fieldViolations.push(...bad.fieldViolations.map(toViolation));
      }
      const info = anyUnpack(detail, ErrorInfoSchema);
      if (info !== undefined) {
        errorInfo = { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } };
      }
    }
    return new PacketbusError(status.code as Code, status.message, { fieldViolations, errorInfo });
  }

  /**
   * The error a failed call stands for: a ConnectError's code, raw message and details;
   * anything else is UNKNOWN. `sent` says whether the request may have reached the server
   * (false for reads and for calls that never left), which decides `outcomeUnknown`, unless
   * the retrying interceptor judged the call over all its attempts (then its verdict stands).
   */
  static fromError(error: unknown, sent = true): PacketbusError {
    if (error instanceof PacketbusError) {
      return error;
    }
    const connect = ConnectError.from(error);
    const fieldViolations = connect.findDetails(BadRequestSchema).flatMap((bad) =>
      bad.fieldViolations.map(toViolation),
    );
    const info = connect.findDetails(ErrorInfoSchema)[0];
    return new PacketbusError(connect.code, connect.rawMessage, {
      fieldViolations,
      errorInfo:
        info === undefined
          ? undefined
          : { reason: info.reason, domain: info.domain, metadata: { ...info.metadata } },
      outcomeUnknown: OUTCOMES.get(connect) ?? (sent && UNKNOWN_OUTCOME.has(connect.code)),
      cause: error,
    });
  }
}

function toViolation(v: { field: string; reason: string; description: string }): FieldViolation {
  return { field: v.field, reason: v.reason, description: v.description };
}

/** gRPC's name for a status code (the names in grpc/status.h), e.g. 3 -> "INVALID_ARGUMENT". */
export function grpcCodeName(code: Code): string {
  const name = Code[code];
  if (name === undefined) {
    return `CODE_${code}`;
  }
  // connect-es spells Canceled and camel case; gRPC spells CANCELLED and upper snake case.
  if (code === Code.Canceled) {
    return "CANCELLED";
  }
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** A subscription missed packets (DATA_LOSS): they were trimmed or expired before it got to
 * them. The subscription is already past the gap; keep iterating to go on. */
export class SubscriptionGapError extends PacketbusError {
  readonly lastCursor: string;
  readonly resumeAfterCursor: string;
  readonly missedPackets: bigint;
  readonly reason: number;

  constructor(gap: {
    lastCursor: string;
    resumeAfterCursor: string;
    missedPackets: bigint;
    reason: number;
  }) {
    super(
      Code.DataLoss,
      `subscription gap: packets after ${gap.lastCursor || "the start"} up to ` +
        `${gap.resumeAfterCursor} are gone (${gap.missedPackets} missed)`,
    );
    this.name = "SubscriptionGapError";
    this.lastCursor = gap.lastCursor;
    this.resumeAfterCursor = gap.resumeAfterCursor;
    this.missedPackets = gap.missedPackets;
    this.reason = gap.reason;
  }
}
