/** The common shape of a unary call made by the task, agent and inbox helpers: per-call
 * settings, and every failure turned into a PacketbusError. */
import type { CallOptions } from "@connectrpc/connect";

import { Code, PacketbusError } from "./errors.js";

/** Per-call options: a deadline in milliseconds (default: none) and an abort signal. */
export interface CallSettings {
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/** Run one call with `settings`; a failure rejects with PacketbusError, whose `outcomeUnknown`
 * says whether it may have taken effect (`sent`: a write that may have reached the server). */
export async function call<T>(
  settings: CallSettings,
  sent: boolean,
  run: (options: CallOptions) => Promise<T>,
): Promise<T> {
  try {
    return await run({
      ...(settings.timeoutMs === undefined ? {} : { timeoutMs: settings.timeoutMs }),
      ...(settings.signal === undefined ? {} : { signal: settings.signal }),
    });
  } catch (error) {
    throw PacketbusError.fromError(error, sent);
  }
}

/** `value`, or INTERNAL when the server left out a field its reply always has. */
export function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) {
    throw new PacketbusError(Code.Internal, `the server answered no ${what}`);
  }
  return value;
}
