// A live view (the console's `.../events` routes): the JSON view pushed as SSE
// "snapshot" events whenever it changes, read with an EventSource.
import { useEffect, useState } from "preact/hooks";

import { call, errorMessage } from "./api";

export interface Snapshot<T> {
  data: T | null;
  status: "idle" | "connecting" | "live" | "reconnecting" | "closed";
  problem: string;
}

/**
 * The latest snapshot of the live view at `path` (its plain route) + "/events" +
 * `query`, or idle when `path` is null. A stream the console refuses before it starts
 * (a bad query, a refusal) fails the EventSource without a reason: the plain route is
 * then read once for its JSON error. A stream that ends with an `error` event is
 * closed (not retried forever): its reason is shown.
 */
export function useSnapshot<T>(path: string | null, query: string): Snapshot<T> {
  const [state, setState] = useState<Snapshot<T>>({ data: null, status: "idle", problem: "" });

  useEffect(() => {
    if (path === null) {
      setState({ data: null, status: "idle", problem: "" });
      return;
    }
    let closed = false;
    setState({ data: null, status: "connecting", problem: "" });
    const source = new EventSource(`${path}/events${query}`);
    source.addEventListener("snapshot", (message) => {
      const data = JSON.parse((message as MessageEvent<string>).data) as T;
      setState({ data, status: "live", problem: "" });
    });
    source.addEventListener("error", (message) => {
      const data = (message as MessageEvent<string>).data;
      if (data) {
        // The console ended the stream with a reason (a refusal, a signed-out session).
        let reason = data;
        try {
          reason = (JSON.parse(data) as { error: string }).error;
        } catch {
          // Not JSON: shown as it is.
        }
        source.close();
        setState((current) => ({ ...current, status: "closed", problem: reason }));
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        // Refused before it started: the plain route says why.
        setState((current) => ({ ...current, status: "closed" }));
        call<T>("GET", `${path}${query}`).then(
          (doc) => !closed && setState({ data: doc, status: "closed", problem: "" }),
          (exc: unknown) => !closed && setState((current) => ({ ...current, problem: errorMessage(exc) })),
        );
      } else {
        setState((current) => ({ ...current, status: "reconnecting" }));
      }
    });
    return () => {
      closed = true;
      source.close();
    };
  }, [path, query]);

  return state;
}
