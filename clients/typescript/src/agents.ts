/**
 * The agent registry from the client side: register (with proof of possession of an Ed25519
 * key), heartbeat, find, deregister, and stay alive in the background. Mirrors the Python
 * client's Agents and LiveAgent (client/packetbus/_agents.py).
 */
import { generateKeyPairSync, createPrivateKey, sign, type KeyObject } from "node:crypto";

import type { Client as RpcClient } from "@connectrpc/connect";

import { call, required, type CallSettings } from "./calls.js";
import { Code, PacketbusError } from "./errors.js";
import {
  type Agent,
  AgentLiveness,
  AgentService,
  type RegisterAgentResponse,
} from "./gen/packetbus/v1/agent_service_pb.js";

/** The domain prefix of the agent-key message (server: _custody.AGENT_KEY_DOMAIN). */
const AGENT_KEY_DOMAIN = "packetbus.agent-key.v1\u0000";

/** The bytes an agent signs to prove it holds the private half of `publicKey`:
 * "packetbus.agent-key.v1" 0x00, the agent id (UTF-8), 0x00, the raw 32-byte public key. */
export function agentKeyMessage(agentId: string, publicKey: Uint8Array): Uint8Array {
  return Buffer.concat([Buffer.from(`${AGENT_KEY_DOMAIN}${agentId}\u0000`, "utf8"), publicKey]);
}

/** An agent id and its Ed25519 key (node:crypto), registered with the agent so it can prove
 * who it is. */
export class AgentIdentity {
  /** The raw 32-byte Ed25519 public key. */
  readonly publicKey: Uint8Array;

  constructor(
    readonly agentId: string,
    private readonly privateKey: KeyObject,
  ) {
    if (privateKey.asymmetricKeyType !== "ed25519") {
      throw new TypeError(`an agent key is Ed25519, not ${privateKey.asymmetricKeyType ?? "a symmetric key"}`);
    }
    const jwk = privateKey.export({ format: "jwk" });
    this.publicKey = Buffer.from(jwk.x ?? "", "base64url");
  }

  /** A new identity with a fresh key. */
  static generate(agentId: string): AgentIdentity {
    return new AgentIdentity(agentId, generateKeyPairSync("ed25519").privateKey);
  }

  /** The identity whose key is the raw 32-byte Ed25519 seed `seed` (as the Python client's
   * key files hold it, base64-decoded). */
  static fromSeed(agentId: string, seed: Uint8Array): AgentIdentity {
    if (seed.length !== 32) {
      throw new TypeError(`an Ed25519 seed is 32 bytes, not ${seed.length}`);
    }
    // PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): a fixed 16-byte header, then the seed.
    const der = Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), seed]);
    const key = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
    return new AgentIdentity(agentId, key);
  }

  /** The Ed25519 signature (64 bytes) of `message`. */
  sign(message: Uint8Array): Uint8Array {
    return sign(null, message, this.privateKey);
  }

  /** The proof of possession RegisterAgent takes with the public key. */
  proof(): Uint8Array {
    return this.sign(agentKeyMessage(this.agentId, this.publicKey));
  }
}

/** How an agent describes itself when registering. */
export interface RegisterOptions extends CallSettings {
  readonly role?: string;
  readonly capabilities?: readonly string[];
  readonly parentId?: string;
  readonly labels?: Readonly<Record<string, string>>;
  readonly endpoint?: string;
  /** Heartbeats must come at least this often, in seconds (0: the server's default, 30). */
  readonly ttlSeconds?: number;
  readonly state?: string;
  /** Registers its public key, with proof of possession; must be this agent's. */
  readonly identity?: AgentIdentity;
}

export interface ListAgentsOptions extends CallSettings {
  readonly role?: string;
  readonly capability?: string;
  readonly parentId?: string;
  readonly liveness?: "any" | "live" | "stale";
  readonly pageSize?: number;
}

const LIVENESS = {
  any: AgentLiveness.UNSPECIFIED,
  live: AgentLiveness.LIVE,
  stale: AgentLiveness.STALE,
} as const;

/** The agent registry; get it as `client.agents`. Every call rejects with PacketbusError. */
export class Agents {
  constructor(
    /** The generated AgentService client, for calls this class does not wrap. */
    readonly rpc: RpcClient<typeof AgentService>,
  ) {}

  /** Register `agentId`, or update its registration (counts as a heartbeat). With an identity,
   * its key is registered too (UNAUTHENTICATED when the proof does not verify). */
  async register(agentId: string, options: RegisterOptions = {}): Promise<RegisterAgentResponse> {
    const identity = options.identity;
    if (identity !== undefined && identity.agentId !== agentId) {
      throw new TypeError(`the identity is ${identity.agentId}'s, not ${agentId}'s`);
    }
    return call(options, true, (o) =>
      this.rpc.registerAgent(
        {
          agent: {
            id: agentId,
            role: options.role ?? "",
            capabilities: [...(options.capabilities ?? [])],
            parentId: options.parentId ?? "",
            labels: { ...options.labels },
            endpoint: options.endpoint ?? "",
            heartbeatTtlSeconds: options.ttlSeconds ?? 0,
            state: options.state ?? "",
          },
          ...(identity === undefined ? {} : { publicKey: identity.publicKey, publicKeyProof: identity.proof() }),
        },
        o,
      ),
    );
  }

  /** Keep `agentId` alive for another TTL (optionally setting its state); NOT_FOUND when it is
   * not registered (it must register again). */
  async heartbeat(agentId: string, options: CallSettings & { readonly state?: string } = {}): Promise<Agent> {
    const response = await call(options, true, (o) =>
      this.rpc.heartbeatAgent({ agentId, ...(options.state === undefined ? {} : { state: options.state }) }, o),
    );
    return required(response.agent, "agent");
  }

  /** Remove `agentId` (with `cascade`, every agent it spawned); resolves with the ids removed.
   * NOT_FOUND when it is not registered, unless `allowMissing`. */
  async deregister(
    agentId: string,
    options: CallSettings & { readonly cascade?: boolean; readonly allowMissing?: boolean } = {},
  ): Promise<string[]> {
    const response = await call(options, true, (o) =>
      this.rpc.deregisterAgent(
        { agentId, cascade: options.cascade ?? false, allowMissing: options.allowMissing ?? false },
        o,
      ),
    );
    return response.removedAgentIds;
  }

  /** One agent; NOT_FOUND when it is not registered. */
  async get(agentId: string, settings: CallSettings = {}): Promise<Agent> {
    const response = await call(settings, false, (o) => this.rpc.getAgent({ agentId }, o));
    return required(response.agent, "agent");
  }

  /** Every matching agent, in id order (all pages). */
  async list(options: ListAgentsOptions = {}): Promise<Agent[]> {
    const found: Agent[] = [];
    let pageToken = "";
    do {
      const response = await call(options, false, (o) =>
        this.rpc.listAgents(
          {
            role: options.role ?? "",
            capability: options.capability ?? "",
            parentId: options.parentId ?? "",
            liveness: LIVENESS[options.liveness ?? "any"],
            pageSize: options.pageSize ?? 0,
            pageToken,
          },
          o,
        ),
      );
      found.push(...response.agents);
      pageToken = response.nextPageToken;
    } while (pageToken !== "");
    return found;
  }

  /** Register `agentId` and keep it alive in the background until `stop()` (see LiveAgent). */
  async live(agentId: string, options: LiveAgentOptions = {}): Promise<LiveAgent> {
    const agent = new LiveAgent(this, agentId, options);
    await agent.register();
    agent.startBeating();
    return agent;
  }
}

export interface LiveAgentOptions extends RegisterOptions {
  /** Deregister the agents it spawned too when stopping. */
  readonly cascadeOnStop?: boolean;
  /** Called with each heartbeat failure the loop cannot mend (default: ignored; the loop goes
   * on and tries again at the next beat). */
  readonly onError?: (error: PacketbusError) => void;
}

/**
 * An agent kept alive in the background: registered when made (`agents.live(...)`),
 * heartbeating every third of its TTL (registering again if it was removed meanwhile, e.g.
 * stale for too long while the bus was out of reach), deregistered by `stop()`.
 */
export class LiveAgent {
  /** The agent as the server last answered it. */
  agent: Agent | undefined;
  private timer: NodeJS.Timeout | undefined;
  private beating: Promise<void> = Promise.resolve();
  private stopped = false;
  private state: string | undefined;

  constructor(
    private readonly agents: Agents,
    readonly agentId: string,
    private readonly options: LiveAgentOptions,
  ) {
    this.state = options.state;
  }

  /** @internal Register (again), with the state last set. */
  async register(): Promise<void> {
    const response = await this.agents.register(this.agentId, {
      ...this.options,
      ...(this.state === undefined ? {} : { state: this.state }),
    });
    this.agent = response.agent;
  }

  /** @internal Start the heartbeat loop. */
  startBeating(): void {
    const ttl = this.agent?.heartbeatTtlSeconds || 30;
    // A third of the TTL: two beats may be lost (or late) before the agent turns stale.
    const periodMs = Math.max(100, (ttl * 1000) / 3);
    const tick = (): void => {
      this.beating = this.beat().finally(() => {
        if (!this.stopped) {
          this.timer = setTimeout(tick, periodMs).unref();
        }
      });
    };
    // Unref'd: heartbeats alone do not keep a process running (its connection or work does).
    this.timer = setTimeout(tick, periodMs).unref();
  }

  private async beat(): Promise<void> {
    try {
      this.agent = await this.agents.heartbeat(this.agentId, this.settings());
    } catch (error) {
      const failure = PacketbusError.fromError(error);
      if (this.stopped || failure.code === Code.Canceled) {
        return;
      }
      if (failure.code === Code.NotFound) {
        try {
          await this.register();
          return;
        } catch (again) {
          this.options.onError?.(PacketbusError.fromError(again));
          return;
        }
      }
      this.options.onError?.(failure);
    }
  }

  private settings(): CallSettings {
    return this.options.timeoutMs === undefined ? {} : { timeoutMs: this.options.timeoutMs };
  }

  /** Change the agent's state now (a STATE_CHANGED event), with a heartbeat. */
  async setState(state: string): Promise<Agent> {
    this.state = state;
    this.agent = await this.agents.heartbeat(this.agentId, { ...this.settings(), state });
    return this.agent;
  }

  /** Stop heartbeating (waiting for a beat in flight) and deregister the agent (already gone is
   * no error). Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) {
      return;
    }
    this.stopped = true;
    clearTimeout(this.timer);
    await this.beating;
    await this.agents.deregister(this.agentId, {
      ...this.settings(),
      cascade: this.options.cascadeOnStop ?? false,
      allowMissing: true,
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
