// The Agents page's state: the registry by id, kept current by membership events.

export interface Agent {
  id: string;
  role: string;
  capabilities: string[];
  parentId: string;
  keyId: string;
  state: string;
  liveness: string; // AGENT_LIVENESS_LIVE | AGENT_LIVENESS_STALE
  heartbeatTtlSeconds: number;
  registeredAt?: string | null; // RFC 3339
  lastHeartbeatAt?: string | null;
  deadline?: string | null;
}

export interface MembershipEvent {
  cursor: string;
  kind: string; // MEMBERSHIP_EVENT_KIND_JOINED, _LEFT, _STALE, _STATE_CHANGED, _RECOVERED, _UPDATED
  agent?: Agent | null;
  oldState?: string;
  newState?: string;
  at?: string | null;
  reason?: string;
}

export type Registry = Readonly<Record<string, Agent>>;

/** The registry of a listing (GET /api/agents). */
export function fromList(agents: Agent[]): Registry {
  const out: Record<string, Agent> = {};
  for (const agent of agents) out[agent.id] = agent;
  return out;
}

/**
 * The registry after `event`: LEFT removes the agent, every other kind puts the agent
 * as the event gives it (STALE marks it stale even if the event's copy says live).
 * Returns `registry` itself when the event carries no agent.
 */
export function applyEvent(registry: Registry, event: MembershipEvent): Registry {
  const agent = event.agent;
  if (!agent || !agent.id) return registry;
  if (event.kind === "MEMBERSHIP_EVENT_KIND_LEFT") {
    if (!(agent.id in registry)) return registry;
    const { [agent.id]: _gone, ...rest } = registry;
    return rest;
  }
  const next = event.kind === "MEMBERSHIP_EVENT_KIND_STALE"
    ? { ...agent, liveness: "AGENT_LIVENESS_STALE" }
    : agent;
  return { ...registry, [agent.id]: next };
}

/**
 * Whether `agent` is stale at `nowMs` (ms since the epoch): the server says so, or
 * it is live but its heartbeat deadline has passed (the server's STALE event is on
 * its way).
 */
export function isStale(agent: Agent, nowMs: number): boolean {
  if (agent.liveness === "AGENT_LIVENESS_STALE") return true;
  if (!agent.deadline) return false;
  const deadline = Date.parse(agent.deadline);
  return !Number.isNaN(deadline) && deadline < nowMs;
}

/**
 * Whether the registry's deadlines are out of date at `nowMs`: some agent it holds as
 * live is past its deadline. Heartbeats send no membership event, so the deadlines of
 * a listing age while the agents heartbeat: read the registry again before judging any
 * agent stale on them (a live agent would show stale one TTL after the page loaded).
 */
export function deadlinesOutOfDate(registry: Registry, nowMs: number): boolean {
  return Object.values(registry).some(
    (agent) => agent.liveness !== "AGENT_LIVENESS_STALE" && isStale(agent, nowMs),
  );
}

export interface AgentRow {
  id: string;
  role: string;
  capabilities: string;
  parent: string;
  state: string;
  liveness: "live" | "stale";
  lastHeartbeat: string;
}

/** The table's rows, in id order. */
export function rows(registry: Registry, nowMs: number): AgentRow[] {
  return Object.values(registry)
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((agent) => ({
      id: agent.id,
      role: agent.role || "—",
      capabilities: agent.capabilities.length ? agent.capabilities.join(", ") : "—",
      parent: agent.parentId || "—",
      state: agent.state || "—",
      liveness: isStale(agent, nowMs) ? "stale" : "live",
      lastHeartbeat: agent.lastHeartbeatAt || "—",
    }));
}
