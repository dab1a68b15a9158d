/**
 * Task queues from the client side: post, claim (under a lease, with a fencing token), settle.
 * Mirrors the Python client's TaskQueue and ClaimedTask (client/packetbus/_tasks.py).
 *
 * A claim carries a fencing token; only the current token may heartbeat, release, complete or
 * fail the task. A worker whose lease ran out (and whose task was claimed again, or went back to
 * the queue) gets PacketbusError FAILED_PRECONDITION from each of those calls.
 */
import { randomUUID } from "node:crypto";

import { create, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { Client as RpcClient } from "@connectrpc/connect";

import { call, required, type CallSettings } from "./calls.js";
import type { Task } from "./gen/packetbus/v1/contents_pb.js";
import { type Packet, PacketSchema } from "./gen/packetbus/v1/packet_pb.js";
import { SpeechAct } from "./gen/packetbus/v1/speech_act_pb.js";
import {
  type FailTaskResponse,
  type TaskResult,
  TaskService,
  type TaskState,
  TaskStatus,
} from "./gen/packetbus/v1/task_service_pb.js";

type PacketInit = MessageInitShape<typeof PacketSchema>;
type TaskInit = Extract<PacketInit["contents"], { case: "task" }>["value"];

export interface PostTaskOptions extends CallSettings {
  /** The packet's origin when `task` is a bare Task (and fills an empty one). */
  readonly origin?: string;
  /** Failures before the carcel: 1..100; 0 (default) means the server's 3. */
  readonly maxAttempts?: number;
}

export interface ClaimOptions extends CallSettings {
  /** Tasks needing one of these capabilities, or none, may be claimed. */
  readonly capabilities?: readonly string[];
  /** The lease in seconds, 1..600; 0 (default) means 30. */
  readonly leaseSeconds?: number;
  /** Names this claim so that a retry returns the task claimed first (default: a new UUID).
   * Pass the same id again after a failure with `outcomeUnknown`. */
  readonly requestId?: string;
}

/** A task this worker holds: its `state` (with the fencing token) and the calls only the holder
 * may make. Each rejects with PacketbusError FAILED_PRECONDITION once the lease is lost (the
 * token no longer holds the task), PERMISSION_DENIED to a caller that may not act as the worker. */
export class ClaimedTask {
  constructor(
    private readonly rpc: RpcClient<typeof TaskService>,
    /** The task as claimed; `leaseExpiresAt` follows heartbeats. */
    readonly state: TaskState,
  ) {}

  get taskId(): string {
    return this.state.taskId;
  }

  get queue(): string {
    return this.state.queue;
  }

  /** The claim's fencing token (a counter the server raises at each claim of the task). */
  get fencingToken(): bigint {
    return this.state.fencingToken;
  }

  /** The Task contents of the claimed packet (undefined only for a malformed state). */
  get task(): Task | undefined {
    const contents = this.state.packet?.packet?.contents;
    return contents?.case === "task" ? contents.value : undefined;
  }

  private get names() {
    return { queue: this.queue, taskId: this.taskId, fencingToken: this.fencingToken };
  }

  /** Renew the lease for `leaseSeconds` (0: the claim's own length); resolves with its new end. */
  async heartbeat(leaseSeconds = 0, settings: CallSettings = {}): Promise<Timestamp | undefined> {
    const response = await call(settings, true, (o) =>
      this.rpc.heartbeatTask({ ...this.names, leaseSeconds }, o),
    );
    this.state.leaseExpiresAt = response.leaseExpiresAt;
    return response.leaseExpiresAt;
  }

  /** Give the task back to the queue (not a failure). */
  async release(reason = "", settings: CallSettings = {}): Promise<void> {
    await call(settings, true, (o) => this.rpc.releaseTask({ ...this.names, reason }, o));
  }

  /** Finish the task; `result` (a JSON object) and `summary` are kept with it. Repeating it with
   * the same result is OK; with another, ALREADY_EXISTS. */
  async complete(result: JsonObject = {}, summary = "", settings: CallSettings = {}): Promise<void> {
    await call(settings, true, (o) => this.rpc.completeTask({ ...this.names, result, summary }, o));
  }

  /** Report a failed attempt: the task is queued again (`status` QUEUED) or, after its last
   * attempt, carceled (CARCELED, with `carcelId`). Repeating it answers the first outcome. */
  async fail(error: string, settings: CallSettings = {}): Promise<FailTaskResponse> {
    return call(settings, true, (o) => this.rpc.failTask({ ...this.names, error }, o));
  }
}

/** One queue's tasks. Get it with `client.taskQueue(name)`. */
export class TaskQueue {
  constructor(
    /** The queue's name (a topic name). */
    readonly name: string,
    private readonly rpc: RpcClient<typeof TaskService>,
    private readonly fill: (packet: Packet) => Packet,
  ) {}

  /**
   * Post a task: a bare Task (sent as a REQUEST packet from `options.origin`) or a packet with
   * Task contents (its topic is set to this queue). Task.id names it in the queue; posting the
   * same packet again answers the task as first posted (a retry); another packet with that id is
   * ALREADY_EXISTS. Resolves with the task's state; rejects with PacketbusError
   * (INVALID_ARGUMENT with field violations for a bad packet).
   */
  async post(task: TaskInit | Task | Packet | PacketInit, options: PostTaskOptions = {}): Promise<TaskState> {
    const packet = isPacket(task)
      ? create(PacketSchema, task as PacketInit)
      : create(PacketSchema, {
          origin: options.origin ?? "",
          speechAct: SpeechAct.REQUEST,
          contents: { case: "task", value: task as TaskInit },
        });
    if (packet.origin === "" && options.origin !== undefined) {
      packet.origin = options.origin;
    }
    packet.topic = this.name;
    this.fill(packet);
    const response = await call(options, true, (o) =>
      this.rpc.postTask({ packet, maxAttempts: options.maxAttempts ?? 0 }, o),
    );
    return required(response.task, "task");
  }

  /**
   * Claim the best task `worker` may take (highest priority, first posted first; needing no
   * capability or one of `capabilities`), or undefined when none is claimable now. The claim
   * carries a request id, so a retry after a lost reply returns the task claimed first.
   */
  async claim(worker: string, options: ClaimOptions = {}): Promise<ClaimedTask | undefined> {
    const response = await call(options, true, (o) =>
      this.rpc.claimTask(
        {
          queue: this.name,
          worker,
          capabilities: [...(options.capabilities ?? [])],
          leaseSeconds: options.leaseSeconds ?? 0,
          requestId: options.requestId ?? randomUUID(),
        },
        o,
      ),
    );
    return response.task === undefined ? undefined : new ClaimedTask(this.rpc, response.task);
  }

  /** One task's state; NOT_FOUND when the queue has no such task. */
  async get(taskId: string, settings: CallSettings = {}): Promise<TaskState> {
    const response = await call(settings, false, (o) => this.rpc.getTask({ queue: this.name, taskId }, o));
    return required(response.task, "task");
  }

  /** The queue's tasks with `status` (default: all), first posted first, every page. */
  async tasks(status: TaskStatus = TaskStatus.UNSPECIFIED, settings: CallSettings = {}): Promise<TaskState[]> {
    const found: TaskState[] = [];
    let pageToken = "";
    do {
      const response = await call(settings, false, (o) =>
        this.rpc.listTasks({ queue: this.name, status, pageToken }, o),
      );
      found.push(...response.tasks);
      pageToken = response.nextPageToken;
    } while (pageToken !== "");
    return found;
  }

  /** Each attempt's reported outcome, oldest first: failures with their errors, the completion
   * with its result (a lease that ran out counts as a failure, with no result). */
  async results(taskId: string, settings: CallSettings = {}): Promise<TaskResult[]> {
    const found: TaskResult[] = [];
    let pageToken = "";
    do {
      const response = await call(settings, false, (o) =>
        this.rpc.listTaskResults({ queue: this.name, taskId, pageToken }, o),
      );
      found.push(...response.results);
      pageToken = response.nextPageToken;
    } while (pageToken !== "");
    return found;
  }
}

function isPacket(value: TaskInit | Task | Packet | PacketInit): boolean {
  return ("$typeName" in value && value.$typeName === "packetbus.v1.Packet") || "contents" in value;
}
