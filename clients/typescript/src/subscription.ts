/**
 * Following a topic (PacketService.Subscribe) as an async iterator that survives lost
 * connections: a stream that ends UNAVAILABLE (a network drop, a server draining on SIGTERM)
 * is opened again after the last packet it yielded, with backoff, so the caller sees every
 * packet once, in stored order, with gaps announced and never skipped silently.
 *
 * A stream opened at a position ("latest") learns where it starts from the response header
 * `packetbus-start-cursor` (README, "Subscriptions"; the Python client's
 * `packetbus.stream_start`), so one dropped before its first packet reopens after that cursor
 * rather than at "latest", which would skip what was stored in between.
 */
import type { Client as RpcClient } from "@connectrpc/connect";

import { Code, PacketbusError, SubscriptionGapError } from "./errors.js";
import { lostConnection, pause as pauseFor } from "./lost-connection.js";
import type { PacketService, StoredPacket, SubscriptionGap } from "./gen/packetbus/v1/packet_service_pb.js";
import { StartPosition } from "./gen/packetbus/v1/packet_service_pb.js";

/** The response header that carries a stream's start cursor. */
export const START_CURSOR_HEADER = "packetbus-start-cursor";

/** Where a subscription starts: the oldest packet kept, new packets only, or after a cursor. */
export type SubscribeStart = "earliest" | "latest" | { readonly after: string };

export interface SubscribeOptions {
  readonly start?: SubscribeStart;
  /** Most packets per delivered batch (0: the server's default). */
  readonly maxBatchPackets?: number;
  /** Called for each gap (packets trimmed or expired before the subscription got to them);
   * iteration goes on. Without it, iteration throws SubscriptionGapError, whose
   * `resumeAfterCursor` is where to subscribe again. */
  readonly onGap?: (gap: SubscriptionGap) => void;
  /** Aborting ends the iteration. */
  readonly signal?: AbortSignal;
  /** Called each time the server has opened a stream of this subscription (its response
   * headers arrived): from then on every packet stored is delivered. `startCursor` is where a
   * stream opened at a position starts (undefined when opened after a cursor). */
  readonly onOpen?: (startCursor: string | undefined) => void;
  /** How long a subscription keeps reopening a stream that fails UNAVAILABLE, in ms, counted
   * from the first failure in a row (default 60 000); then the iteration throws it. */
  readonly reconnectWindowMs?: number;
}

/** Pauses between reopenings in a row, in ms: doubling from the first up to the last. */
const FIRST_PAUSE_MS = 100;
const LONGEST_PAUSE_MS = 5_000;

export function startFields(start: SubscribeStart | undefined) {
  if (start === undefined || start === "latest") {
    return { case: "startPosition" as const, value: StartPosition.LATEST };
  }
  if (start === "earliest") {
    return { case: "startPosition" as const, value: StartPosition.EARLIEST };
  }
  return { case: "afterCursor" as const, value: start.after };
}

/**
 * The packets of `topic` from `options.start` (default "latest"). Throws PacketbusError with
 * the stream's status when it fails otherwise than UNAVAILABLE, or UNAVAILABLE for longer than
 * `reconnectWindowMs`; SubscriptionGapError for a gap when there is no `onGap`. Ends quietly
 * when `signal` aborts.
 */
export async function* follow(
  packets: RpcClient<typeof PacketService>,
  topic: string,
  options: SubscribeOptions,
  clientClosed: () => boolean,
): AsyncGenerator<StoredPacket> {
  const start = options.start;
  // The cursor the next stream opens after: the last packet yielded, the end of the last gap
  // passed, or where the first stream started. Unknown until one of those is known.
  let cursor: string | undefined = typeof start === "object" ? start.after : undefined;
  const window = options.reconnectWindowMs ?? 60_000;
  let failingSince: number | undefined;
  let pause = FIRST_PAUSE_MS;
  for (;;) {
    const stream = packets.subscribe(
      {
        topic,
        start: startFields(cursor === undefined ? start : { after: cursor }),
        maxBatchPackets: options.maxBatchPackets ?? 0,
      },
      {
        signal: options.signal,
        onHeader: (headers) => {
          const started = headers.get(START_CURSOR_HEADER) ?? undefined;
          cursor ??= started;
          options.onOpen?.(started);
        },
      },
    );
    try {
      for await (const response of stream) {
        failingSince = undefined;
        pause = FIRST_PAUSE_MS;
        if (response.gap !== undefined) {
          // Past the gap first: told once, also to a caller that subscribes again after it.
          cursor = response.gap.resumeAfterCursor;
          if (options.onGap === undefined) {
            throw new SubscriptionGapError(response.gap);
          }
          options.onGap(response.gap);
        }
        for (const packet of response.packets) {
          cursor = packet.receipt?.cursor ?? cursor;
          yield packet;
        }
      }
      // A stream the server ended without a status to report: follow on after the cursor.
    } catch (error) {
      if (options.signal?.aborted === true) {
        return;
      }
      if (error instanceof SubscriptionGapError) {
        throw error;
      }
      const failure = PacketbusError.fromError(error, false);
      if (clientClosed()) {
        throw new PacketbusError(Code.Canceled, "the client is closed", { cause: error });
      }
      // Neither the caller (its signal) nor the client (closed) ended it.
      const lost = lostConnection(failure.code);
      const now = Date.now();
      failingSince ??= now;
      // Without a cursor, reopening at "latest" would skip what was stored meanwhile (a server
      // that sends no start cursor): the caller decides, with the error.
      const resumable = cursor !== undefined || start === "earliest";
      if (!lost || !resumable || now - failingSince > window) {
        throw failure;
      }
      await pauseFor(pause, options.signal);
      pause = Math.min(pause * 2, LONGEST_PAUSE_MS);
    }
  }
}
