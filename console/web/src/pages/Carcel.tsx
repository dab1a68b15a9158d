// Carcel: entries (GET /api/carcel) counted by reason and topic, with Requeue per entry
// and Purge per reason and topic where the caller's grants allow them; live from
// /api/carcel/events.
import { useState } from "preact/hooks";

import { call, errorMessage, seg } from "../api";
import { type Caller, carcelActions } from "../grants";
import { useLive } from "../live";

interface Entry {
  id: string;
  topic: string;
  reason: string;
  detail: string;
  carceledAt?: string | null;
  deliveryCount: number;
  packet?: { packet?: { trackingId?: string } } | null;
}

/** Entries counted by (reason, topic), in that order. */
function groups(entries: Entry[]): { reason: string; topic: string; count: number }[] {
  const counts = new Map<string, { reason: string; topic: string; count: number }>();
  for (const entry of entries) {
    const key = JSON.stringify([entry.reason, entry.topic]);
    const group = counts.get(key) ?? { reason: entry.reason, topic: entry.topic, count: 0 };
    group.count += 1;
    counts.set(key, group);
  }
  return [...counts.values()].sort((a, b) =>
    a.reason === b.reason ? (a.topic < b.topic ? -1 : 1) : a.reason < b.reason ? -1 : 1,
  );
}

export function CarcelPage({ caller }: { caller: Caller }) {
  const [topic, setTopic] = useState("");
  const [reason, setReason] = useState("");
  // The filter in use: the inputs apply on submit, not on every keystroke.
  const [applied, setApplied] = useState({ topic: "", reason: "" });
  // Live (Server-Sent Events from /api/carcel/events): entries carceled, requeued or
  // purged elsewhere show without a refresh.
  const view = useLive<{ entries: Entry[]; truncated: boolean }>("/api/carcel", applied);
  const entries = view.data?.entries ?? [];
  const truncated = view.data?.truncated ?? false;
  const failed = view.problem; // why the carcel cannot be read now
  const [problem, setProblem] = useState(""); // the last action's refusal
  const [notice, setNotice] = useState("");

  async function act(what: string, path: string, body: Record<string, string>) {
    try {
      await call("POST", path, body);
      setNotice(what);
      setProblem("");
    } catch (exc) {
      setNotice("");
      setProblem(errorMessage(exc));
    }
    await view.reload(); // shown at once, not at the stream's next read
  }

  return (
    <section aria-labelledby="carcel-title">
      <h1 id="carcel-title">Carcel</h1>
      <p class="status" aria-live="polite">
        Updates: {view.status}.
      </p>
      <form class="filters" onSubmit={(event) => {
          event.preventDefault();
          setApplied({ topic: topic.trim(), reason: reason.trim() });
        }}>
        <label for="carcel-topic">Topic</label>
        <input id="carcel-topic" type="text" value={topic} onInput={(e) => setTopic((e.target as HTMLInputElement).value)} />
        <label for="carcel-reason">Reason</label>
        <input id="carcel-reason" type="text" value={reason} onInput={(e) => setReason((e.target as HTMLInputElement).value)} />
        <button type="submit">Filter</button>
      </form>
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
      <h2>By reason and topic</h2>
      {entries.length === 0 ? (
        <p>The carcel is empty{applied.topic || applied.reason ? " for this filter" : ""}.</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th scope="col">Reason</th>
              <th scope="col">Topic</th>
              <th scope="col">Entries</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {groups(entries).map((group) => (
              <tr key={`${group.reason}/${group.topic}`}>
                <th scope="row">{group.reason}</th>
                <td>{group.topic}</td>
                <td>{group.count}</td>
                <td>
                  {carcelActions(caller, group.topic).purge ? (
                    <button
                      type="button"
                      class="danger"
                      onClick={() => {
                        if (window.confirm(`Purge the ${group.reason} entries of ${group.topic}?`)) {
                          void act(`Purged ${group.reason} entries of ${group.topic}.`, "/api/carcel/purge", {
                            topic: group.topic,
                            reason: group.reason,
                          });
                        }
                      }}
                    >
                      Purge<span class="sr-only"> {group.reason} entries of {group.topic}</span>
                    </button>
                  ) : (
                    <span class="muted">not permitted</span>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {entries.length > 0 && (
        <>
          <h2>Entries</h2>
          <div class="scroll">
            <table>
              <thead>
                <tr>
                  <th scope="col">Entry</th>
                  <th scope="col">Tracking id</th>
                  <th scope="col">Topic</th>
                  <th scope="col">Reason</th>
                  <th scope="col">Detail</th>
                  <th scope="col">Deliveries</th>
                  <th scope="col">Carceled at</th>
                  <th scope="col">Actions</th>
                </tr>
              </thead>
              <tbody>
                {entries.map((entry) => (
                  <tr key={entry.id} data-entry={entry.id}>
                    <th scope="row">
                      <code>{entry.id}</code>
                    </th>
                    <td>
                      <code>{entry.packet?.packet?.trackingId ?? ""}</code>
                    </td>
                    <td>{entry.topic}</td>
                    <td>{entry.reason}</td>
                    <td>{entry.detail}</td>
                    <td>{entry.deliveryCount}</td>
                    <td>{entry.carceledAt ?? ""}</td>
                    <td>
                      {carcelActions(caller, entry.topic).requeue ? (
                        <button
                          type="button"
                          onClick={() =>
                            void act(`Requeued ${entry.id}.`, `/api/carcel/${seg(entry.id)}/requeue`, {
                              topic: entry.topic,
                            })
                          }
                        >
                          Requeue<span class="sr-only"> {entry.id}</span>
                        </button>
                      ) : (
                        <span class="muted">not permitted</span>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
      {truncated && <p>Only the first 1000 entries are shown; filter by topic or reason to see others.</p>}
    </section>
  );
}
