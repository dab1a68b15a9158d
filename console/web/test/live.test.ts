import { describe, expect, it } from "vitest";

import { ApiError } from "../src/api";
import { type EventStream, type LiveState, followLive, streamError, withQuery } from "../src/live";

/** A stream the test drives: `emit` delivers an event as the browser would. */
class FakeStream implements EventStream {
  readyState = 0; // CONNECTING
  closed = false;
  private listeners = new Map<string, ((message: MessageEvent<string>) => void)[]>();
  addEventListener(type: string, listener: (message: MessageEvent<string>) => void): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }
  close(): void {
    this.closed = true;
    this.readyState = 2;
  }
  emit(type: string, data: string, readyState = this.readyState): void {
    this.readyState = readyState;
    for (const listener of this.listeners.get(type) ?? []) listener({ data } as MessageEvent<string>);
  }
}

type View = { n: number };

function follow(read: (url: string) => Promise<View> = () => Promise.reject(new Error("not read"))) {
  const stream = new FakeStream();
  const opened: string[] = [];
  const reads: string[] = [];
  let state: LiveState<View> = { data: null, status: "idle", problem: "" };
  const stop = followLive<View>(
    "/api/held?topic=a",
    "/api/held/events?topic=a",
    (change) => (state = change(state)),
    (url) => (opened.push(url), stream),
    (url) => (reads.push(url), read(url)),
  );
  return { stream, opened, reads, stop, state: () => state };
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

describe("live views", () => {
  it("builds the query without empty parameters", () => {
    expect(withQuery("/api/carcel", { topic: "a b", reason: "" })).toBe("/api/carcel?topic=a+b");
    expect(withQuery("/api/held", {})).toBe("/api/held");
  });

  it("reads a stream's error event", () => {
    expect(streamError('{"error":"the session ended: sign in again","code":"UNAUTHENTICATED"}')).toBe(
      "the session ended: sign in again (UNAUTHENTICATED)",
    );
    expect(streamError("not json")).toBe("not json");
  });

  it("opens the events route and shows each snapshot", () => {
    const live = follow();
    expect(live.opened).toEqual(["/api/held/events?topic=a"]);
    expect(live.state()).toEqual({ data: null, status: "connecting", problem: "" });
    live.stream.emit("snapshot", '{"n": 1}', 1);
    live.stream.emit("snapshot", '{"n": 2}');
    expect(live.state()).toEqual({ data: { n: 2 }, status: "live", problem: "" });
  });

  it("a break without a reason while the browser retries is reconnecting, then live again", () => {
    const live = follow();
    live.stream.emit("snapshot", '{"n": 1}', 1);
    live.stream.emit("error", "", 0);
    expect(live.state()).toEqual({ data: { n: 1 }, status: "reconnecting", problem: "" });
    expect(live.stream.closed).toBe(false);
    expect(live.reads).toEqual([]);
    live.stream.emit("snapshot", '{"n": 3}', 1);
    expect(live.state().status).toBe("live");
  });

  it("a stream ended with a reason is closed and says it", () => {
    const live = follow();
    live.stream.emit("snapshot", '{"n": 1}', 1);
    live.stream.emit("error", '{"error": "the session ended: sign in again", "code": "UNAUTHENTICATED"}');
    expect(live.stream.closed).toBe(true);
    expect(live.state()).toEqual({
      data: { n: 1 },
      status: "closed",
      problem: "the session ended: sign in again (UNAUTHENTICATED)",
    });
    expect(live.reads).toEqual([]);
  });

  it("a stream refused before it started reads the plain route once for its error", async () => {
    const live = follow(() => Promise.reject(new ApiError(403, "PERMISSION_DENIED", "principal bob may not read")));
    live.stream.emit("error", "", 2);
    expect(live.state().status).toBe("closed");
    await settle();
    expect(live.reads).toEqual(["/api/held?topic=a"]);
    expect(live.state()).toEqual({
      data: null,
      status: "closed",
      problem: "Not permitted: principal bob may not read (PERMISSION_DENIED)",
    });
  });

  it("a refused stream whose plain route answers shows that answer", async () => {
    const live = follow(() => Promise.resolve({ n: 7 }));
    live.stream.emit("error", "", 2);
    await settle();
    expect(live.state()).toEqual({ data: { n: 7 }, status: "closed", problem: "" });
  });

  it("nothing changes once stopped", async () => {
    const live = follow(() => Promise.resolve({ n: 7 }));
    live.stream.emit("error", "", 2);
    live.stop();
    await settle();
    expect(live.stream.closed).toBe(true);
    expect(live.state()).toEqual({ data: null, status: "closed", problem: "" });
  });
});
