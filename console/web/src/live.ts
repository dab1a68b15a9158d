// A live view (packetbus_console.live): GET <path>'s JSON answer, kept current by
// <path>/events (Server-Sent Events, one `snapshot` event per change), so a page needs no
// manual refresh. The one hook every page follows a live view with.
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { call, errorMessage } from "./api";

/** `path` with the query `params` (empty values left out). */
export function withQuery(path: string, params: Record<string, string>): string {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value) query.set(name, value);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** The message of a stream's `error` event (`{"error", "code"}`), else its text. */
export function streamError(data: string): string {
  try {
    const doc = JSON.parse(data) as { error?: unknown; code?: unknown };
    if (typeof doc.error === "string") {
      return typeof doc.code === "string" && doc.code ? `${doc.error} (${doc.code})` : doc.error;
    }
  } catch {
    // Not JSON: said as it came.
  }
  return data;
}

export type LiveStatus = "idle" | "connecting" | "live" | "reconnecting" | "closed";

/** What a page shows of a live view: `problem` is why it cannot be read now ("" when it can). */
export interface LiveState<T> {
  data: T | null;
  status: LiveStatus;
  problem: string;
}

export interface Live<T> extends LiveState<T> {
  reload: () => Promise<void>; // read the plain route now (after an action, say)
}

/** The subset of EventSource a live view uses (a test gives its own). */
export interface EventStream {
  readonly readyState: number;
  addEventListener(type: string, listener: (message: MessageEvent<string>) => void): void;
  close(): void;
}

const CLOSED = 2; // EventSource.CLOSED (not a global outside a browser)

/**
 * Follows the live view at `url` (its plain route; the stream is `eventsUrl`), telling
 * `update` each change of state; returns the function that stops it.
 *
 * - a `snapshot` event: its data, status "live";
 * - an `error` event with a reason (the console ended the stream: a refusal, a
 *   signed-out session): closed, not retried, the reason shown;
 * - the stream refused before it started (its error has no body): closed, and the plain
 *   route read once for its JSON error (or its data);
 * - any other break: "reconnecting" (the browser retries).
 */
export function followLive<T>(
  url: string,
  eventsUrl: string,
  update: (change: (current: LiveState<T>) => LiveState<T>) => void,
  open: (url: string) => EventStream = (events) => new EventSource(events) as unknown as EventStream,
  read: (url: string) => Promise<T> = (plain) => call<T>("GET", plain),
): () => void {
  let stopped = false;
  const set = (change: (current: LiveState<T>) => LiveState<T>) => {
    if (!stopped) update(change);
  };
  set(() => ({ data: null, status: "connecting", problem: "" }));
  const source = open(eventsUrl);
  source.addEventListener("snapshot", (message) => {
    const data = JSON.parse(message.data) as T;
    set(() => ({ data, status: "live", problem: "" }));
  });
  source.addEventListener("error", (message) => {
    const reason = message.data;
    if (reason) {
      source.close();
      set((current) => ({ ...current, status: "closed", problem: streamError(reason) }));
    } else if (source.readyState === CLOSED) {
      set((current) => ({ ...current, status: "closed" }));
      read(url).then(
        (data) => set(() => ({ data, status: "closed", problem: "" })),
        (exc: unknown) => set((current) => ({ ...current, problem: errorMessage(exc) })),
      );
    } else {
      set((current) => ({ ...current, status: "reconnecting" }));
    }
  });
  return () => {
    stopped = true;
    source.close();
  };
}

const IDLE = { data: null, status: "idle", problem: "" } as const;

/**
 * The live view of `path` with `params` (see followLive); idle, with no data, while
 * `path` is null. `reload()` reads the plain route at once (an action's effect is shown
 * without waiting for the stream's next read).
 */
export function useLive<T>(path: string | null, params: Record<string, string> = {}): Live<T> {
  const url = path === null ? null : withQuery(path, params);
  const eventsUrl = path === null ? null : withQuery(`${path}/events`, params);
  const [state, setState] = useState<LiveState<T>>(IDLE);
  const current = useRef(url);
  current.current = url;

  const reload = useCallback(async () => {
    if (url === null) return;
    try {
      const data = await call<T>("GET", url);
      if (current.current === url) setState((now) => ({ ...now, data, problem: "" }));
    } catch (exc) {
      if (current.current === url) setState((now) => ({ ...now, problem: errorMessage(exc) }));
    }
  }, [url]);

  useEffect(() => {
    if (url === null || eventsUrl === null) {
      setState(IDLE);
      return undefined;
    }
    return followLive<T>(url, eventsUrl, setState);
  }, [url, eventsUrl]);

  return { ...state, reload };
}
