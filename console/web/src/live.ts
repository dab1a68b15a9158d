// A live view (packetbus_console.live): GET <path>'s JSON answer, kept current by
// <path>/events (Server-Sent Events, one `snapshot` event per change), so a page needs no
// manual refresh.
import { useCallback, useEffect, useState } from "preact/hooks";

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

export type LiveStatus = "connecting" | "live" | "reconnecting" | "closed";

export interface Live<T> {
  data: T | null;
  status: LiveStatus;
  failed: string; // why the view cannot be read now ("" when it can)
  reload: () => Promise<void>; // read it now (after an action, say)
}

/** The live view of `path` with `params` (see the module comment). */
export function useLive<T>(path: string, params: Record<string, string>): Live<T> {
  const url = withQuery(path, params);
  const eventsUrl = withQuery(`${path}/events`, params);
  const [data, setData] = useState<T | null>(null);
  const [status, setStatus] = useState<LiveStatus>("connecting");
  const [failed, setFailed] = useState("");

  const reload = useCallback(async () => {
    try {
      setData(await call<T>("GET", url));
      setFailed("");
    } catch (exc) {
      setFailed(errorMessage(exc));
    }
  }, [url]);

  useEffect(() => {
    setStatus("connecting");
    const source = new EventSource(eventsUrl);
    source.addEventListener("snapshot", (message) => {
      setData(JSON.parse((message as MessageEvent<string>).data) as T);
      setStatus("live");
      setFailed("");
    });
    source.addEventListener("error", (message) => {
      const text = (message as MessageEvent<string>).data;
      // The server ended the stream saying why (the browser reconnects after it).
      if (text) setFailed(streamError(text));
      if (source.readyState === EventSource.CLOSED) {
        // Refused before it began (401, 403, 503...): the plain GET says why.
        setStatus("closed");
        void reload();
      } else {
        setStatus("reconnecting");
      }
    });
    return () => source.close();
  }, [eventsUrl, reload]);

  return { data, status, failed, reload };
}
