/**
 * The retry loop of every unary call, as one connect interceptor: a call lost to the network or
 * a server going away (UNAVAILABLE, or connect-node's CANCELED "connection aborted" that neither
 * the caller's signal nor `client.close()` caused) is sent again with exponential backoff and
 * full jitter, as its method's policy allows (retry-policy.ts), within the call's deadline. Its
 * final error records whether the call may have taken effect, read by
 * `PacketbusError.fromError` as `outcomeUnknown`. Mirrors client/packetbus/_retrying.py.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

import { markOutcome } from "./errors.js";
import { lostConnection, pause as pauseFor } from "./lost-connection.js";
import { maybeApplied, neverSent, policyOf } from "./retry-policy.js";

/** Backoff between attempts, in ms: the n-th pause is uniform in [0, min(initial * multiplier^n,
 * max)] (full jitter spreads reconnecting clients instead of synchronizing them). */
export interface RetrySettings {
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly multiplier: number;
}

/** The Python client's defaults (RetrySettings: 0.05 s, 2 s, x2). */
export const DEFAULT_RETRY_SETTINGS: RetrySettings = { initialBackoffMs: 50, maxBackoffMs: 2_000, multiplier: 2 };

const GRPC_TIMEOUT = "grpc-timeout";
const TIMEOUT_UNIT_MS: Readonly<Record<string, number>> = { H: 3_600_000, M: 60_000, S: 1_000, m: 1, u: 1e-3, n: 1e-6 };

/** A `grpc-timeout` header value ("250m", "5S") in ms; undefined when absent or malformed. */
export function parseGrpcTimeout(value: string | null): number | undefined {
  const match = value === null ? null : /^(\d{1,8})([HMSmun])$/.exec(value);
  if (match === null) {
    return undefined;
  }
  return Number(match[1]) * (TIMEOUT_UNIT_MS[match[2]!] ?? 1);
}

/**
 * Retry unary calls. A call's budget is its own timeout (connect sends it as `grpc-timeout`;
 * each retry carries what is left of it), else `budgetMs` from its start. Streams pass through:
 * subscriptions and consumers reopen theirs themselves.
 */
export function retrying(settings: RetrySettings, budgetMs: number, clientClosed: () => boolean): Interceptor {
  return (next) => async (request) => {
    if (request.stream) {
      return next(request);
    }
    const policy = policyOf(request.method);
    const changes = policy !== "read";
    const timeoutMs = parseGrpcTimeout(request.header.get(GRPC_TIMEOUT));
    const deadline = Date.now() + (timeoutMs ?? budgetMs);
    let reached = false; // whether an attempt so far may have taken effect
    let ceiling = settings.initialBackoffMs;
    for (let attempt = 0; ; attempt++) {
      const header = new Headers(request.header);
      if (attempt > 0 && timeoutMs !== undefined) {
        header.set(GRPC_TIMEOUT, `${Math.max(1, Math.ceil(deadline - Date.now()))}m`);
      }
      try {
        return await next({ ...request, header });
      } catch (error) {
        const failure = ConnectError.from(error);
        // The caller's abort, the call's deadline or close(): not a lost connection.
        const ours = request.signal.aborted || clientClosed();
        const lost = !ours && lostConnection(failure.code);
        if (lost && (policy !== "once" || neverSent(failure))) {
          reached ||= maybeApplied(failure);
          const pause = Math.random() * ceiling;
          ceiling = Math.min(ceiling * settings.multiplier, settings.maxBackoffMs);
          if (Date.now() + pause < deadline) {
            await pauseFor(pause, request.signal);
            if (!request.signal.aborted && !clientClosed()) {
              continue;
            }
          }
        }
        const unknown = changes && (maybeApplied(failure) || (reached && MAYBE_APPLIED_CODES.has(failure.code)));
        markOutcome(failure, unknown);
        const reason: unknown = request.signal.aborted ? request.signal.reason : undefined;
        if (reason instanceof ConnectError) {
          // The deadline ended the call: connect rejects with the signal's reason (its
          // DEADLINE_EXCEEDED), not with this error; the verdict must travel with that one.
          markOutcome(reason, unknown);
        }
        throw failure;
      }
    }
  };
}

/** A final error of these codes leaves the outcome unknown also when only an earlier attempt
 * may have run; any other final code is a definite answer about the call (Python's rule). */
const MAYBE_APPLIED_CODES: ReadonlySet<Code> = new Set([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Canceled,
  Code.Unknown,
  Code.Internal,
]);
