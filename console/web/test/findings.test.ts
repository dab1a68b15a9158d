import { describe, expect, it } from "vitest";

import {
  type Conflict,
  type Escalation,
  confidenceText,
  conflictCounts,
  findingsParams,
  newestFirst,
  validThreshold,
} from "../src/findings";
import { withQuery } from "../src/live";

const conflict = (first: string, second: string): Conflict => ({
  taskId: "t",
  subject: "s",
  firstFindingId: first,
  secondFindingId: second,
  reason: "opposite claims",
  first: null,
  second: null,
});

describe("findings", () => {
  it("counts the conflicts each finding is in", () => {
    const counts = conflictCounts([conflict("f-1", "f-2"), conflict("f-2", "f-3")]);
    expect([...counts.entries()]).toEqual([
      ["f-1", 1],
      ["f-2", 2],
      ["f-3", 1],
    ]);
  });

  it("takes an empty threshold or one from 0 to 1", () => {
    expect(["", " ", "0", "0.3", "1"].map(validThreshold)).toEqual([true, true, true, true, true]);
    expect(["-0.1", "1.5", "x", "NaN"].map(validThreshold)).toEqual([false, false, false, false]);
    expect(withQuery("/api/findings", findingsParams("task 1", ""))).toBe("/api/findings?taskId=task+1");
    expect(withQuery("/api/findings", findingsParams("t", " 0.5 "))).toBe("/api/findings?taskId=t&threshold=0.5");
  });

  it("shows confidences with two decimals and escalations newest first", () => {
    expect(confidenceText(0.9)).toBe("0.90");
    const at = (dispatchedAt: string): Escalation => ({
      trackingId: dispatchedAt,
      origin: "",
      taskId: "",
      reason: "",
      dispatchedAt,
      findings: [],
    });
    const order = newestFirst([at("2026-01-01T00:00:01Z"), at("2026-01-01T00:00:03Z"), at("2026-01-01T00:00:02Z")]);
    expect(order.map((e) => e.trackingId)).toEqual([
      "2026-01-01T00:00:03Z",
      "2026-01-01T00:00:02Z",
      "2026-01-01T00:00:01Z",
    ]);
  });
});
