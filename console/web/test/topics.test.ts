import { describe, expect, it } from "vitest";

import {
  START,
  browsePath,
  current,
  custodyHref,
  enumLabel,
  formatBytes,
  isCursor,
  lagText,
  next,
  previous,
  retentionText,
  startAt,
  topicPath,
} from "../src/topics";
import { withQuery } from "../src/live";

const group = (lag?: string) => ({
  name: "g",
  ackDeadlineSeconds: 30,
  maxDeliveryAttempts: 5,
  outstanding: "0",
  consumers: "0",
  lastDeliveredCursor: "0-0",
  ...(lag === undefined ? {} : { lag }),
});

describe("paths", () => {
  it("escapes each segment of a topic and keeps its slashes", () => {
    expect(topicPath("jobs.high")).toBe("/api/topics/jobs.high");
    expect(topicPath("inbox/agent 1/x?y")).toBe("/api/topics/inbox%2Fagent%201%2Fx%3Fy");
    expect(`${topicPath("a/events")}/events`).toBe("/api/topics/a%2Fevents/events");
  });

  it("lists by prefix, plain or live", () => {
    expect(withQuery("/api/topics", { prefix: "" })).toBe("/api/topics");
    expect(withQuery("/api/topics/events", { prefix: "a&b" })).toBe("/api/topics/events?prefix=a%26b");
  });

  it("browses from the oldest or after a cursor", () => {
    expect(browsePath("t", "", 50)).toBe("/api/topics/t/packets?limit=50");
    expect(browsePath("inbox/a", "1700000000000-3", 20)).toBe(
      "/api/topics/inbox%2Fa/packets?after=1700000000000-3&limit=20",
    );
  });

  it("links a packet to its custody page", () => {
    expect(custodyHref("a b")).toBe("/custody?id=a%20b");
  });
});

describe("labels", () => {
  it("sizes in binary units", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(3 * 1024 * 1024)).toBe("3.0 MiB");
  });

  it("says a topic's retention, or that it has none of its own", () => {
    expect(retentionText(null)).toBe("server default");
    expect(retentionText({ maxAgeSeconds: 0, maxPackets: "0", maxBytes: "0", policy: "RETENTION_POLICY_UNSPECIFIED" })).toBe(
      "server default",
    );
    expect(
      retentionText({ maxAgeSeconds: 60, maxPackets: "10", maxBytes: "2048", policy: "RETENTION_POLICY_WORK_QUEUE" }),
    ).toBe("max age 60 s, max 10 packets, max 2.0 KiB, work queue");
  });

  it("turns enum names into words", () => {
    expect(enumLabel("SPEECH_ACT_INFORM_IF", "SPEECH_ACT_")).toBe("inform-if");
    expect(enumLabel("GAP_REASON_TRIMMED", "GAP_REASON_")).toBe("trimmed");
    expect(enumLabel("OTHER", "SPEECH_ACT_")).toBe("OTHER");
  });

  it("says when a group's lag is unknown", () => {
    expect(lagText(group("7"))).toBe("7");
    expect(lagText(group())).toBe("unknown");
  });
});

describe("browse history", () => {
  it("moves forward by next cursors and back again", () => {
    let history = START;
    expect(current(history)).toBe("");
    history = next(history, "1-1");
    history = next(history, "2-0");
    expect(history).toEqual(["", "1-1", "2-0"]);
    expect(current(previous(history))).toBe("1-1");
    expect(previous(START)).toBe(START);
  });

  it("does not move on an empty or unchanged cursor", () => {
    const history = next(START, "5-0");
    expect(next(history, "5-0")).toBe(history);
    expect(next(history, "")).toBe(history);
  });

  it("starts at a typed cursor", () => {
    expect(startAt(" 9-9 ")).toEqual(["9-9"]);
    expect(isCursor("")).toBe(true);
    expect(isCursor("1700000000000-0")).toBe(true);
    expect(isCursor("17000-")).toBe(false);
    expect(isCursor("abc")).toBe(false);
  });
});
