/**
 * Automatic batching of single-packet dispatches, as the Python client does
 * (client/packetbus/_batcher.py): one gRPC call per packet costs ~50x more per packet than a
 * repeated field of them (DESIGN.md section 4).
 *
 * Lingering only under load: a packet submitted while no call is in flight is sent at the end of
 * the current turn of the event loop (so packets submitted together share a call); packets that
 * arrive while a call is in flight wait for it and go out together when it completes, in batches
 * of at most `maxBatchPackets` packets and `maxBatchBytes` bytes.
 */
import { toBinary } from "@bufbuild/protobuf";

import { PacketSchema, type Packet } from "./gen/packetbus/v1/packet_pb.js";
import type { DispatchResult } from "./gen/packetbus/v1/packet_service_pb.js";
import { Code, PacketbusError } from "./errors.js";

/** Sends one batch; resolves with one result per packet, in order. */
export type SendBatch = (packets: Packet[]) => Promise<DispatchResult[]>;

/** Bounds of one automatic batch (the Python client's `BatchSettings` defaults). */
export interface BatchSettings {
  /** Most packets per call (default 500; the server's limit is GetServerInfo's
   * limits.max_batch_packets). */
  readonly maxBatchPackets: number;
  /** Most serialized packet bytes per call (default 4 MiB). */
  readonly maxBatchBytes: number;
}

export const DEFAULT_BATCH_SETTINGS: BatchSettings = {
  maxBatchPackets: 500,
  maxBatchBytes: 4 * 1024 * 1024,
};

interface Item {
  readonly packet: Packet;
  readonly size: number;
  readonly resolve: (result: DispatchResult) => void;
  readonly reject: (error: unknown) => void;
}

/** Queues packets and sends them in batches, one call in flight at a time. */
export class Batcher {
  private readonly queue: Item[] = [];
  private inFlight = false;
  private scheduled = false;
  private closed = false;

  constructor(
    private readonly send: SendBatch,
    private readonly settings: BatchSettings = DEFAULT_BATCH_SETTINGS,
  ) {}

  /** Queue `packet`; resolves with its own result (receipt, hold or error). Rejects with a
   * PacketbusError when the call carrying it fails, or CANCELLED after `close()`. */
  submit(packet: Packet): Promise<DispatchResult> {
    if (this.closed) {
      return Promise.reject(new PacketbusError(Code.Canceled, "the client is closed"));
    }
    return new Promise<DispatchResult>((resolve, reject) => {
      const size = toBinary(PacketSchema, packet).byteLength;
      this.queue.push({ packet, size, resolve, reject });
      this.schedule();
    });
  }

  /** Fail every queued packet with CANCELLED; a call in flight still settles its own. */
  close(): void {
    this.closed = true;
    const error = new PacketbusError(Code.Canceled, "the client is closed");
    for (const item of this.queue.splice(0)) {
      item.reject(error);
    }
  }

  private schedule(): void {
    if (this.inFlight || this.scheduled) {
      return; // the call in flight sends what queued behind it when it completes
    }
    this.scheduled = true;
    // setImmediate runs after this turn's microtasks: packets dispatched together share a call.
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private takeBatch(): Item[] {
    const batch: Item[] = [];
    let bytes = 0;
    while (this.queue.length > 0 && batch.length < this.settings.maxBatchPackets) {
      const next = this.queue[0]!;
      // One packet larger than the byte bound still goes, alone.
      if (batch.length > 0 && bytes + next.size > this.settings.maxBatchBytes) {
        break;
      }
      batch.push(this.queue.shift()!);
      bytes += next.size;
    }
    return batch;
  }

  private async flush(): Promise<void> {
    const batch = this.takeBatch();
    if (batch.length === 0) {
      return;
    }
    this.inFlight = true;
    try {
      const results = await this.send(batch.map((item) => item.packet));
      if (results.length !== batch.length) {
        const error = new PacketbusError(
          Code.Internal,
          `the server answered ${results.length} results for ${batch.length} packets (it may ` +
            "have stored them); dispatching the same packets again is safe",
          { outcomeUnknown: true },
        );
        batch.forEach((item) => item.reject(error));
      } else {
        batch.forEach((item, i) => item.resolve(results[i]!));
      }
    } catch (error) {
      const failure = PacketbusError.fromError(error);
      batch.forEach((item) => item.reject(failure));
    } finally {
      this.inFlight = false;
    }
    if (this.queue.length > 0) {
      void this.flush();
    }
  }
}
