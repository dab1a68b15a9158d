import { describe, expect, it } from "vitest";

import { type Caller, allows, carcelActions, globToRegExp, heldActions } from "../src/grants";

const caller = (grants: Caller["grants"], agentId = ""): Caller => ({
  principal: "p",
  authenticated: true,
  source: "jwt",
  agentId,
  roles: [],
  grants,
});

describe("globToRegExp (fnmatch)", () => {
  it("matches * across dots and slashes, ? one character, classes", () => {
    expect(globToRegExp("jobs.*").test("jobs.a.b/c")).toBe(true);
    expect(globToRegExp("jobs.*").test("jobsXa")).toBe(false);
    expect(globToRegExp("a?c").test("abc")).toBe(true);
    expect(globToRegExp("a?c").test("ac")).toBe(false);
    expect(globToRegExp("t[0-9]").test("t7")).toBe(true);
    expect(globToRegExp("t[!0-9]").test("t7")).toBe(false);
    expect(globToRegExp("t[!0-9]").test("tx")).toBe(true);
    expect(globToRegExp("[]x]").test("]")).toBe(true);
    expect(globToRegExp("a[b").test("a[b")).toBe(true);
    expect(globToRegExp("*").test("")).toBe(true);
    expect(globToRegExp("Jobs").test("jobs")).toBe(false);
  });
});

describe("which buttons show", () => {
  it("everything for the local caller (* on *)", () => {
    const local = caller([{ permission: "*", resource: "*" }]);
    expect(heldActions(local, "orders")).toEqual({ approve: true, deny: true });
    expect(carcelActions(local, "orders")).toEqual({ requeue: true, purge: true });
  });

  it("approval only on the granted topics", () => {
    const approver = caller([
      { permission: "packets.approve", resource: "payments.*" },
      { permission: "held.read", resource: "*" },
    ]);
    expect(heldActions(approver, "payments.eu")).toEqual({ approve: true, deny: true });
    expect(heldActions(approver, "orders")).toEqual({ approve: false, deny: false });
    expect(carcelActions(approver, "payments.eu")).toEqual({ requeue: false, purge: false });
  });

  it("requeue without purge", () => {
    const operator = caller([{ permission: "carcel.requeue", resource: "jobs" }]);
    expect(carcelActions(operator, "jobs")).toEqual({ requeue: true, purge: false });
    expect(carcelActions(operator, "jobs2")).toEqual({ requeue: false, purge: false });
  });

  it("{agent} is the caller's own agent id, literally", () => {
    const agent = caller([{ permission: "carcel.purge", resource: "inbox.{agent}" }], "w.1");
    expect(allows(agent, "carcel.purge", "inbox.w.1")).toBe(true);
    expect(allows(agent, "carcel.purge", "inbox.wx1")).toBe(false);
    const nobody = caller([{ permission: "carcel.purge", resource: "{agent}" }]);
    expect(allows(nobody, "carcel.purge", "")).toBe(false);
  });

  it("nothing without a caller or grants", () => {
    expect(heldActions(null, "t")).toEqual({ approve: false, deny: false });
    expect(carcelActions(caller([]), "t")).toEqual({ requeue: false, purge: false });
  });
});
