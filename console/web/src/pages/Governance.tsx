// Governance: held packets (GET /api/held) with Approve/Deny where the caller's grants
// allow packets.approve on the topic, and decision counts by rule (GET /api/policy/stats),
// both live from their /events streams.
import { useState } from "preact/hooks";

import { call, errorMessage, seg } from "../api";
import { type Caller, heldActions } from "../grants";
import { useLive } from "../live";

interface Held {
  topic: string;
  ruleId: string;
  reason: string;
  heldAt?: string | null;
  packet?: { packet?: { trackingId?: string; origin?: string } } | null;
}

interface Stats {
  byRule: Record<string, string | number>;
  byReason: Record<string, string | number>;
  byDecision: Record<string, string | number>;
}

export function GovernancePage({ caller }: { caller: Caller }) {
  // Both live (Server-Sent Events from /api/held/events and /api/policy/stats/events):
  // a packet held or decided elsewhere shows without a refresh.
  const heldView = useLive<{ held: Held[]; truncated: boolean }>("/api/held");
  const statsView = useLive<Stats>("/api/policy/stats");
  const held = heldView.data?.held ?? [];
  const truncated = heldView.data?.truncated ?? false;
  const stats = statsView.data;
  const failed = heldView.problem || statsView.problem; // why a view cannot be read now
  const [problem, setProblem] = useState(""); // the last action's refusal
  const [notice, setNotice] = useState("");
  const [reasons, setReasons] = useState<Record<string, string>>({});

  async function decide(item: Held, approve: boolean) {
    const id = item.packet?.packet?.trackingId ?? "";
    try {
      if (approve) {
        await call("POST", `/api/held/${seg(id)}/approve`, { topic: item.topic });
        setNotice(`Approved ${id}.`);
      } else {
        const reason = (reasons[id] ?? "").trim() || "denied from the console";
        await call("POST", `/api/held/${seg(id)}/deny`, { topic: item.topic, reason });
        setNotice(`Denied ${id}.`);
      }
      setProblem("");
    } catch (exc) {
      setNotice("");
      setProblem(errorMessage(exc));
    }
    // Shown at once, not at the streams' next read.
    await Promise.all([heldView.reload(), statsView.reload()]);
  }

  const byRule = Object.entries(stats?.byRule ?? {}).sort(([a], [b]) => (a < b ? -1 : 1));
  return (
    <section aria-labelledby="gov-title">
      <h1 id="gov-title">Governance</h1>
      <p class="status" aria-live="polite">
        Updates: {heldView.status === statsView.status ? heldView.status : `${heldView.status}, ${statsView.status}`}.
      </p>
      {failed && (
        <p role="alert" class="error">
          {failed}
        </p>
      )}
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      <p role="status">{notice}</p>
      <h2>Held packets</h2>
      {held.length === 0 ? (
        <p>No packets held.</p>
      ) : (
        <div class="scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Tracking id</th>
                <th scope="col">Topic</th>
                <th scope="col">Origin</th>
                <th scope="col">Rule</th>
                <th scope="col">Reason</th>
                <th scope="col">Held at</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {held.map((item) => {
                const id = item.packet?.packet?.trackingId ?? "";
                const may = heldActions(caller, item.topic);
                return (
                  <tr key={`${item.topic}/${id}`} data-tracking-id={id}>
                    <th scope="row">
                      <code>{id}</code>
                    </th>
                    <td>{item.topic}</td>
                    <td>{item.packet?.packet?.origin ?? ""}</td>
                    <td>{item.ruleId}</td>
                    <td>{item.reason}</td>
                    <td>{item.heldAt ?? ""}</td>
                    <td>
                      {may.approve ? (
                        <div class="actions">
                          <button type="button" onClick={() => void decide(item, true)}>
                            Approve<span class="sr-only"> {id}</span>
                          </button>
                          <label class="sr-only" for={`deny-${id}`}>
                            Reason for denying {id}
                          </label>
                          <input
                            id={`deny-${id}`}
                            type="text"
                            placeholder="reason to deny"
                            value={reasons[id] ?? ""}
                            onInput={(event) =>
                              setReasons({ ...reasons, [id]: (event.target as HTMLInputElement).value })
                            }
                          />
                          <button type="button" class="danger" onClick={() => void decide(item, false)}>
                            Deny<span class="sr-only"> {id}</span>
                          </button>
                        </div>
                      ) : (
                        <span class="muted">not permitted</span>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      {truncated && <p>Only the first 1000 held packets are shown.</p>}
      <h2>Decisions by rule</h2>
      {byRule.length === 0 ? (
        <p>No decisions yet.</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th scope="col">Rule</th>
              <th scope="col">Decisions</th>
            </tr>
          </thead>
          <tbody>
            {byRule.map(([rule, count]) => (
              <tr key={rule}>
                <th scope="row">{rule}</th>
                <td>{String(count)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
