// Agents: the registry (GET /api/agents), kept live by the membership stream
// (GET /api/agents/events, Server-Sent Events); stale agents marked.
import { useEffect, useRef, useState } from "preact/hooks";

import { call, errorMessage } from "../api";
import {
  type Agent,
  type MembershipEvent,
  type Registry,
  applyEvent,
  deadlinesOutOfDate,
  fromList,
  rows,
} from "../agents";

const TICK_MS = 5000; // how often "stale" is re-judged against the heartbeat deadlines

export function AgentsPage() {
  const [registry, setRegistry] = useState<Registry>({});
  const [now, setNow] = useState(Date.now());
  const [status, setStatus] = useState("connecting");
  const [problem, setProblem] = useState("");
  const shown = useRef<Registry>({}); // the registry as last rendered, for the tick
  shown.current = registry;

  useEffect(() => {
    let closed = false;
    // Events that come while the listing loads are applied on top of it.
    let pending: MembershipEvent[] | null = [];
    const source = new EventSource("/api/agents/events");
    const load = async () => {
      try {
        const { agents } = await call<{ agents: Agent[] }>("GET", "/api/agents");
        if (closed) return;
        let next = fromList(agents);
        for (const event of pending ?? []) next = applyEvent(next, event);
        pending = null;
        setRegistry(next);
        setProblem("");
      } catch (exc) {
        if (closed) return;
        setProblem(errorMessage(exc));
        // Apply what was queued for the listing, so the page goes on following events.
        const queued = pending ?? [];
        pending = null;
        setRegistry((current) => queued.reduce(applyEvent, current));
      }
    };
    source.addEventListener("start", () => {
      setStatus("live");
      pending = pending ?? [];
      void load();
    });
    source.addEventListener("membership", (message) => {
      setStatus("live");
      const event = JSON.parse((message as MessageEvent<string>).data) as MembershipEvent;
      if (pending) pending.push(event);
      else setRegistry((current) => applyEvent(current, event));
    });
    source.addEventListener("error", (message) => {
      const data = (message as MessageEvent<string>).data;
      if (data) {
        // The server ended the stream with a refusal: say why; the browser retries.
        try {
          setProblem((JSON.parse(data) as { error: string }).error);
        } catch {
          setProblem(data);
        }
      }
      setStatus(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
      if (source.readyState === EventSource.CLOSED) void load();
    });
    let reading = false;
    const tick = window.setInterval(() => {
      const nowMs = Date.now();
      if (reading || !deadlinesOutOfDate(shown.current, nowMs)) {
        setNow(nowMs);
        return;
      }
      // Deadlines passed here may only be out of date (heartbeats send no event): read
      // the registry again, events meanwhile queued on top of it, then judge.
      reading = true;
      pending = pending ?? [];
      void load().finally(() => {
        reading = false;
        if (!closed) setNow(Date.now());
      });
    }, TICK_MS);
    return () => {
      closed = true;
      source.close();
      window.clearInterval(tick);
    };
  }, []);

  const table = rows(registry, now);
  return (
    <section aria-labelledby="agents-title">
      <h1 id="agents-title">Agents</h1>
      <p class="status" aria-live="polite">
        Updates: {status}. {table.length} {table.length === 1 ? "agent" : "agents"},{" "}
        {table.filter((r) => r.liveness === "stale").length} stale.
      </p>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      <div class="scroll">
        <table data-now={now}>
          <caption class="sr-only">Registered agents</caption>
          <thead>
            <tr>
              <th scope="col">Agent</th>
              <th scope="col">Liveness</th>
              <th scope="col">Role</th>
              <th scope="col">Capabilities</th>
              <th scope="col">Parent</th>
              <th scope="col">State</th>
              <th scope="col">Last heartbeat</th>
            </tr>
          </thead>
          <tbody>
            {table.map((row) => (
              <tr key={row.id} class={row.liveness === "stale" ? "stale" : undefined} data-agent={row.id}>
                <th scope="row">{row.id}</th>
                <td>
                  <span class={`badge ${row.liveness}`}>{row.liveness}</span>
                </td>
                <td>{row.role}</td>
                <td>{row.capabilities}</td>
                <td>{row.parent}</td>
                <td>{row.state}</td>
                <td>
                  <time dateTime={row.lastHeartbeat}>{row.lastHeartbeat}</time>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {table.length === 0 && <p>No agents registered.</p>}
    </section>
  );
}
