// Following a live view of the console's API (an ".../events" route of
// packetbus_console.live): its latest snapshot, pushed as Server-Sent Events.
import { useEffect, useState } from "preact/hooks";

import { call, errorMessage } from "./api";

/**
 * The latest snapshot of the live view at SSE path `live` (an ".../events" route), with
 * the stream's state and its last error. null `live`: nothing is followed.
 */
export function useLive<T>(live: string | null): { data: T | null; status: string; problem: string } {
  const [data, setData] = useState<T | null>(null);
  const [status, setStatus] = useState("connecting");
  const [problem, setProblem] = useState("");
  useEffect(() => {
    setData(null);
    setProblem("");
    if (live === null) return undefined;
    setStatus("connecting");
    const source = new EventSource(live);
    source.addEventListener("snapshot", (message) => {
      setData(JSON.parse((message as MessageEvent<string>).data) as T);
      setStatus("live");
      setProblem("");
    });
    source.addEventListener("error", (message) => {
      const text = (message as MessageEvent<string>).data;
      if (text) {
        try {
          setProblem((JSON.parse(text) as { error: string }).error);
        } catch {
          setProblem(text);
        }
      }
      setStatus(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    });
    return () => source.close();
  }, [live]);
  return { data, status, problem };
}

/** The plain route's refusal, said when the live stream cannot open (its errors have no body). */
export async function whyNot(path: string, setProblem: (text: string) => void): Promise<void> {
  try {
    await call("GET", path);
  } catch (exc) {
    setProblem(errorMessage(exc));
  }
}
