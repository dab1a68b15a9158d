import { describe, expect, it } from "vitest";

import {
  type Agent,
  type MembershipEvent,
  applyEvent,
  deadlinesOutOfDate,
  fromList,
  isStale,
  rows,
} from "../src/agents";

const agent = (id: string, extra: Partial<Agent> = {}): Agent => ({
  id,
  role: "worker",
  capabilities: ["summarize"],
  parentId: "",
  keyId: "",
  state: "idle",
  liveness: "AGENT_LIVENESS_LIVE",
  heartbeatTtlSeconds: 30,
  lastHeartbeatAt: "2026-01-01T00:00:00Z",
  deadline: "2026-01-01T00:00:30Z",
  ...extra,
});

const event = (kind: string, a: Agent | null): MembershipEvent => ({
  cursor: "1-0",
  kind: `MEMBERSHIP_EVENT_KIND_${kind}`,
  agent: a,
});

const BEFORE_DEADLINE = Date.parse("2026-01-01T00:00:10Z");

describe("the agents table reducer", () => {
  it("joined adds, updated replaces, left removes", () => {
    let registry = fromList([agent("b")]);
    registry = applyEvent(registry, event("JOINED", agent("a", { parentId: "b" })));
    expect(Object.keys(registry).sort()).toEqual(["a", "b"]);
    registry = applyEvent(registry, event("STATE_CHANGED", agent("a", { state: "busy" })));
    expect(registry.a.state).toBe("busy");
    registry = applyEvent(registry, event("LEFT", agent("b")));
    expect(Object.keys(registry)).toEqual(["a"]);
  });

  it("stale marks the agent stale even if its copy says live; recovered clears it", () => {
    let registry = fromList([agent("a")]);
    registry = applyEvent(registry, event("STALE", agent("a")));
    expect(registry.a.liveness).toBe("AGENT_LIVENESS_STALE");
    expect(rows(registry, BEFORE_DEADLINE)[0].liveness).toBe("stale");
    registry = applyEvent(registry, event("RECOVERED", agent("a")));
    expect(rows(registry, BEFORE_DEADLINE)[0].liveness).toBe("live");
  });

  it("ignores events without an agent and LEFT of an unknown agent", () => {
    const registry = fromList([agent("a")]);
    expect(applyEvent(registry, event("JOINED", null))).toBe(registry);
    expect(applyEvent(registry, event("LEFT", agent("zz")))).toBe(registry);
  });

  it("a live agent past its deadline shows stale", () => {
    const a = agent("a");
    expect(isStale(a, BEFORE_DEADLINE)).toBe(false);
    expect(isStale(a, Date.parse("2026-01-01T00:00:31Z"))).toBe(true);
    expect(isStale(agent("n", { deadline: null }), Date.parse("2030-01-01T00:00:00Z"))).toBe(false);
  });

  it("deadlines are out of date once a live agent passes its own, not for stale ones", () => {
    const registry = fromList([agent("a"), agent("b", { deadline: "2026-01-01T00:01:00Z" })]);
    expect(deadlinesOutOfDate(registry, BEFORE_DEADLINE)).toBe(false);
    expect(deadlinesOutOfDate(registry, Date.parse("2026-01-01T00:00:31Z"))).toBe(true);
    const stale = fromList([agent("a", { liveness: "AGENT_LIVENESS_STALE" })]);
    expect(deadlinesOutOfDate(stale, Date.parse("2026-01-01T00:00:31Z"))).toBe(false);
    expect(deadlinesOutOfDate({}, BEFORE_DEADLINE)).toBe(false);
  });

  it("rows are in id order with the shown columns", () => {
    const registry = fromList([agent("b", { capabilities: [], role: "" }), agent("a", { parentId: "b" })]);
    expect(rows(registry, BEFORE_DEADLINE)).toEqual([
      {
        id: "a",
        role: "worker",
        capabilities: "summarize",
        parent: "b",
        state: "idle",
        liveness: "live",
        lastHeartbeat: "2026-01-01T00:00:00Z",
      },
      {
        id: "b",
        role: "—",
        capabilities: "—",
        parent: "—",
        state: "idle",
        liveness: "live",
        lastHeartbeat: "2026-01-01T00:00:00Z",
      },
    ]);
  });
});
